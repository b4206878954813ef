//! The compacted prefix of a partition (RocketMQ 5's `CompactionLog`, one per compacting
//! partition): the records a cleaner pass kept, below the partition's `clean_end`, in files of
//! their own, since the commit log is shared by every topic and cannot be rewritten for one.
//!
//! ```text
//! compaction/<topic>/<partition>/state                 the current generation (atomic, checksummed)
//! compaction/<topic>/<partition>/<20-digit gen>.log    kept records, commit-log record format
//! compaction/<topic>/<partition>/<20-digit gen>.idx    sparse offset → position index
//! ```
//! Records are copied byte for byte from the commit log (their whole-record CRC, queue offset
//! and original commit-log position stay), ascending by offset. A generation is written whole,
//! synced, and becomes current only when `state` names it; files of any other generation are
//! leftovers of a pass that did not commit, or of one that was replaced, and are deleted.
//!
//! This module owns those files and their codecs; it knows nothing of passes or of the consume
//! queue (see `cleaner`).

use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::record::{self, Checks, Decoded};
use crate::error::{Error, Result};
use crate::io::{self, FileSystem, OpenMode, StorageFile};

/// Directory of the compacted prefixes, under the store root.
pub(crate) const COMPACTION_DIR: &str = "compaction";
const STATE_FILE: &str = "state";
const STATE_MAGIC: &[u8; 4] = b"DLCS";
const INDEX_MAGIC: &[u8; 4] = b"DLCI";
const VERSION: u16 = 1;
const STATE_LEN: usize = 64;
/// Header of an index file: magic, version, reserved.
const INDEX_HEADER: u64 = 8;
/// One index entry: queue offset u64, position in the data file u64.
const INDEX_ENTRY: u64 = 16;
/// Data bytes between two index entries (Kafka's `index.interval.bytes` default).
pub(crate) const INDEX_INTERVAL: u64 = 4096;
/// Bytes read from a data file at a time.
const CHUNK: usize = 256 << 10;
/// Records buffered before a write of the data file.
const WRITE_BUFFER: usize = 512 << 10;

/// What `state` says: the current generation and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct State {
    /// Generation of the current files (0 before the first pass: no files).
    pub(crate) generation: u64,
    /// Offsets below it are served from the compacted files (or were removed).
    pub(crate) clean_end: u64,
    /// Bytes of the data file that hold records.
    pub(crate) data_len: u64,
    /// Entries of the index file.
    pub(crate) index_entries: u64,
    /// Records kept.
    pub(crate) records: u64,
    /// Tombstones among them.
    pub(crate) tombstones: u64,
    /// Oldest store time of a kept tombstone (`i64::MAX` with none): when a pass may expire one
    /// even though nothing is dirty.
    pub(crate) oldest_tombstone_ms: i64,
}

impl Default for State {
    fn default() -> Self {
        State {
            generation: 0,
            clean_end: 0,
            data_len: 0,
            index_entries: 0,
            records: 0,
            tombstones: 0,
            oldest_tombstone_ms: i64::MAX,
        }
    }
}

fn u64_at(b: &[u8], pos: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[pos..pos + 8]);
    u64::from_be_bytes(a)
}

