//! One small adapter so every log runs the identical workload on the same file system: both
//! duolog engines, the `commitlog` crate (a Kafka-style Rust log), and plain length-prefixed,
//! CRC-framed `write()` through a 64 KiB buffer, to one file per partition and to one shared file
//! (the near-physical baselines).
//!
//! Fairness: the `commitlog` crate's `flush()` does not fsync its data files, so its `sync` here
//! fdatasyncs every segment file itself.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use duolog::{
    CommitLogOptions, EngineKind, FlushPolicy, LogStore, Message, SegmentedOptions, StoreOptions,
    TopicConfig,
};
use parking_lot::Mutex;

/// A log under test.
pub trait Peer: Send + Sync {
    /// Appends one batch to a partition (no fsync).
    fn append(&self, partition: u32, batch: &[Message]);
    /// Makes everything durable.
    fn sync(&self);
}

/// The peers, by name, in the order they are reported.
pub const PEERS: [&str; 5] = [
    "commitlog",
    "segmented",
    "commitlog-crate",
    "raw-per-partition",
    "raw-shared",
];

/// Creates peer `name` with `partitions` partitions in `dir`.
pub fn open(name: &str, dir: &Path, partitions: u32) -> Box<dyn Peer> {
    match name {
        "commitlog" => Box::new(Duolog::open(dir, EngineKind::CommitLog, partitions)),
        "segmented" => Box::new(Duolog::open(dir, EngineKind::Segmented, partitions)),
        "commitlog-crate" => Box::new(CrateLog::open(dir, partitions)),
        "raw-per-partition" => Box::new(Raw::open(dir, partitions, false)),
        "raw-shared" => Box::new(Raw::open(dir, partitions, true)),
        other => panic!("unknown peer {other}"),
    }
}

pub struct Duolog(Box<dyn LogStore>);

impl Duolog {
    fn open(dir: &Path, engine: EngineKind, partitions: u32) -> Duolog {
        let options = StoreOptions {
            engine: Some(engine),
            flush: FlushPolicy::Async {
                interval: std::time::Duration::from_millis(500),
            },
            commitlog: CommitLogOptions {
                file_size: 256 << 20,
                // Small queue files keep thousands of partitions from preallocating gigabytes.
                consume_queue_units: 65_536,
                retention: None,
                ..CommitLogOptions::default()
            },
            segmented: SegmentedOptions {
                segment_bytes: 256 << 20,
                max_index_bytes: 1 << 20,
                max_open_segments: 8192,
                retention: None,
                ..SegmentedOptions::default()
            },
            ..StoreOptions::default()
        };
        let s = duolog::open(dir, options).expect("open");
        s.create_topic("bench", TopicConfig::with_partitions(partitions))
            .expect("topic");
        Duolog(s)
    }
}

impl Peer for Duolog {
    fn append(&self, partition: u32, batch: &[Message]) {
        self.0
            .append_oneway("bench", partition, batch)
            .expect("append");
    }
    fn sync(&self) {
        self.0.sync().expect("sync");
    }
}

pub struct CrateLog {
    logs: Vec<Mutex<commitlog::CommitLog>>,
    dirs: Vec<PathBuf>,
}

impl CrateLog {
    fn open(dir: &Path, partitions: u32) -> CrateLog {
        let mut logs = Vec::new();
        let mut dirs = Vec::new();
        for p in 0..partitions {
            let d = dir.join(format!("p{p}"));
            let mut o = commitlog::LogOptions::new(&d);
            o.segment_max_bytes(256 << 20);
            logs.push(Mutex::new(
                commitlog::CommitLog::new(o).expect("commitlog crate"),
            ));
            dirs.push(d);
        }
        CrateLog { logs, dirs }
    }
}

impl Peer for CrateLog {
    fn append(&self, partition: u32, batch: &[Message]) {
        let mut log = self.logs[partition as usize].lock();
        let mut buf = commitlog::message::MessageBuf::default();
        for m in batch {
            buf.push(&m.body[..]).expect("push");
        }
        log.append(&mut buf).expect("append");
    }
    fn sync(&self) {
        for (log, dir) in self.logs.iter().zip(&self.dirs) {
            log.lock().flush().expect("flush");
            for e in std::fs::read_dir(dir).expect("dir") {
                let p = e.expect("entry").path();
                if p.extension().is_some_and(|x| x == "log") {
                    File::open(&p)
                        .and_then(|f| f.sync_data())
                        .expect("fdatasync");
                }
            }
        }
    }
}

/// Length-prefixed, CRC-framed records through a 64 KiB buffer.
pub struct Raw {
    files: Vec<Mutex<BufWriter<File>>>,
    shared: bool,
}

impl Raw {
    fn open(dir: &Path, partitions: u32, shared: bool) -> Raw {
        let n = if shared { 1 } else { partitions };
        let files = (0..n)
            .map(|p| {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(format!("raw-{p}")))
                    .expect("raw file");
                Mutex::new(BufWriter::with_capacity(64 << 10, f))
            })
            .collect();
        Raw { files, shared }
    }
}

impl Peer for Raw {
    fn append(&self, partition: u32, batch: &[Message]) {
        let i = if self.shared { 0 } else { partition as usize };
        let mut w = self.files[i].lock();
        for m in batch {
            let body = &m.body[..];
            w.write_all(&(body.len() as u32).to_be_bytes())
                .expect("write");
            w.write_all(&crc32fast::hash(body).to_be_bytes())
                .expect("write");
            w.write_all(body).expect("write");
        }
    }
    fn sync(&self) {
        for f in &self.files {
            let mut w = f.lock();
            w.flush().expect("flush");
            w.get_ref().sync_data().expect("fdatasync");
        }
    }
}
