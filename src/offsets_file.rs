//! Small checksummed files mapping (topic, partition) to an offset: log start offsets and
//! recovery points. Written atomically.
//!
//! ```text
//! magic (4) | version u16 = 1 | reserved u16 | count u32 |
//!   per entry: topic length u16 | topic | partition u32 | offset u64 |
//! CRC-32C u32 of everything before it
//! ```

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::{self, FileSystem};

/// (topic, partition, offset) entries.
pub(crate) type Entries = Vec<(String, u32, u64)>;

pub(crate) fn encode(magic: &[u8; 4], entries: &[(String, u32, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.len() * 24);
    out.extend_from_slice(magic);
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    for (topic, partition, offset) in entries {
        out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        out.extend_from_slice(topic.as_bytes());
        out.extend_from_slice(&partition.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

pub(crate) fn decode(path: &Path, magic: &[u8; 4], data: &[u8]) -> Result<Entries> {
    let bad = |pos: usize, why: &str| Error::corrupted(path, pos as u64, why.to_owned());
    if data.len() < 16 {
        return Err(bad(0, "file shorter than its header"));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    if crc32c::crc32c(body).to_be_bytes() != crc {
        return Err(bad(body.len(), "checksum mismatch"));
    }
    if &body[..4] != magic {
        return Err(bad(0, "bad magic"));
    }
    if body[4..6] != 1u16.to_be_bytes() {
        return Err(bad(4, "unsupported version"));
    }
    let count = u32::from_be_bytes([body[8], body[9], body[10], body[11]]) as usize;
    let mut out = Vec::with_capacity(count.min(body.len() / 14));
    let mut pos = 12;
    for _ in 0..count {
        let l = body
            .get(pos..pos + 2)
            .ok_or_else(|| bad(pos, "truncated"))?;
        let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
        pos += 2;
        let name = body
            .get(pos..pos + len)
            .ok_or_else(|| bad(pos, "truncated"))?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad(pos, "topic is not UTF-8"))?;
        pos += len;
        let rest = body
            .get(pos..pos + 12)
            .ok_or_else(|| bad(pos, "truncated"))?;
        let partition = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let mut o = [0u8; 8];
        o.copy_from_slice(&rest[4..12]);
        pos += 12;
        out.push((name, partition, u64::from_be_bytes(o)));
    }
    if pos != body.len() {
        return Err(bad(pos, "trailing bytes"));
    }
    Ok(out)
}

/// Loads the file; a missing file is empty. A damaged one is an error the caller decides on.
pub(crate) fn load(fs: &dyn FileSystem, path: &Path, magic: &[u8; 4]) -> Result<Entries> {
    match fs.read_file(path) {
        Ok(d) => decode(path, magic, &d),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(path, e)),
    }
}

pub(crate) fn store(
    fs: &dyn FileSystem,
    path: &Path,
    magic: &[u8; 4],
    entries: &[(String, u32, u64)],
) -> Result<()> {
    io::write_atomic(fs, path, &encode(magic, entries)).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let e = vec![("a".to_string(), 0, 5), ("b-c".to_string(), 7, 1 << 40)];
        let b = encode(b"TEST", &e);
        assert_eq!(decode(Path::new("x"), b"TEST", &b).unwrap(), e);
        assert!(decode(Path::new("x"), b"OTHR", &b).is_err());
        for i in 0..b.len() {
            assert!(decode(Path::new("x"), b"TEST", &b[..i]).is_err());
            let mut bad = b.clone();
            bad[i] ^= 4;
            assert!(decode(Path::new("x"), b"TEST", &bad).is_err());
        }
    }
}