impl State {
    /// ```text
    /// 0 "DLCS" | 4 version u16 = 1 | 6 reserved u16 | 8 generation | 16 clean_end | 24 data_len |
    /// 32 index_entries | 40 records | 48 tombstones | 56 oldest_tombstone_ms i64 | 64 CRC-32C
    /// ```
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STATE_LEN + 4);
        out.extend_from_slice(STATE_MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        for v in [
            self.generation,
            self.clean_end,
            self.data_len,
            self.index_entries,
            self.records,
            self.tombstones,
        ] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&self.oldest_tombstone_ms.to_be_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes `state`; every damage is a `Corrupted` error naming `path`.
    pub(crate) fn decode(path: &Path, b: &[u8]) -> Result<State> {
        if b.len() != STATE_LEN + 4 {
            return Err(Error::corrupted(
                path,
                0,
                "compaction state has the wrong length",
            ));
        }
        let (body, crc) = b.split_at(STATE_LEN);
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return Err(Error::corrupted(
                path,
                STATE_LEN as u64,
                "compaction state checksum mismatch",
            ));
        }
        if &body[..4] != STATE_MAGIC {
            return Err(Error::corrupted(path, 0, "bad magic"));
        }
        if body[4..6] != VERSION.to_be_bytes() {
            return Err(Error::corrupted(path, 4, "unsupported version"));
        }
        let s = State {
            generation: u64_at(body, 8),
            clean_end: u64_at(body, 16),
            data_len: u64_at(body, 24),
            index_entries: u64_at(body, 32),
            records: u64_at(body, 40),
            tombstones: u64_at(body, 48),
            oldest_tombstone_ms: u64_at(body, 56) as i64,
        };
        if s.generation == 0 && (s.data_len != 0 || s.records != 0) {
            return Err(Error::corrupted(path, 8, "generation 0 holds no records"));
        }
        if s.tombstones > s.records || (s.records == 0) != (s.data_len == 0) {
            return Err(Error::corrupted(
                path,
                24,
                "compaction state counts disagree",
            ));
        }
        Ok(s)
    }
}

/// What the cleaner and the reader need to know of one stored record.
#[derive(Clone, Debug)]
pub(crate) struct Meta {
    pub(crate) offset: u64,
    pub(crate) partition: i32,
    pub(crate) physical: u64,
    pub(crate) store_timestamp: i64,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) tombstone: bool,
    /// The record's transaction type (its sys flag's `0x0C` bits).
    pub(crate) txn_type: i32,
    /// The producer id of a transactional record (`__PID`).
    pub(crate) producer_id: Option<i64>,
}

/// The property that marks a tombstone on the CommitLog engine (hidden from the user's view).
pub(crate) const TOMBSTONE_PROPERTY: &[u8] = b"__TOMBSTONE";

/// Decodes a record (every check) and picks out what compaction needs. Pure.
pub(crate) fn describe(rec: &[u8], topic: &str) -> std::result::Result<Meta, &'static str> {
    let d = match record::decode(rec, Checks::FULL) {
        Ok(Decoded::Message(d)) => d,
        Ok(Decoded::Blank { .. }) => return Err("blank record where a message was expected"),
        Err(e) => return Err(e.reason()),
    };
    if d.total_size != rec.len() {
        return Err("record size differs from its slot");
    }
    if d.topic != topic.as_bytes() {
        return Err("record of another topic");
    }
    if d.header.queue_offset < 0 {
        return Err("negative queue offset");
    }
    let mut key = None;
    let mut tombstone = false;
    let mut producer_id = None;
    for (name, value) in record::iter_raw_properties(d.properties) {
        match name {
            b"__KEY" => key = Some(value.to_vec()),
            b"__KEYHEX" => key = Some(super::read::unhex(value).ok_or("bad hex key")?),
            TOMBSTONE_PROPERTY => tombstone = value == b"1",
            b"__PID" => {
                producer_id = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<i64>().ok())
            }
            _ => {}
        }
    }
    Ok(Meta {
        offset: d.header.queue_offset as u64,
        partition: d.header.queue_id,
        physical: d.header.physical_offset.max(0) as u64,
        store_timestamp: d.header.store_timestamp,
        key,
        tombstone,
        txn_type: record::transaction_type(d.header.sys_flag),
        producer_id,
    })
}

/// One generation's files: where they are and what `state` says of them.
#[derive(Clone, Debug)]
pub(crate) struct Compacted {
    pub(crate) dir: PathBuf,
    pub(crate) state: State,
}

fn gen_name(generation: u64, ext: &str) -> String {
    format!("{}.{ext}", io::offset_name(generation))
}

