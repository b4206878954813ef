//! `duolog dump <file>`: prints a segment's `.log` batch by batch and record by record (like
//! kafka-dump-log), or the entries of an `.index` / `.timeindex`.

use std::io::{self, Write};
use std::path::Path;

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
        other => Err(DumpError::Invalid(format!(
            "cannot dump a .{other} file (give a .log, .index or .timeindex)"
        ))),
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
                h.base_sequence + h.last_offset_delta
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
                h.base_sequence + r.offset_delta
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
