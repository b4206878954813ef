//! Golden RecordBatches built by kafka-python's own builder (`tests/fixtures/kafka/`): our
//! encoder reproduces them byte for byte and our decoder reads every field. A segment written by
//! the store is then checked the same way: every batch re-encodes to its own bytes.

mod common;

use std::path::{Path, PathBuf};

use duolog::segmented::batch::{self, ProducerInfo, RecordInput};
use duolog::{LogStore, Message, ReadLimits, SegmentedStore, TopicConfig};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kafka")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn opt_hex(v: &Value) -> Option<Vec<u8>> {
    v.as_str().map(hex)
}

/// A header as the fixtures list it: key and optional value.
type OwnedHeader = (Vec<u8>, Option<Vec<u8>>);
/// A record as the fixtures list it: timestamp, key, value, headers.
type OwnedRecord = (i64, Option<Vec<u8>>, Option<Vec<u8>>, Vec<OwnedHeader>);
/// Borrowed headers, as the encoder takes them.
type HeaderRefs<'a> = Vec<(&'a [u8], Option<&'a [u8]>)>;

fn cases() -> Vec<Value> {
    serde_json::from_slice::<Value>(&std::fs::read(fixtures().join("cases.json")).unwrap())
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn encoder_reproduces_kafka_python_batches() {
    for c in cases() {
        let bytes = std::fs::read(fixtures().join(c["file"].as_str().unwrap())).unwrap();
        let recs: Vec<OwnedRecord> = c["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let headers = r["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| (h[0].as_str().unwrap().as_bytes().to_vec(), opt_hex(&h[1])))
                    .collect();
                (
                    r["timestamp"].as_i64().unwrap(),
                    opt_hex(&r["key"]),
                    opt_hex(&r["value"]),
                    headers,
                )
            })
            .collect();
        let header_refs: Vec<HeaderRefs<'_>> = recs
            .iter()
            .map(|r| {
                r.3.iter()
                    .map(|(k, v)| (k.as_slice(), v.as_deref()))
                    .collect()
            })
            .collect();
        let inputs: Vec<RecordInput<'_>> = recs
            .iter()
            .zip(&header_refs)
            .map(|(r, h)| RecordInput {
                timestamp: r.0,
                key: r.1.as_deref(),
                value: r.2.as_deref(),
                headers: h,
            })
            .collect();
        let producer = ProducerInfo {
            id: c["producer_id"].as_i64().unwrap(),
            epoch: c["producer_epoch"].as_i64().unwrap() as i16,
            base_sequence: c["base_sequence"].as_i64().unwrap() as i32,
        };
        let mut out = Vec::new();
        batch::encode_batch(
            &mut out,
            c["base_offset"].as_i64().unwrap(),
            &inputs,
            c["attributes"].as_i64().unwrap() as i16,
            producer,
            None,
        );
        assert_eq!(out, bytes, "{}", c["file"]);
    }
}

#[test]
fn decoder_reads_every_field() {
    for c in cases() {
        let bytes = std::fs::read(fixtures().join(c["file"].as_str().unwrap())).unwrap();
        let name = c["file"].as_str().unwrap();
        let h = batch::check_batch(&bytes).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(h.total_len() as i64, c["size"].as_i64().unwrap(), "{name}");
        assert_eq!(h.base_offset, c["base_offset"].as_i64().unwrap());
        assert_eq!(
            h.last_offset_delta as i64,
            c["last_offset_delta"].as_i64().unwrap()
        );
        assert_eq!(h.crc as i64, c["crc"].as_i64().unwrap());
        assert_eq!(h.attributes as i64, c["attributes"].as_i64().unwrap());
        assert_eq!(h.base_timestamp, c["first_timestamp"].as_i64().unwrap());
        assert_eq!(h.max_timestamp, c["max_timestamp"].as_i64().unwrap());
        assert_eq!(h.producer_id, c["producer_id"].as_i64().unwrap());
        assert_eq!(
            h.producer_epoch as i64,
            c["producer_epoch"].as_i64().unwrap()
        );
        assert_eq!(h.base_sequence as i64, c["base_sequence"].as_i64().unwrap());
        assert_eq!(
            h.is_transactional(),
            c["is_transactional"].as_bool().unwrap()
        );
        let expected = c["records"].as_array().unwrap();
        let got: Vec<_> = batch::records(&bytes, &h).map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), expected.len());
        for (r, e) in got.iter().zip(expected) {
            assert_eq!(
                h.base_offset + r.offset_delta as i64,
                e["offset"].as_i64().unwrap()
            );
            assert_eq!(
                h.base_timestamp + r.timestamp_delta,
                e["timestamp"].as_i64().unwrap()
            );
            assert_eq!(r.key.clone().map(|k| bytes[k].to_vec()), opt_hex(&e["key"]));
            assert_eq!(
                r.value.clone().map(|v| bytes[v].to_vec()),
                opt_hex(&e["value"])
            );
            let headers: Vec<(Vec<u8>, Option<Vec<u8>>)> =
                batch::iter_headers(&bytes[r.headers.clone()])
                    .map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec)))
                    .collect();
            let want: Vec<(Vec<u8>, Option<Vec<u8>>)> = e["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| (h[0].as_str().unwrap().as_bytes().to_vec(), opt_hex(&h[1])))
                .collect();
            assert_eq!(headers, want);
        }
    }
}