fn open_existing(fs: &dyn FileSystem, path: &Path) -> Result<Box<dyn StorageFile>> {
    fs.open_file(path, OpenMode::Existing)
        .map_err(|e| Error::io(path, e))
}

impl Compacted {
    pub(crate) fn data_path(&self) -> PathBuf {
        self.dir.join(gen_name(self.state.generation, "log"))
    }

    pub(crate) fn index_path(&self) -> PathBuf {
        self.dir.join(gen_name(self.state.generation, "idx"))
    }

    /// Opens the generation's files for reading (`None` when it holds no record).
    pub(crate) fn open(&self, fs: &dyn FileSystem, max_record: usize) -> Result<Option<Reader>> {
        if self.state.records == 0 {
            return Ok(None);
        }
        let data_path = self.data_path();
        let index_path = self.index_path();
        Ok(Some(Reader {
            data: open_existing(fs, &data_path)?,
            index: open_existing(fs, &index_path)?,
            data_path,
            index_path,
            state: self.state,
            max_record,
        }))
    }

    /// Files and bytes on disk: `state`, and the data and index files (none before a record).
    pub(crate) fn disk_usage(&self) -> (u64, u64) {
        let state = (STATE_LEN + 4) as u64;
        if self.state.generation == 0 {
            return (1, state);
        }
        let index = INDEX_HEADER + self.state.index_entries * INDEX_ENTRY;
        (3, state + self.state.data_len + index)
    }

    /// Checks the files against `state` (lengths, index header): what open trusts.
    fn check_files(&self, fs: &dyn FileSystem) -> Result<()> {
        if self.state.records == 0 {
            return Ok(());
        }
        let data = self.data_path();
        let len = fs.file_len(&data).map_err(|e| Error::io(&data, e))?;
        if len < self.state.data_len {
            return Err(Error::corrupted(
                &data,
                len,
                format!(
                    "compacted data file is shorter than the {} bytes its state names",
                    self.state.data_len
                ),
            ));
        }
        let index = self.index_path();
        let want = INDEX_HEADER + self.state.index_entries * INDEX_ENTRY;
        let len = fs.file_len(&index).map_err(|e| Error::io(&index, e))?;
        if len < want || self.state.index_entries == 0 {
            return Err(Error::corrupted(
                &index,
                len,
                "compacted index file is shorter than its state names",
            ));
        }
        let f = open_existing(fs, &index)?;
        let mut head = [0u8; INDEX_HEADER as usize];
        io::read_exact_at(f.as_ref(), &mut head, 0).map_err(|e| Error::io(&index, e))?;
        if &head[..4] != INDEX_MAGIC || head[4..6] != VERSION.to_be_bytes() {
            return Err(Error::corrupted(&index, 0, "bad compacted index header"));
        }
        Ok(())
    }
}

/// The directory of one partition's compacted prefix.
pub(crate) fn partition_dir(root: &Path, topic: &str, partition: u32) -> PathBuf {
    root.join(COMPACTION_DIR)
        .join(topic)
        .join(partition.to_string())
}

/// Loads a partition's compacted prefix: `None` without a `state` file. Files of other
/// generations (and a leftover `state.tmp`) are deleted. A damaged `state` or files shorter
/// than it names are a `Corrupted` error; the caller decides whether it can do without.
pub(crate) fn load(fs: &dyn FileSystem, dir: &Path) -> Result<Option<Compacted>> {
    let path = dir.join(STATE_FILE);
    let state = match fs.read_file(&path) {
        Ok(b) => Some(State::decode(&path, &b)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(&path, e)),
    };
    let c = state.map(|state| Compacted {
        dir: dir.to_owned(),
        state,
    });
    if let Some(c) = &c {
        c.check_files(fs)?;
    }
    remove_other_generations(fs, dir, c.as_ref().map(|c| c.state.generation))?;
    Ok(c)
}

