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
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use duolog::{
    CommitLogOptions, EngineKind, FlushPolicy, LogStore, Message, ReadLimits, SegmentedOptions,
    StoreOptions, TopicConfig,
};
use parking_lot::Mutex;

/// A log under test.
pub trait Peer: Send + Sync {
    /// Appends one batch to a partition (no fsync).
    fn append(&self, partition: u32, batch: &[Message]);
    /// Makes everything durable.
    fn sync(&self);
    /// Makes everything appended so far readable. The engines and the crate read their own
    /// writes already; the raw peers flush their write buffer and extend their in-memory
    /// offset → position table here. Benches call it outside the timed region.
    fn publish(&self) {}
    /// Reads up to `max` messages of `partition` from `offset`, checking each one's CRC and
    /// handing its body to `each`; returns how many were read.
    fn read(&self, partition: u32, offset: u64, max: usize, each: &mut dyn FnMut(&[u8])) -> usize;
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
                retention: None,
                ..SegmentedOptions::default()
            },
            max_open_files: 8192,
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
    fn read(&self, partition: u32, offset: u64, max: usize, each: &mut dyn FnMut(&[u8])) -> usize {
        let records = self
            .0
            .read("bench", partition, offset, ReadLimits::messages(max))
            .expect("read");
        for r in &records {
            each(r.body());
        }
        records.len()
    }
}

pub struct CrateLog {
    logs: Vec<Mutex<commitlog::CommitLog>>,
    dirs: Vec<PathBuf>,
    body_hint: usize,
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
        CrateLog {
            logs,
            dirs,
            body_hint: 100,
        }
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
    fn read(&self, partition: u32, offset: u64, max: usize, each: &mut dyn FnMut(&[u8])) -> usize {
        let log = self.logs[partition as usize].lock();
        // The crate limits reads by bytes only (its header is 20 bytes plus metadata).
        let limit = commitlog::ReadLimit::max_bytes(max * (64 + self.body_hint));
        let buf = log.read(offset, limit).expect("read");
        let mut n = 0;
        for m in commitlog::message::MessageSet::iter(&buf).take(max) {
            // `from_bytes` inside `read` has checked every hash already.
            each(m.payload());
            n += 1;
        }
        n
    }
}

/// Length-prefixed, CRC-framed records through a 64 KiB buffer.
pub struct Raw {
    files: Vec<Mutex<RawFile>>,
    shared: bool,
}

/// One raw file: its buffered writer and, for reads, where each frame starts (filled in by
/// `publish` by scanning the frames written since the last call).
pub struct RawFile {
    writer: BufWriter<File>,
    /// Frame start positions in file order; `positions[i]` is frame `i` of the file.
    positions: Vec<u64>,
    /// Bytes of the file already scanned into `positions`.
    scanned: u64,
    /// For the shared file: which partition each frame belongs to, and each partition's frame
    /// numbers (so offset `o` of partition `p` is frame `frames[p][o]`).
    frames: Vec<Vec<u32>>,
    owners: Vec<u32>,
    scratch: Vec<u8>,
}

impl RawFile {
    fn scan(&mut self) {
        self.writer.flush().expect("flush");
        let file = self.writer.get_ref();
        let end = file.metadata().expect("metadata").len();
        let mut header = [0u8; 8];
        while self.scanned < end {
            file.read_exact_at(&mut header, self.scanned).expect("read");
            self.positions.push(self.scanned);
            let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as u64;
            self.scanned += 8 + len;
        }
    }
}

impl Raw {
    fn open(dir: &Path, partitions: u32, shared: bool) -> Raw {
        let n = if shared { 1 } else { partitions };
        let files = (0..n)
            .map(|p| {
                let f = OpenOptions::new()
                    .create(true)
                    .read(true)
                    .append(true)
                    .open(dir.join(format!("raw-{p}")))
                    .expect("raw file");
                Mutex::new(RawFile {
                    writer: BufWriter::with_capacity(64 << 10, f),
                    positions: Vec::new(),
                    scanned: 0,
                    frames: vec![Vec::new(); if shared { partitions as usize } else { 0 }],
                    owners: Vec::new(),
                    scratch: Vec::new(),
                })
            })
            .collect();
        Raw { files, shared }
    }
}

impl Peer for Raw {
    fn append(&self, partition: u32, batch: &[Message]) {
        let i = if self.shared { 0 } else { partition as usize };
        let mut f = self.files[i].lock();
        if self.shared {
            // The shared file must remember whose each frame is to serve per-partition reads.
            f.owners.extend(std::iter::repeat_n(partition, batch.len()));
        }
        let w = &mut f.writer;
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
            let mut f = f.lock();
            f.writer.flush().expect("flush");
            f.writer.get_ref().sync_data().expect("fdatasync");
        }
    }
    fn publish(&self) {
        for f in &self.files {
            let mut f = f.lock();
            let before = f.positions.len();
            f.scan();
            if self.shared {
                for frame in before..f.positions.len() {
                    let owner = f.owners[frame] as usize;
                    f.frames[owner].push(frame as u32);
                }
            }
        }
    }
    fn read(&self, partition: u32, offset: u64, max: usize, each: &mut dyn FnMut(&[u8])) -> usize {
        let i = if self.shared { 0 } else { partition as usize };
        let mut guard = self.files[i].lock();
        let f = &mut *guard;
        // Frame numbers to read: a contiguous run per partition file; scattered in the shared one.
        let (first, count) = if self.shared {
            let frames = &f.frames[partition as usize];
            let start = (offset as usize).min(frames.len());
            (start, (frames.len() - start).min(max))
        } else {
            let start = (offset as usize).min(f.positions.len());
            (start, (f.positions.len() - start).min(max))
        };
        if count == 0 {
            return 0;
        }
        let mut scratch = std::mem::take(&mut f.scratch);
        let file = f.writer.get_ref();
        let mut done = 0;
        let mut k = 0;
        while k < count {
            // One pread covers the longest run of consecutive frames from here.
            let frame_at = |k: usize| {
                if self.shared {
                    f.frames[partition as usize][first + k] as usize
                } else {
                    first + k
                }
            };
            let start_frame = frame_at(k);
            let mut run = 1;
            while k + run < count && frame_at(k + run) == start_frame + run {
                run += 1;
            }
            let from = f.positions[start_frame];
            let to = f
                .positions
                .get(start_frame + run)
                .copied()
                .unwrap_or(f.scanned);
            scratch.resize((to - from) as usize, 0);
            file.read_exact_at(&mut scratch, from).expect("read");
            let mut at = 0;
            while at < scratch.len() {
                let h = &scratch[at..];
                let len = u32::from_be_bytes(h[..4].try_into().expect("4 bytes")) as usize;
                let crc = u32::from_be_bytes(h[4..8].try_into().expect("4 bytes"));
                let body = &h[8..8 + len];
                assert_eq!(crc32fast::hash(body), crc, "raw frame CRC");
                each(body);
                at += 8 + len;
                done += 1;
            }
            k += run;
        }
        f.scratch = scratch;
        done
    }
}
