//! The store's `meta` file: which engine made the store and which topics it has.
//!
//! ```text
//! "DUOL" | version u16 = 4 | engine u8 | reserved u8 | next topic id u64 |
//!   producer id block end i64 | producer flag since u64 | topic count u32 |
//!   per topic: name length u16 | name | partitions u32 | since u64 | id u64 |
//!              config count u16 | per config: name length u8 | name | value length u16 | value
//! deleting count u32 | per topic being deleted: name length u16 | name | partitions u32
//! CRC-32C u32 of everything before it
//! ```
//! `since`: on the CommitLog engine, the commit-log position when the topic was created; a record
//! of the same name before it belongs to an earlier, deleted topic of that name, and recovery and
//! verification pass over it (0 on the segmented engine, whose files are per topic).
//! `id`: the topic's id (Kafka's topic ID, KIP-516), from the catalog's `next topic id`, never
//! reused in the store, so a topic deleted and created again has a new one. Version 1 topics
//! get ids 1, 2, … in catalog order.
//! Configs are Kafka's names and values (`retention.ms` = `3600000`), so a config added later
//! needs no new version. Version 1 (no configs, no deletions) and version 2 (no producer id
//! block) are still read.
//! `producer id block end` (version 3): every producer id below it may have been handed out
//! (`LogStore::allocate_producer_id` reserves ids in blocks of [`PRODUCER_ID_BLOCK`] by
//! writing a catalog whose end covers the block before it hands out one of them), so an open
//! starts handing out ids at it: none is ever given twice, even after a crash. Older versions
//! read as 0.
//! `producer flag since` (version 4; CommitLog engine, 0 on the segmented one): the commit-log
//! position from which a record is an idempotent (or transactional) producer's only if its sys
//! flag has bit 0x1000. Records below it were written by a build that had no such flag and are
//! read as that build read them: a producer's if their `__PID`/`__EPOCH`/`__SEQ` properties
//! parse. A version-3 catalog (producer ids handed out, no flag yet) reads as `u64::MAX` — that
//! rule for the whole log — and the engine's open rewrites it (version 4) with the end it
//! recovered before anything is appended. A version-1 or 2 catalog reads as 0: no producer id
//! was ever handed out under it, so no record below is a producer's, and none has the flag.
//! Written atomically (temp file, fsync, rename, directory fsync), so after a crash it holds the
//! old or the new catalog, never a mix: the catalog is the commit point of every topic change.
//! Deleting a topic first writes a catalog without it and with it listed as being deleted, then
//! removes its files, then writes the catalog without the listing; an open finishes any deletion
//! still listed before it loads the topics.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::{self, FileSystem};
use crate::store::{EngineKind, TopicConfig};

const MAGIC: &[u8; 4] = b"DUOL";
const VERSION: u16 = 4;
/// Producer ids reserved per catalog write (Kafka's `ProducerIdManager` takes blocks of 1,000).
pub(crate) const PRODUCER_ID_BLOCK: i64 = 1000;
/// File name of the catalog inside a store directory.
pub(crate) const META_FILE: &str = "meta";

/// Engine and topics of a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Catalog {
    pub(crate) engine: EngineKind,
    /// (name, config, its since and id): see the module docs.
    pub(crate) topics: Vec<(String, TopicConfig, TopicMeta)>,
    /// The id the next topic created gets.
    pub(crate) next_topic_id: u64,
    /// Producer ids below it may have been handed out (see the module docs).
    pub(crate) producer_id_block_end: i64,
    /// CommitLog: where records start to be producers' by sys flag 0x1000 only; `u64::MAX`
    /// until an open of a version-3 catalog fixes it (see the module docs).
    pub(crate) producer_flag_since: u64,
    /// Topics whose deletion began but may not have finished: (name, partitions).
    pub(crate) deleting: Vec<(String, u32)>,
}

/// What the catalog keeps of a topic besides its name and config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TopicMeta {
    /// CommitLog engine: the commit-log position at its creation (see the module docs).
    pub(crate) since: u64,
    /// Unique in the store, never reused.
    pub(crate) id: u64,
}