/// Deletes every generation's files but `keep`'s, and a leftover temporary state.
pub(crate) fn remove_other_generations(
    fs: &dyn FileSystem,
    dir: &Path,
    keep: Option<u64>,
) -> Result<()> {
    let entries = io::list_dir_or_empty(fs, dir).map_err(|e| Error::io(dir, e))?;
    let mut removed = false;
    for e in entries {
        if e.is_dir {
            continue;
        }
        let generation = e
            .name
            .strip_suffix(".log")
            .or_else(|| e.name.strip_suffix(".idx"))
            .and_then(io::parse_offset_name);
        let stale = match generation {
            Some(g) => Some(g) != keep,
            None => e.name == "state.tmp",
        };
        if stale {
            let p = dir.join(&e.name);
            io::remove_if_exists(fs, &p).map_err(|e| Error::io(&p, e))?;
            removed = true;
        }
    }
    if removed {
        fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// Removes the `state` file (a fallback from a damaged one: no compacted prefix).
pub(crate) fn remove_state(fs: &dyn FileSystem, dir: &Path) -> Result<()> {
    let path = dir.join(STATE_FILE);
    io::remove_if_exists(fs, &path).map_err(|e| Error::io(&path, e))?;
    fs.sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Makes `state` current: the new generation's directory entries durable, then the state
/// file replaced atomically. Before the rename completes the old state (and generation) holds.
pub(crate) fn commit(fs: &dyn FileSystem, dir: &Path, state: &State) -> Result<()> {
    fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(STATE_FILE);
    io::write_atomic(fs, &path, &state.encode()).map_err(|e| Error::io(&path, e))
}

/// Reads a generation: the sparse index to find where to start, then records in order.
pub(crate) struct Reader {
    data: Box<dyn StorageFile>,
    index: Box<dyn StorageFile>,
    data_path: PathBuf,
    index_path: PathBuf,
    state: State,
    max_record: usize,
}

impl Reader {
    pub(crate) fn data_path(&self) -> &Path {
        &self.data_path
    }

    /// Index entry `i`: (offset, data position).
    pub(crate) fn entry(&self, i: u64) -> Result<(u64, u64)> {
        let mut b = [0u8; INDEX_ENTRY as usize];
        io::read_exact_at(self.index.as_ref(), &mut b, INDEX_HEADER + i * INDEX_ENTRY)
            .map_err(|e| Error::io(&self.index_path, e))?;
        Ok((u64_at(&b, 0), u64_at(&b, 8)))
    }

    /// Where to start scanning for the first record with offset ≥ `target`: the position of the
    /// last index entry at or below it (the first record's when none is).
    pub(crate) fn seek(&self, target: u64) -> Result<u64> {
        let (mut lo, mut hi) = (0u64, self.state.index_entries);
        // Invariant: entries before `lo` are ≤ target, entries from `hi` on are > target.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid)?.0 <= target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return Ok(0);
        }
        let (_, pos) = self.entry(lo - 1)?;
        if pos >= self.state.data_len {
            return Err(Error::corrupted(
                &self.index_path,
                INDEX_HEADER + (lo - 1) * INDEX_ENTRY,
                "compacted index entry points past the data",
            ));
        }
        Ok(pos)
    }

    /// A scanner over the records from data position `pos`.
    pub(crate) fn scan_from(&self, pos: u64) -> Scanner<'_> {
        Scanner {
            reader: self,
            pos,
            buf: Bytes::new(),
            buf_at: 0,
        }
    }
}

/// Records of a generation in order, each a slice of a chunk read from the data file.
pub(crate) struct Scanner<'a> {
    reader: &'a Reader,
    pos: u64,
    buf: Bytes,
    buf_at: u64,
}