/// Every batch of a segment written by the store is valid RecordBatch v2 (CRC-32C, offsets,
/// timestamps) and decodes to exactly what was appended.
#[test]
fn segments_written_by_the_store_are_kafka_record_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentedStore::open(
        dir.path(),
        common::small_options(duolog::EngineKind::Segmented),
    )
    .unwrap();
    store
        .create_topic("orders", TopicConfig::with_partitions(1))
        .unwrap();
    let mut appended = Vec::new();
    for i in 0..50 {
        let batch: Vec<Message> = (0..3)
            .map(|j| {
                Message::new(format!("value-{i}-{j}"))
                    .with_key(format!("key-{i}"))
                    .with_tags("TagA")
                    .with_property("n", format!("{j}"))
                    .with_timestamp(1_700_000_000_000 + i * 10 + j)
            })
            .collect();
        store.append("orders", 0, &batch).unwrap();
        appended.extend(batch);
    }
    store.close().unwrap();
    let log = std::fs::read(dir.path().join("orders-0").join("00000000000000000000.log")).unwrap();
    let mut pos = 0;
    let mut next_offset = 0i64;
    let mut k = 0;
    while pos < log.len() {
        let h = batch::check_batch(&log[pos..]).unwrap();
        assert_eq!(h.base_offset, next_offset);
        assert_eq!(h.magic, 2);
        assert_eq!(
            h.attributes & batch::ATTR_LOG_APPEND_TIME,
            batch::ATTR_LOG_APPEND_TIME
        );
        let b = &log[pos..pos + h.total_len()];
        for r in batch::records(b, &h) {
            let r = r.unwrap();
            let m = &appended[k];
            assert_eq!(h.base_timestamp + r.timestamp_delta, m.timestamp.unwrap());
            assert_eq!(r.key.clone().map(|x| &b[x]), m.key.as_deref());
            assert_eq!(r.value.clone().map(|x| &b[x]), Some(&m.body[..]));
            let hs: Vec<_> = batch::iter_headers(&b[r.headers.clone()]).collect();
            assert_eq!(
                hs,
                vec![
                    (&b"TAGS"[..], Some(&b"TagA"[..])),
                    (&b"n"[..], Some(m.properties[0].1.as_bytes()))
                ]
            );
            k += 1;
        }
        next_offset = h.last_offset() + 1;
        pos += h.total_len();
    }
    assert_eq!(k, appended.len());
    // And reading through the store gives the same messages back.
    let store = SegmentedStore::open(
        dir.path(),
        common::small_options(duolog::EngineKind::Segmented),
    )
    .unwrap();
    let got = store
        .read("orders", 0, 0, ReadLimits::messages(1000))
        .unwrap();
    let got: Vec<Message> = got.iter().map(|r| r.to_message()).collect();
    assert_eq!(got, appended);
}

/// A tombstone is Kafka's null value (value length -1), not an empty value, in the segment.
#[test]
fn a_tombstone_is_a_null_value_in_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let store = SegmentedStore::open(
        dir.path(),
        common::small_options(duolog::EngineKind::Segmented),
    )
    .unwrap();
    store.create_topic("kv", TopicConfig::default()).unwrap();
    store
        .append(
            "kv",
            0,
            &[Message::new("").with_key("a"), Message::tombstone("a")],
        )
        .unwrap();
    store.close().unwrap();
    let log = std::fs::read(dir.path().join("kv-0").join("00000000000000000000.log")).unwrap();
    let h = batch::check_batch(&log).unwrap();
    let b = &log[..h.total_len()];
    let values: Vec<Option<Vec<u8>>> = batch::records(b, &h)
        .map(|r| r.unwrap().value.map(|v| b[v].to_vec()))
        .collect();
    assert_eq!(values, vec![Some(Vec::new()), None]);
    // Byte for byte: the record's value length is the varint of -1 (0x01), as in kafka-python's
    // own `null_key_and_tombstone.bin`.
    let golden = std::fs::read(fixtures().join("null_key_and_tombstone.bin")).unwrap();
    let gh = batch::check_batch(&golden).unwrap();
    let gb = &golden[..gh.total_len()];
    let golden_nulls = batch::records(gb, &gh)
        .filter(|r| r.as_ref().unwrap().value.is_none())
        .count();
    assert!(golden_nulls > 0, "the fixture holds a tombstone");
}
