//! The CommitLog engine's small metadata files, each written atomically and checksummed.
//!
//! `checkpoint`:
//! ```text
//! "DLCP" | version u16 = 1 | reserved u16 | log_flushed u64 | dispatch_flushed u64 |
//! written_at_ms i64 | CRC-32C u32
//! ```
//! `log_flushed`: every commit-log byte before it is durable. `dispatch_flushed`: every
//! consume-queue unit for a record before it is durable, so an unclean open replays the log only
//! from there. Always `dispatch_flushed <= log_flushed`.
//!
//! `log-start-offset-checkpoint`:
//! ```text
//! "DLSO" | version u16 = 1 | reserved u16 | count u32 |
//!   per entry: topic length u16 | topic | partition u32 | start offset u64 |
//! CRC-32C u32
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::{self, FileSystem};

pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";
pub(crate) const START_OFFSETS_FILE: &str = "log-start-offset-checkpoint";

/// Positions known durable at the time the checkpoint was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) log_flushed: u64,
    pub(crate) dispatch_flushed: u64,
    pub(crate) written_at_ms: i64,
}

fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

fn unseal<'a>(path: &Path, data: &'a [u8], magic: &[u8; 4], min_len: usize) -> Result<&'a [u8]> {
    if data.len() < min_len + 4 {
        return Err(Error::corrupted(path, 0, "file shorter than its header"));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    if crc32c::crc32c(body).to_be_bytes() != crc {
        return Err(Error::corrupted(
            path,
            body.len() as u64,
            "checksum mismatch",
        ));
    }
    if &body[..4] != magic {
        return Err(Error::corrupted(path, 0, "bad magic"));
    }
    if body[4..6] != 1u16.to_be_bytes() {
        return Err(Error::corrupted(path, 4, "unsupported version"));
    }
    Ok(&body[8..])
}

fn load_file(fs: &dyn FileSystem, path: &Path) -> Result<Option<Vec<u8>>> {
    match fs.read_file(path) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn u64_at(b: &[u8], pos: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[pos..pos + 8]);
    u64::from_be_bytes(a)
}

impl Checkpoint {
    pub(crate) fn path(dir: &Path) -> PathBuf {
        dir.join(CHECKPOINT_FILE)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40);
        out.extend_from_slice(b"DLCP");
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.log_flushed.to_be_bytes());
        out.extend_from_slice(&self.dispatch_flushed.to_be_bytes());
        out.extend_from_slice(&self.written_at_ms.to_be_bytes());
        seal(out)
    }

    pub(crate) fn decode(path: &Path, data: &[u8]) -> Result<Checkpoint> {
        let b = unseal(path, data, b"DLCP", 32)?;
        if b.len() != 24 {
            return Err(Error::corrupted(path, 8, "checkpoint has the wrong length"));
        }
        let cp = Checkpoint {
            log_flushed: u64_at(b, 0),
            dispatch_flushed: u64_at(b, 8),
            written_at_ms: u64_at(b, 16) as i64,
        };
        if cp.dispatch_flushed > cp.log_flushed {
            return Err(Error::corrupted(
                path,
                16,
                "dispatch position past the flushed log position",
            ));
        }
        Ok(cp)
    }

    /// Loads the checkpoint: `Ok(None)` if absent.
    pub(crate) fn load(fs: &dyn FileSystem, dir: &Path) -> Result<Option<Checkpoint>> {
        let path = Self::path(dir);
        load_file(fs, &path)?
            .map(|d| Checkpoint::decode(&path, &d))
            .transpose()
    }

    pub(crate) fn store(&self, fs: &dyn FileSystem, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        io::write_atomic(fs, &path, &self.encode()).map_err(|e| Error::io(&path, e))
    }
}

/// Log start offsets raised by `delete_before` or retention.
pub(crate) fn encode_start_offsets(entries: &[(String, u32, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + entries.len() * 24);
    out.extend_from_slice(b"DLSO");
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (topic, partition, offset) in entries {
        out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(&partition.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
    }
    seal(out)
}

pub(crate) fn decode_start_offsets(path: &Path, data: &[u8]) -> Result<Vec<(String, u32, u64)>> {
    let b = unseal(path, data, b"DLSO", 12)?;
    let bad = |pos: usize| Error::corrupted(path, pos as u64 + 8, "start offsets truncated");
    let count = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let mut out = Vec::with_capacity(count.min(b.len() / 14));
    let mut pos = 4;
    for _ in 0..count {
        let l = b.get(pos..pos + 2).ok_or_else(|| bad(pos))?;
        let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
        pos += 2;
        let name = b.get(pos..pos + len).ok_or_else(|| bad(pos))?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad(pos))?;
        pos += len;
        let rest = b.get(pos..pos + 12).ok_or_else(|| bad(pos))?;
        let partition = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let offset = u64_at(rest, 4);
        pos += 12;
        out.push((name, partition, offset));
    }
    if pos != b.len() {
        return Err(bad(pos));
    }
    Ok(out)
}

pub(crate) fn load_start_offsets(
    fs: &dyn FileSystem,
    dir: &Path,
) -> Result<Vec<(String, u32, u64)>> {
    let path = dir.join(START_OFFSETS_FILE);
    Ok(load_file(fs, &path)?
        .map(|d| decode_start_offsets(&path, &d))
        .transpose()?
        .unwrap_or_default())
}

pub(crate) fn store_start_offsets(
    fs: &dyn FileSystem,
    dir: &Path,
    entries: &[(String, u32, u64)],
) -> Result<()> {
    let path = dir.join(START_OFFSETS_FILE);
    io::write_atomic(fs, &path, &encode_start_offsets(entries)).map_err(|e| Error::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trip_and_damage() {
        let cp = Checkpoint {
            log_flushed: 9000,
            dispatch_flushed: 4096,
            written_at_ms: 1_700_000_000_000,
        };
        let b = cp.encode();
        let p = Path::new("checkpoint");
        assert_eq!(Checkpoint::decode(p, &b).unwrap(), cp);
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 1;
            assert!(Checkpoint::decode(p, &bad).is_err());
            assert!(Checkpoint::decode(p, &b[..i]).is_err());
        }
    }

    #[test]
    fn start_offsets_round_trip() {
        let e = vec![("a".to_string(), 0, 5), ("b-c".to_string(), 7, 1 << 40)];
        let b = encode_start_offsets(&e);
        assert_eq!(decode_start_offsets(Path::new("x"), &b).unwrap(), e);
        for i in 0..b.len() {
            assert!(decode_start_offsets(Path::new("x"), &b[..i]).is_err());
        }
    }
}