impl Scanner<'_> {
    /// Position of the next record.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    fn fill(&mut self, len: usize) -> Result<()> {
        let end = self.reader.state.data_len;
        let len = (len as u64).min(end - self.pos) as usize;
        let mut v = vec![0u8; len];
        io::read_exact_at(self.reader.data.as_ref(), &mut v, self.pos)
            .map_err(|e| Error::io(&self.reader.data_path, e))?;
        self.buf = Bytes::from(v);
        self.buf_at = self.pos;
        Ok(())
    }

    /// The chunk holding the next record and its range in it; `None` at the end of the data.
    pub(crate) fn next_raw(&mut self) -> Result<Option<(Bytes, std::ops::Range<usize>)>> {
        let end = self.reader.state.data_len;
        if self.pos >= end {
            return Ok(None);
        }
        let corrupt =
            |pos: u64, why: &str| Error::corrupted(&self.reader.data_path, pos, why.to_owned());
        let in_buf =
            |s: &Self, n: u64| s.pos >= s.buf_at && s.pos + n <= s.buf_at + s.buf.len() as u64;
        if !in_buf(self, 4) {
            self.fill(CHUNK)?;
        }
        let rel = (self.pos - self.buf_at) as usize;
        let Some(head) = self.buf.get(rel..rel + 4) else {
            return Err(corrupt(self.pos, "compacted record header past the data"));
        };
        let total = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if total <= 0 || total as usize > self.reader.max_record || self.pos + total as u64 > end {
            return Err(corrupt(self.pos, "compacted record size is impossible"));
        }
        let total = total as usize;
        if !in_buf(self, total as u64) {
            self.fill(CHUNK.max(total))?;
        }
        let rel = (self.pos - self.buf_at) as usize;
        self.pos += total as u64;
        Ok(Some((self.buf.clone(), rel..rel + total)))
    }
}

/// Writes a new generation: records through a buffer into `<gen>.log`, an index entry every
/// [`INDEX_INTERVAL`] bytes into `<gen>.idx`; `finish` syncs both.
pub(crate) struct Writer<'a> {
    fs: &'a dyn FileSystem,
    data: Box<dyn StorageFile>,
    index: Box<dyn StorageFile>,
    data_path: PathBuf,
    index_path: PathBuf,
    buf: Vec<u8>,
    index_buf: Vec<u8>,
    /// Data bytes written to the file so far (the buffer comes after them).
    written: u64,
    index_written: u64,
    next_index_at: u64,
    state: State,
    last_offset: Option<u64>,
}

impl<'a> Writer<'a> {
    /// Creates generation `generation`'s files in `dir` (replacing leftovers of a pass that
    /// did not commit).
    pub(crate) fn create(fs: &'a dyn FileSystem, dir: &Path, generation: u64) -> Result<Self> {
        io::create_dir_durable(fs, dir).map_err(|e| Error::io(dir, e))?;
        let data_path = dir.join(gen_name(generation, "log"));
        let index_path = dir.join(gen_name(generation, "idx"));
        let create = |p: &Path| -> Result<Box<dyn StorageFile>> {
            io::remove_if_exists(fs, p).map_err(|e| Error::io(p, e))?;
            fs.open_file(p, OpenMode::CreateNew)
                .map_err(|e| Error::io(p, e))
        };
        let data = create(&data_path)?;
        let index = create(&index_path)?;
        let mut index_buf = Vec::with_capacity(64 << 10);
        index_buf.extend_from_slice(INDEX_MAGIC);
        index_buf.extend_from_slice(&VERSION.to_be_bytes());
        index_buf.extend_from_slice(&[0, 0]);
        Ok(Writer {
            fs,
            data,
            index,
            data_path,
            index_path,
            buf: Vec::with_capacity(WRITE_BUFFER),
            index_buf,
            written: 0,
            index_written: 0,
            next_index_at: 0,
            state: State {
                generation,
                ..State::default()
            },
            last_offset: None,
        })
    }

