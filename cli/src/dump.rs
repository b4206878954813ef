//! `duolog dump <file>`: prints a segment's `.log` batch by batch and record by record (like
//! kafka-dump-log), or the entries of an `.index` / `.timeindex`; or a CommitLog store's
//! commit-log file (`commitlog/<20-digit position>`) record by record.

use std::io::{self, Write};
use std::path::Path;

use duolog::commitlog::record;
use duolog::segmented::{batch, index};

/// Why a dump stopped early.
pub enum DumpError {
    Io(io::Error),
    Invalid(String),
}

impl From<io::Error> for DumpError {
    fn from(e: io::Error) -> Self {
        DumpError::Io(e)
    }
}

fn base_of(path: &Path) -> u64 {
    path.file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn printable(b: &[u8]) -> String {
    String::from_utf8_lossy(b).escape_debug().to_string()
}

pub fn dump(path: &Path, out: &mut dyn Write) -> Result<(), DumpError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let data = std::fs::read(path)?;
    let base = base_of(path);
    writeln!(out, "Dumping {}", path.display())?;
    match ext {
        "log" => dump_log(&data, out),
        // Kafka's 34-byte aborted-transaction entries, printed as kafka-dump-log does.
        "txnindex" => {
            let at = |c: &[u8], p: usize| i64::from_be_bytes(c[p..p + 8].try_into().unwrap());
            for c in data.chunks_exact(34) {
                writeln!(
                    out,
                    "version: {} producerId: {} firstOffset: {} lastOffset: {} lastStableOffset: {}",
                    i16::from_be_bytes([c[0], c[1]]),
                    at(c, 2),
                    at(c, 10),
                    at(c, 18),
                    at(c, 26)
                )?;
            }
            Ok(())
        }
        "index" => {
            for i in 0..data.len() / index::OFFSET_ENTRY {
                let (rel, pos) = index::offset_at(&data, i);
                if rel == 0 && pos == 0 {
                    break; // preallocated, unused
                }
                writeln!(out, "offset: {} position: {pos}", base + u64::from(rel))?;
            }
            Ok(())
        }
        "timeindex" => {
            for i in 0..data.len() / index::TIME_ENTRY {
                let (ts, rel) = index::time_at(&data, i);
                if ts == 0 && rel == 0 {
                    break;
                }
                writeln!(out, "timestamp: {ts} offset: {}", base + u64::from(rel))?;
            }
            Ok(())
        }
        "" if is_commitlog_file(path) => dump_commitlog(&data, base, out),
        other => Err(DumpError::Invalid(format!(
            "cannot dump a .{other} file (give a .log, .index or .timeindex, or a commit-log file)"
        ))),
    }
}

/// The sequence `delta` records after `base`, wrapping from `i32::MAX` to 0 as Kafka's
/// producers number records (`DefaultRecordBatch.incrementSequence`): a batch may straddle
/// the wrap, and plain addition would overflow. Computed wide, so a damaged (negative) delta
/// cannot overflow either.
fn sequence_after(base: i32, delta: i32) -> i32 {
    let s = i64::from(base) + i64::from(delta);
    let max = i64::from(i32::MAX);
    if s > max {
        (s - max - 1) as i32
    } else {
        s as i32
    }
}

fn dump_log(data: &[u8], out: &mut dyn Write) -> Result<(), DumpError> {
    let mut pos = 0usize;
    while pos < data.len() {
        let h = match batch::check_batch(&data[pos..]) {
            Ok(h) => h,
            Err(batch::BatchError::Empty) => break,
            Err(e) => {
                return Err(DumpError::Invalid(format!(
                    "invalid batch at position {pos}: {}",
                    e.reason()
                )));
            }
        };
        let ts_type = if h.attributes & batch::ATTR_LOG_APPEND_TIME != 0 {
            "LogAppendTime"
        } else {
            "CreateTime"
        };
        writeln!(
            out,
            "baseOffset: {} lastOffset: {} count: {} baseSequence: {} lastSequence: {} producerId: {} producerEpoch: {} \
             partitionLeaderEpoch: {} isTransactional: {} isControl: {} position: {pos} {ts_type}: {} size: {} magic: {} \
             compresscodec: none crc: {} isvalid: true",
            h.base_offset,
            h.last_offset(),
            h.record_count,
            h.base_sequence,
            if h.base_sequence < 0 {
                -1
            } else {
                sequence_after(h.base_sequence, h.last_offset_delta)
            },
            h.producer_id,
            h.producer_epoch,
            h.partition_leader_epoch,
            h.is_transactional(),
            h.is_control(),
            h.max_timestamp,
            h.total_len(),
            h.magic,
            h.crc,
        )?;
        let b = &data[pos..pos + h.total_len()];
        for r in batch::records(b, &h) {
            let r = r.map_err(|e| {
                DumpError::Invalid(format!("record in batch at {pos}: {}", e.reason()))
            })?;
            let headers: Vec<String> = batch::iter_headers(&b[r.headers.clone()])
                .map(|(k, v)| format!("{}={}", printable(k), v.map_or("null".into(), printable)))
                .collect();
            // As kafka-dump-log: each record's sequence (-1 outside idempotent batches), and a
            // control record as its end-transaction marker rather than key and payload.
            let sequence = if h.base_sequence < 0 {
                -1
            } else {
                sequence_after(h.base_sequence, r.offset_delta)
            };
            let content = if h.is_control() {
                match batch::end_txn_marker(b, &h) {
                    Ok(m) => format!(
                        "endTxnMarker: {} coordinatorEpoch: {}",
                        match m.marker {
                            duolog::TxnMarker::Commit => "COMMIT",
                            duolog::TxnMarker::Abort => "ABORT",
                        },
                        m.coordinator_epoch
                    ),
                    Err(e) => format!("unknown control record: {}", e.reason()),
                }
            } else {
                format!(
                    "key: {} payload: {}",
                    r.key.clone().map_or("null".into(), |k| printable(&b[k])),
                    r.value.clone().map_or("null".into(), |v| printable(&b[v])),
                )
            };
            writeln!(
                out,
                "| offset: {} CreateTime: {} keySize: {} valueSize: {} sequence: {sequence} {content} headers: [{}]",
                h.base_offset + i64::from(r.offset_delta),
                h.base_timestamp + r.timestamp_delta,
                r.key.as_ref().map_or(-1, |k| k.len() as i64),
                r.value.as_ref().map_or(-1, |v| v.len() as i64),
                headers.join(", "),
            )?;
        }
        pos += h.total_len();
    }
    Ok(())
}

