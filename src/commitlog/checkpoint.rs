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
//! `log-start-offset-checkpoint` uses the shared offsets-file layout (magic `DLSO`).

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

const START_OFFSETS_MAGIC: &[u8; 4] = b"DLSO";

pub(crate) fn load_start_offsets(
    fs: &dyn FileSystem,
    dir: &Path,
) -> Result<Vec<(String, u32, u64)>> {
    crate::offsets_file::load(fs, &dir.join(START_OFFSETS_FILE), START_OFFSETS_MAGIC)
}

pub(crate) fn store_start_offsets(
    fs: &dyn FileSystem,
    dir: &Path,
    entries: &[(String, u32, u64)],
) -> Result<()> {
    crate::offsets_file::store(
        fs,
        &dir.join(START_OFFSETS_FILE),
        START_OFFSETS_MAGIC,
        entries,
    )
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
}