    /// Bytes of records pushed so far.
    pub(crate) fn len(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    /// Appends one record (offsets must ascend). Returns the bytes written to the file by this
    /// call (0 while buffering), for throttling.
    pub(crate) fn push(&mut self, rec: &[u8], meta: &Meta) -> Result<usize> {
        if self.last_offset.is_some_and(|l| l >= meta.offset) {
            return Err(Error::corrupted(
                &self.data_path,
                self.len(),
                "compaction would write offsets out of order",
            ));
        }
        let at = self.len();
        if at >= self.next_index_at {
            self.index_buf.extend_from_slice(&meta.offset.to_be_bytes());
            self.index_buf.extend_from_slice(&at.to_be_bytes());
            self.state.index_entries += 1;
            self.next_index_at = at + INDEX_INTERVAL;
        }
        self.buf.extend_from_slice(rec);
        self.last_offset = Some(meta.offset);
        self.state.records += 1;
        if meta.tombstone {
            self.state.tombstones += 1;
            self.state.oldest_tombstone_ms =
                self.state.oldest_tombstone_ms.min(meta.store_timestamp);
        }
        if self.buf.len() >= WRITE_BUFFER {
            return self.flush_buffers();
        }
        Ok(0)
    }

    fn flush_buffers(&mut self) -> Result<usize> {
        let n = self.buf.len();
        if n > 0 {
            self.data
                .write_all_at(&self.buf, self.written)
                .map_err(|e| Error::io(&self.data_path, e))?;
            self.written += n as u64;
            self.buf.clear();
        }
        if !self.index_buf.is_empty() {
            self.index
                .write_all_at(&self.index_buf, self.index_written)
                .map_err(|e| Error::io(&self.index_path, e))?;
            self.index_written += self.index_buf.len() as u64;
            self.index_buf.clear();
        }
        Ok(n)
    }

    /// Writes what is buffered and syncs both files; returns the generation's state.
    pub(crate) fn finish(mut self, clean_end: u64) -> Result<State> {
        self.flush_buffers()?;
        self.data
            .sync_data()
            .map_err(|e| Error::io(&self.data_path, e))?;
        self.index
            .sync_data()
            .map_err(|e| Error::io(&self.index_path, e))?;
        let _ = self.fs;
        self.state.data_len = self.written;
        self.state.clean_end = clean_end;
        Ok(self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trip_and_every_bit_flip_is_refused() {
        let s = State {
            generation: 7,
            clean_end: 12345,
            data_len: 999,
            index_entries: 3,
            records: 40,
            tombstones: 2,
            oldest_tombstone_ms: 1_700_000_000_000,
        };
        let b = s.encode();
        let p = Path::new("state");
        assert_eq!(State::decode(p, &b).unwrap(), s);
        for byte in 0..b.len() {
            for bit in 0..8 {
                let mut bad = b.clone();
                bad[byte] ^= 1 << bit;
                assert!(State::decode(p, &bad).is_err(), "flip {byte}:{bit}");
            }
        }
        for len in 0..b.len() {
            assert!(State::decode(p, &b[..len]).is_err());
        }
    }

    #[test]
    fn describe_reads_key_and_tombstone() {
        let mut h = record::RecordHeader::local(2, 5);
        h.queue_offset = 9;
        h.store_timestamp = 77;
        let mut props = Vec::new();
        record::put_property(&mut props, b"__TOMBSTONE", b"1");
        record::put_property(&mut props, b"__KEYHEX", b"00ff");
        let mut rec = Vec::new();
        record::encode(&mut rec, &h, b"", b"t", &props, true);
        let m = describe(&rec, "t").unwrap();
        assert_eq!((m.offset, m.partition, m.store_timestamp), (9, 2, 77));
        assert_eq!(m.key.as_deref(), Some(&[0u8, 255][..]));
        assert!(m.tombstone);
        assert!(describe(&rec, "u").is_err());
        assert!(describe(&rec[..rec.len() - 1], "t").is_err());
    }
}