/// A CommitLog engine's commit-log file: named by its 20-digit start position.
fn is_commitlog_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// RocketMQ's name of a sys flag's transaction type.
fn transaction_type(sys_flag: i32) -> &'static str {
    match record::transaction_type(sys_flag) {
        record::SYSFLAG_TRANSACTION_PREPARED => "PREPARED_TYPE",
        record::SYSFLAG_TRANSACTION_COMMIT => "COMMIT_TYPE",
        record::SYSFLAG_TRANSACTION_ROLLBACK => "ROLLBACK_TYPE",
        _ => "NOT_TYPE",
    }
}

/// Every record of a commit-log file starting at log position `base`: its queue, sys flag and
/// transaction type, producer id / epoch / sequence (−1 when not an idempotent or
/// transactional record), and for a marker its end-transaction type and coordinator epoch.
fn dump_commitlog(data: &[u8], base: u64, out: &mut dyn Write) -> Result<(), DumpError> {
    let mut at = 0usize;
    while at < data.len() {
        let d = match record::decode(&data[at..], record::Checks::FULL) {
            Ok(record::Decoded::Message(d)) => d,
            Ok(record::Decoded::Blank { size }) => {
                writeln!(out, "position: {} blank: {size}", base + at as u64)?;
                break;
            }
            Err(record::DecodeError::Empty) => break,
            Err(e) => {
                return Err(DumpError::Invalid(format!(
                    "invalid record at position {}: {}",
                    base + at as u64,
                    e.reason()
                )));
            }
        };
        let prop = |name: &str| {
            record::iter_properties(d.properties)
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v)
        };
        let num = |name: &str| prop(name).and_then(|v| v.parse::<i64>().ok()).unwrap_or(-1);
        let h = &d.header;
        write!(
            out,
            "position: {} topic: {} queueId: {} queueOffset: {} sysFlag: {} transactionType: {} \
             producerId: {} producerEpoch: {} sequence: {} isControl: {} storeTimestamp: {} \
             bodySize: {}",
            base + at as u64,
            printable(d.topic),
            h.queue_id,
            h.queue_offset,
            h.sys_flag,
            transaction_type(h.sys_flag),
            num("__PID"),
            num("__EPOCH"),
            num("__SEQ"),
            record::is_marker(h.sys_flag),
            h.store_timestamp,
            d.body.len(),
        )?;
        if record::is_marker(h.sys_flag) {
            let kind = if record::transaction_type(h.sys_flag) == record::SYSFLAG_TRANSACTION_COMMIT
            {
                "COMMIT"
            } else {
                "ABORT"
            };
            let epoch =
                record::decode_marker_body(d.body).map_or("invalid".into(), |e| e.to_string());
            writeln!(
                out,
                " endTxnMarker: {kind} coordinatorEpoch: {epoch} txnFirstOffset: {}",
                num("__TXNFIRST")
            )?;
        } else {
            writeln!(
                out,
                " key: {} payload: {}",
                prop("__KEY").map_or("null".into(), |k| printable(k.as_bytes())),
                printable(d.body),
            )?;
        }
        at += d.total_size;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch whose sequences straddle `i32::MAX` shows them wrapped to 0, as Kafka numbers
    /// them, not overflowed.
    #[test]
    fn dump_wraps_sequences_past_i32_max_to_zero() {
        let records: Vec<batch::RecordInput<'_>> = (0..3)
            .map(|_| batch::RecordInput {
                timestamp: 1,
                key: None,
                value: Some(b"v"),
                headers: &[],
            })
            .collect();
        let mut buf = Vec::new();
        let producer = batch::ProducerInfo {
            id: 7,
            epoch: 0,
            base_sequence: i32::MAX - 1,
        };
        batch::encode_batch(&mut buf, 0, &records, 0, producer, None);
        let mut out = Vec::new();
        assert!(dump_log(&buf, &mut out).is_ok());
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(&format!("baseSequence: {} lastSequence: 0 ", i32::MAX - 1)),
            "{text}"
        );
        let sequences: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split("sequence: ").nth(1))
            .map(|rest| rest.split(' ').next().unwrap())
            .collect();
        assert_eq!(sequences, ["2147483646", "2147483647", "0"], "{text}");
    }
}