impl Catalog {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.topics.len() * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.push(self.engine.code());
        out.push(0);
        out.extend_from_slice(&self.next_topic_id.to_be_bytes());
        out.extend_from_slice(&self.producer_id_block_end.to_be_bytes());
        out.extend_from_slice(&self.producer_flag_since.to_be_bytes());
        out.extend_from_slice(&(self.topics.len() as u32).to_be_bytes());
        for (name, config, meta) in &self.topics {
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&config.partitions.to_be_bytes());
            out.extend_from_slice(&meta.since.to_be_bytes());
            out.extend_from_slice(&meta.id.to_be_bytes());
            let configs = config.overrides();
            out.extend_from_slice(&(configs.len() as u16).to_be_bytes());
            for (name, value) in configs {
                out.push(name.len() as u8);
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(&(value.len() as u16).to_be_bytes());
                out.extend_from_slice(value.as_bytes());
            }
        }
        out.extend_from_slice(&(self.deleting.len() as u32).to_be_bytes());
        for (name, partitions) in &self.deleting {
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&partitions.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    pub(crate) fn decode(path: &Path, data: &[u8]) -> Result<Catalog> {
        let bad = |pos: usize, why: &str| Error::corrupted(path, pos as u64, why.to_owned());
        if data.len() < 16 {
            return Err(bad(0, "catalog shorter than its header"));
        }
        let (body, crc) = data.split_at(data.len() - 4);
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return Err(bad(data.len() - 4, "catalog checksum mismatch"));
        }
        if &body[..4] != MAGIC {
            return Err(bad(0, "not a duolog store (bad magic)"));
        }
        let version = u16::from_be_bytes([body[4], body[5]]);
        if !(1..=VERSION).contains(&version) {
            return Err(bad(4, &format!("unsupported catalog version {version}")));
        }
        let engine = EngineKind::from_code(body[6]).ok_or_else(|| bad(6, "unknown engine code"))?;
        let mut r = Reader { body, pos: 8, bad };
        let mut next_topic_id = if version >= 2 { r.u64()? } else { 1 };
        let producer_id_block_end = if version >= 3 { r.u64()? as i64 } else { 0 };
        if producer_id_block_end < 0 {
            return Err(bad(16, "negative producer id block end"));
        }
        let producer_flag_since = match version {
            4.. => r.u64()?,
            3 => u64::MAX,
            _ => 0,
        };
        let count = r.u32()? as usize;
        let mut topics = Vec::with_capacity(count.min(body.len() / 6));
        for _ in 0..count {
            let len = usize::from(r.u16()?);
            let name = r.str(len)?;
            let mut config = TopicConfig::with_partitions(r.u32()?);
            let mut meta = TopicMeta::default();
            if version >= 2 {
                meta.since = r.u64()?;
                meta.id = r.u64()?;
                for _ in 0..r.u16()? {
                    let name_len = usize::from(r.take(1)?[0]);
                    let at = r.pos;
                    let key = r.str(name_len)?;
                    let value_len = usize::from(r.u16()?);
                    let value = r.str(value_len)?;
                    config
                        .set(&key, &value)
                        .map_err(|e| bad(at, &format!("topic {name}: {e}")))?;
                }
            }
            if version < 2 {
                meta.id = next_topic_id;
                next_topic_id += 1;
            }
            topics.push((name, config, meta));
        }
        let mut deleting = Vec::new();
        if version >= 2 {
            for _ in 0..r.u32()? {
                let len = usize::from(r.u16()?);
                let name = r.str(len)?;
                deleting.push((name, r.u32()?));
            }
        }
        if r.pos != body.len() {
            return Err(bad(r.pos, "trailing bytes in catalog"));
        }
        if let Some((name, ..)) = topics.iter().find(|(_, _, m)| m.id >= next_topic_id) {
            return Err(bad(
                8,
                &format!("topic {name} has an id not below the next one"),
            ));
        }
        Ok(Catalog {
            engine,
            topics,
            next_topic_id,
            producer_id_block_end,
            producer_flag_since,
            deleting,
        })
    }

    pub(crate) fn path(dir: &Path) -> PathBuf {
        dir.join(META_FILE)
    }

    /// Reads the catalog of the store in `dir`, `None` if there is none.
    pub(crate) fn load(fs: &dyn FileSystem, dir: &Path) -> Result<Option<Catalog>> {
        let path = Self::path(dir);
        match fs.read_file(&path) {
            Ok(data) => Catalog::decode(&path, &data).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    pub(crate) fn store(&self, fs: &dyn FileSystem, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        io::write_atomic(fs, &path, &self.encode()).map_err(|e| Error::io(&path, e))
    }
}

/// A bounds-checked cursor over the catalog's bytes.
struct Reader<'a, F: Fn(usize, &str) -> Error> {
    body: &'a [u8],
    pos: usize,
    bad: F,
}

