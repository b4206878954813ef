//! The store's `meta` file: which engine made the store and which topics it has.
//!
//! ```text
//! "DUOL" | version u16 = 1 | engine u8 | reserved u8 | topic count u32 |
//!   per topic: name length u16 | name | partitions u32 |
//! CRC-32C u32 of everything before it
//! ```
//! Written atomically (temp file, fsync, rename, directory fsync), so after a crash it holds the
//! old or the new catalog, never a mix.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::{self, FileSystem};
use crate::store::{EngineKind, TopicConfig};

const MAGIC: &[u8; 4] = b"DUOL";
const VERSION: u16 = 1;
/// File name of the catalog inside a store directory.
pub(crate) const META_FILE: &str = "meta";

/// Engine and topics of a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Catalog {
    pub(crate) engine: EngineKind,
    pub(crate) topics: Vec<(String, TopicConfig)>,
}

impl Catalog {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.topics.len() * 32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.push(self.engine.code());
        out.push(0);
        out.extend_from_slice(&(self.topics.len() as u32).to_be_bytes());
        for (name, config) in &self.topics {
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&config.partitions.to_be_bytes());
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
        if version != VERSION {
            return Err(bad(4, &format!("unsupported catalog version {version}")));
        }
        let engine = EngineKind::from_code(body[6]).ok_or_else(|| bad(6, "unknown engine code"))?;
        let count = u32::from_be_bytes([body[8], body[9], body[10], body[11]]) as usize;
        let mut pos = 12;
        let mut topics = Vec::with_capacity(count.min(body.len() / 6));
        for _ in 0..count {
            let len_bytes = body
                .get(pos..pos + 2)
                .ok_or_else(|| bad(pos, "catalog truncated"))?;
            let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
            pos += 2;
            let name = body
                .get(pos..pos + len)
                .ok_or_else(|| bad(pos, "catalog truncated"))?;
            let name = std::str::from_utf8(name)
                .map_err(|_| bad(pos, "topic name is not UTF-8"))?
                .to_owned();
            pos += len;
            let p = body
                .get(pos..pos + 4)
                .ok_or_else(|| bad(pos, "catalog truncated"))?;
            let partitions = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
            pos += 4;
            topics.push((name, TopicConfig { partitions }));
        }
        if pos != body.len() {
            return Err(bad(pos, "trailing bytes in catalog"));
        }
        Ok(Catalog { engine, topics })
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
        let c = Catalog {
            engine: EngineKind::CommitLog,
            topics: vec![
                ("a".into(), TopicConfig { partitions: 3 }),
                ("%RETRY%g".into(), TopicConfig { partitions: 1 }),
            ],
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
