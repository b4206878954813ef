//! Golden files written by rocketmq-rust's store (`tests/fixtures/rocketmq/`, see its README):
//! our decoder reads every field, and our encoder, given the same fields, reproduces the bytes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use duolog::commitlog::record::{self, Checks, Decoded, RecordHeader};
use duolog::commitlog::{UNIT_SIZE, Unit};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rocketmq")
}

fn cases() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("cases.json")).unwrap()).unwrap()
}

fn file(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

fn int(v: &Value, k: &str) -> i64 {
    v[k].as_i64().unwrap_or_else(|| panic!("field {k} in {v}"))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn header_of(m: &Value) -> RecordHeader {
    RecordHeader {
        queue_id: int(m, "queue_id") as i32,
        flag: int(m, "flag") as i32,
        queue_offset: int(m, "queue_offset"),
        physical_offset: int(m, "physical_offset"),
        sys_flag: int(m, "sys_flag_given") as i32,
        born_timestamp: int(m, "born_timestamp"),
        born_host: m["born_host"]
            .as_str()
            .unwrap()
            .parse::<SocketAddr>()
            .unwrap(),
        store_timestamp: int(m, "store_timestamp"),
        store_host: m["store_host"]
            .as_str()
            .unwrap()
            .parse::<SocketAddr>()
            .unwrap(),
        reconsume_times: int(m, "reconsume_times") as i32,
        prepared_transaction_offset: int(m, "prepared_transaction_offset"),
    }
}

#[test]
fn decoder_reads_every_field_of_every_message() {
    let cases = cases();
    let messages = cases["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 12);
    for m in messages {
        let data = file(m["file"].as_str().unwrap());
        let at = int(m, "position_in_file") as usize;
        let Ok(Decoded::Message(d)) = record::decode(&data[at..], Checks::ROCKETMQ) else {
            panic!("message {} does not decode", m["index"]);
        };
        let mut expected = header_of(m);
        expected.sys_flag = int(m, "sys_flag") as i32;
        assert_eq!(d.header, expected, "message {}", m["index"]);
        assert_eq!(d.total_size as i64, int(m, "total_size"));
        assert_eq!(d.magic as i64, int(m, "magic"));
        assert_eq!(d.body_crc as i64, int(m, "body_crc"));
        assert_eq!(d.body, hex(m["body_hex"].as_str().unwrap()).as_slice());
        assert_eq!(d.topic, m["topic"].as_str().unwrap().as_bytes());
        assert_eq!(
            d.properties,
            m["properties_raw"].as_str().unwrap().as_bytes()
        );
        assert!(
            !d.has_record_crc,
            "rocketmq-rust does not add the CRC property"
        );
        let props: Vec<(&str, &str)> = record::iter_properties(d.properties).collect();
        let expected_props = m["properties"].as_object().unwrap();
        assert_eq!(props.len(), expected_props.len());
        for (k, v) in props {
            assert_eq!(expected_props[k].as_str().unwrap(), v);
        }
        let tags = expected_props.get("TAGS").and_then(Value::as_str);
        assert_eq!(
            tags.map_or(0, record::tag_hash),
            int(m, "tags_code"),
            "tag hash of message {}",
            m["index"]
        );
        assert_eq!(
            record::is_dispatched(d.header.sys_flag),
            !m["consume_queue"].is_null()
        );
    }
}

#[test]
fn blank_records_close_the_first_file() {
    let cases = cases();
    for b in cases["blank_records"].as_array().unwrap() {
        let data = file(b["file"].as_str().unwrap());
        let at = int(b, "position_in_file") as usize;
        assert_eq!(
            record::decode(&data[at..], Checks::ROCKETMQ),
            Ok(Decoded::Blank {
                size: int(b, "total_size") as usize
            })
        );
        assert_eq!(at + int(b, "total_size") as usize, data.len());
        assert_eq!(
            record::encode_blank(int(b, "total_size") as usize),
            data[at..at + 8]
        );
        assert!(data[at + 8..].iter().all(|&x| x == 0));
    }
}

#[test]
fn encoder_reproduces_every_message_byte_for_byte() {
    let cases = cases();
    for m in cases["messages"].as_array().unwrap() {
        let data = file(m["file"].as_str().unwrap());
        let at = int(m, "position_in_file") as usize;
        let size = int(m, "total_size") as usize;
        let mut out = Vec::new();
        record::encode(
            &mut out,
            &header_of(m),
            &hex(m["body_hex"].as_str().unwrap()),
            m["topic"].as_str().unwrap().as_bytes(),
            m["properties_raw"].as_str().unwrap().as_bytes(),
            false,
        );
        assert_eq!(out, &data[at..at + size], "message {}", m["index"]);
    }
}

/// Lays the twelve messages out the way the store's writer does (a record never spans two files;
/// a file that cannot hold the next record plus a blank gets a blank record) and compares whole
/// files.
#[test]
fn whole_commitlog_files_are_reproduced() {
    let cases = cases();
    let file_size = int(&cases, "commitlog_file_size") as usize;
    let mut files: Vec<Vec<u8>> = vec![Vec::new()];
    for m in cases["messages"].as_array().unwrap() {
        let mut rec = Vec::new();
        record::encode(
            &mut rec,
            &header_of(m),
            &hex(m["body_hex"].as_str().unwrap()),
            m["topic"].as_str().unwrap().as_bytes(),
            m["properties_raw"].as_str().unwrap().as_bytes(),
            false,
        );
        let cur = files.last_mut().unwrap();
        if rec.len() + record::BLANK_LEN > file_size - cur.len() {
            let left = file_size - cur.len();
            cur.extend_from_slice(&record::encode_blank(left));
            cur.resize(file_size, 0);
            files.push(Vec::new());
        }
        files.last_mut().unwrap().extend_from_slice(&rec);
    }
    files.last_mut().unwrap().resize(file_size, 0);
    for (i, f) in cases["commitlog_files"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(files[i], file(f["file"].as_str().unwrap()), "{}", f["file"]);
    }
}

#[test]
fn consume_queue_units_are_read_and_reproduced() {
    let cases = cases();
    for q in cases["consume_queues"].as_array().unwrap() {
        for e in q["entries"].as_array().unwrap() {
            let data = file(e["file"].as_str().unwrap());
            let at = int(e, "position_in_file") as usize;
            let unit = Unit {
                position: int(e, "commitlog_offset") as u64,
                size: int(e, "size") as u32,
                tag_hash: int(e, "tags_code"),
            };
            assert_eq!(Unit::decode(&data[at..at + 20]), Some(unit));
            assert_eq!(unit.encode(), data[at..at + 20]);
            // Files are named by the byte offset of their first unit.
            let name = Path::new(e["file"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_str()
                .unwrap();
            let file_start: u64 = name.parse().unwrap();
            assert_eq!(
                file_start + at as u64,
                int(e, "queue_offset") as u64 * UNIT_SIZE
            );
        }
        // Past the last entry the unit is unwritten.
        let last = q["entries"].as_array().unwrap().last().unwrap();
        let data = file(last["file"].as_str().unwrap());
        let next = int(last, "position_in_file") as usize + 20;
        if next < data.len() {
            assert_eq!(Unit::decode(&data[next..next + 20]), None);
        }
    }
}

/// The first file scanned as recovery does: twelve-message layout, end of data found exactly.
#[test]
fn scanning_finds_every_record_and_the_end() {
    let cases = cases();
    let mut positions = Vec::new();
    for f in cases["commitlog_files"].as_array().unwrap() {
        let data = file(f["file"].as_str().unwrap());
        let start = int(f, "start_offset");
        let mut at = 0;
        loop {
            match record::decode(&data[at..], Checks::ROCKETMQ) {
                Ok(Decoded::Message(d)) => {
                    positions.push(start + at as i64);
                    at += d.total_size;
                }
                Ok(Decoded::Blank { .. }) => break,
                Err(record::DecodeError::Empty) => break,
                Err(e) => panic!("{e:?} at {at}"),
            }
        }
        assert_eq!(at.min(int(f, "data_end_in_file") as usize), at);
    }
    let expected: Vec<i64> = cases["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| int(m, "physical_offset"))
        .collect();
    assert_eq!(positions, expected);
}