impl<F: Fn(usize, &str) -> Error> Reader<'_, F> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let b = self
            .body
            .get(self.pos..self.pos + n)
            .ok_or_else(|| (self.bad)(self.pos, "catalog truncated"))?;
        self.pos += n;
        Ok(b)
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn str(&mut self, n: usize) -> Result<String> {
        let at = self.pos;
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| (self.bad)(at, "a name in the catalog is not UTF-8"))
    }
}

/// Hands out the next producer id of `ids` (next id, end of the block the catalog reserves),
/// first reserving a new block of [`PRODUCER_ID_BLOCK`] ids with `store_catalog` (which writes
/// the catalog with `ids`' block end, atomically and durably) when the block is used up. The
/// caller holds the lock that serialises catalog writes.
pub(crate) fn allocate_producer_id(
    ids: &parking_lot::Mutex<(i64, i64)>,
    store_catalog: impl FnOnce() -> Result<()>,
) -> Result<i64> {
    let (next, end) = *ids.lock();
    if next >= end {
        let new_end = next
            .checked_add(PRODUCER_ID_BLOCK)
            .ok_or_else(|| Error::InvalidArgument("producer ids are exhausted".into()))?;
        ids.lock().1 = new_end;
        if let Err(e) = store_catalog() {
            ids.lock().1 = end;
            return Err(e);
        }
    }
    let mut ids = ids.lock();
    let id = ids.0;
    ids.0 += 1;
    Ok(id)
}

/// The guard of a store directory's `LOCK` file.
pub(crate) type DirLock = Box<dyn std::any::Any + Send + Sync>;

/// The start of every engine's open: create the directory, take its `LOCK` (or fail with
/// `Locked`), and read the catalog, creating an empty one for `engine` in a new store. An
/// existing store of another engine is an error.
pub(crate) fn lock_and_load(
    fs: &dyn FileSystem,
    dir: &Path,
    engine: EngineKind,
) -> Result<(DirLock, Catalog)> {
    // The root and every directory created for it must survive a power cut before anything
    // in it is acknowledged.
    crate::io::create_dir_durable(fs, dir).map_err(|e| Error::io(dir, e))?;
    let lock_path = dir.join("LOCK");
    let lock = fs
        .lock_file(&lock_path)
        .map_err(|e| Error::io(&lock_path, e))?
        .ok_or_else(|| Error::Locked(dir.to_owned()))?;
    let catalog = match Catalog::load(fs, dir)? {
        Some(c) if c.engine != engine => {
            return Err(Error::InvalidArgument(format!(
                "{} holds a {} store",
                dir.display(),
                c.engine
            )));
        }
        Some(c) => c,
        None => {
            // A directory that already holds store files but no catalog lost its catalog:
            // opening it as a new, empty store would hide the data.
            let stray = crate::io::list_dir_or_empty(fs, dir)
                .map_err(|e| Error::io(dir, e))?
                .into_iter()
                .find(|e| e.name != "LOCK" && !e.name.ends_with(".tmp"));
            if let Some(e) = stray {
                return Err(Error::corrupted(
                    Catalog::path(dir),
                    0,
                    format!(
                        "the catalog is missing but the directory holds store files ({})",
                        e.name
                    ),
                ));
            }
            let c = Catalog {
                engine,
                topics: Vec::new(),
                next_topic_id: 1,
                producer_id_block_end: 0,
                // A new store: every record is a producer's by the flag only.
                producer_flag_since: 0,
                deleting: Vec::new(),
            };
            c.store(fs, dir)?;
            c
        }
    };
    Ok((lock, catalog))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let mut compacted = TopicConfig::with_partitions(3);
        compacted.set("cleanup.policy", "compact").unwrap();
        compacted.set("retention.ms", "-1").unwrap();
        let c = Catalog {
            engine: EngineKind::CommitLog,
            topics: vec![
                (
                    "a".into(),
                    compacted,
                    TopicMeta {
                        since: 1 << 40,
                        id: 3,
                    },
                ),
                (
                    "%RETRY%g".into(),
                    TopicConfig::with_partitions(1),
                    TopicMeta { since: 0, id: 7 },
                ),
            ],
            next_topic_id: 8,
            producer_id_block_end: 3000,
            producer_flag_since: 1 << 33,
            deleting: vec![("gone".into(), 4)],
        };
        let bytes = c.encode();
        let p = Path::new("meta");
        assert_eq!(Catalog::decode(p, &bytes).unwrap(), c);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(Catalog::decode(p, &bad).is_err(), "flip at {i} accepted");
            assert!(
                Catalog::decode(p, &bytes[..i]).is_err(),
                "truncation at {i} accepted"
            );
        }
    }
}

#[cfg(test)]
mod version_two {
    use super::*;

    /// A catalog written before producer ids (version 2) still reads, with no block reserved.
    #[test]
    fn a_version_two_catalog_still_reads_with_no_producer_ids_reserved() {
        let c = Catalog {
            engine: EngineKind::Segmented,
            topics: vec![(
                "t".into(),
                TopicConfig::with_partitions(2),
                TopicMeta { since: 0, id: 1 },
            )],
            next_topic_id: 2,
            producer_id_block_end: 0,
            producer_flag_since: 0,
            deleting: Vec::new(),
        };
        let v4 = c.encode();
        // Version 2: the same bytes without the producer id block end and the producer flag
        // position (bytes 16..32).
        let mut v2 = v4[..v4.len() - 4].to_vec();
        v2.drain(16..32);
        v2[4..6].copy_from_slice(&2u16.to_be_bytes());
        let crc = crc32c::crc32c(&v2);
        v2.extend_from_slice(&crc.to_be_bytes());
        assert_eq!(Catalog::decode(Path::new("meta"), &v2).unwrap(), c);
    }
}

#[cfg(test)]
mod version_three {
    use super::*;

    /// A catalog written before the producer flag (version 3) reads with the legacy rule for
    /// the whole log (`producer_flag_since = u64::MAX`) until an open fixes the position.
    #[test]
    fn a_version_three_catalog_reads_with_the_legacy_producer_rule_everywhere() {
        let c = Catalog {
            engine: EngineKind::CommitLog,
            topics: Vec::new(),
            next_topic_id: 1,
            producer_id_block_end: 1000,
            producer_flag_since: 77,
            deleting: Vec::new(),
        };
        let v4 = c.encode();
        let mut v3 = v4[..v4.len() - 4].to_vec();
        v3.drain(24..32);
        v3[4..6].copy_from_slice(&3u16.to_be_bytes());
        let crc = crc32c::crc32c(&v3);
        v3.extend_from_slice(&crc.to_be_bytes());
        let read = Catalog::decode(Path::new("meta"), &v3).unwrap();
        assert_eq!(
            read,
            Catalog {
                producer_flag_since: u64::MAX,
                ..c
            }
        );
    }
}

#[cfg(test)]
mod version_one {
    use super::*;

    #[test]
    fn a_version_one_catalog_still_reads() {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&[2, 0]);
        out.extend_from_slice(&1u32.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(b"t");
        out.extend_from_slice(&7u32.to_be_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        let c = Catalog::decode(Path::new("meta"), &out).unwrap();
        assert_eq!(c.engine, EngineKind::Segmented);
        assert_eq!(
            c.topics,
            vec![(
                "t".into(),
                TopicConfig::with_partitions(7),
                TopicMeta { since: 0, id: 1 }
            )]
        );
        assert!(c.deleting.is_empty());
    }
}
