//! The CommitLog record codec: RocketMQ's message layout, byte for byte. Pure: bytes in, values
//! out, no I/O.
//!
//! ```text
//! TOTALSIZE i32 | MAGICCODE i32 | BODYCRC i32 | QUEUEID i32 | FLAG i32 | QUEUEOFFSET i64 |
//! PHYSICALOFFSET i64 | SYSFLAG i32 | BORNTIMESTAMP i64 | BORNHOST 4+4 (16+4 if SYSFLAG&0x10) |
//! STORETIMESTAMP i64 | STOREHOST 4+4 (16+4 if SYSFLAG&0x20) | RECONSUMETIMES i32 |
//! PREPAREDTRANSACTIONOFFSET i64 | BODYLENGTH i32 + body | TOPICLENGTH u8 (u16 for magic v2) +
//! topic | PROPERTIESLENGTH i16 + properties
//! ```
//! All big-endian. Properties are `name\u{1}value\u{2}` pairs. Records written by duolog end with
//! the RocketMQ 5 whole-record checksum property `__CRC32#\u{1}dddddddddd\u{2}` (CRC-32 of every
//! byte before it, masked with 0x7FFFFFFF, as ten decimal digits), so a torn header is caught and
//! not only a torn body.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Magic code of a message record (v1: one-byte topic length).
pub const MESSAGE_MAGIC: i32 = 0xDAA3_20A7_u32 as i32;
/// Magic code of a message record (v2: two-byte topic length).
pub const MESSAGE_MAGIC_V2: i32 = 0xDAA3_20AB_u32 as i32;
/// Magic code of the blank record that fills the end of a commit-log file.
pub const BLANK_MAGIC: i32 = 0xCBD4_3194_u32 as i32;
/// Bytes a blank record writes (TOTALSIZE + MAGICCODE); a file always keeps room for one.
pub const BLANK_LEN: usize = 8;
/// SYSFLAG bit: born host is IPv6.
pub const SYSFLAG_BORNHOST_V6: i32 = 0x10;
/// SYSFLAG bit: store host is IPv6.
pub const SYSFLAG_STOREHOST_V6: i32 = 0x20;
/// SYSFLAG bit (duolog's, unused by RocketMQ): the record belongs to an idempotent (or
/// transactional) producer's batch, so its `__PID`/`__EPOCH`/`__SEQ`/`__LAST` properties are
/// the engine's producer fields. Without it those names are a plain record's own properties
/// (written before the names were reserved) and recovery never reads them as a batch.
pub const SYSFLAG_PRODUCER_BATCH: i32 = 0x1000;
/// SYSFLAG transaction type mask and values.
pub const SYSFLAG_TRANSACTION_MASK: i32 = 0x0C;
/// Half (prepared) transactional message.
pub const SYSFLAG_TRANSACTION_PREPARED: i32 = 0x04;
/// Commit marker of a transaction.
pub const SYSFLAG_TRANSACTION_COMMIT: i32 = 0x08;
/// Rollback marker of a transaction.
pub const SYSFLAG_TRANSACTION_ROLLBACK: i32 = 0x0C;
/// Name of the whole-record checksum property.
pub const CRC_PROPERTY: &str = "__CRC32#";
/// Bytes the checksum property takes: name, separator, 10 digits, separator.
pub const CRC_PROPERTY_LEN: usize = CRC_PROPERTY.len() + 1 + 10 + 1;
/// Separator between a property's name and value.
pub const NAME_VALUE_SEPARATOR: u8 = 1;
/// Separator after each property.
pub const PROPERTY_SEPARATOR: u8 = 2;

/// Offset of QUEUEOFFSET in a record.
pub const QUEUE_OFFSET_POS: usize = 20;
/// Offset of PHYSICALOFFSET in a record.
pub const PHYSICAL_OFFSET_POS: usize = 28;
const SYSFLAG_POS: usize = 36;
const BORN_TS_POS: usize = 40;
const BORN_HOST_POS: usize = 48;

/// Every header field of a message record except the variable parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Partition (RocketMQ queue id).
    pub queue_id: i32,
    /// User flag.
    pub flag: i32,
    /// Offset within the partition.
    pub queue_offset: i64,
    /// Position in the commit log.
    pub physical_offset: i64,
    /// System flags (host kinds, transaction type, …). Host bits are derived on encode.
    pub sys_flag: i32,
    /// Creation timestamp (ms).
    pub born_timestamp: i64,
    /// Producer address.
    pub born_host: SocketAddr,
    /// Append timestamp (ms).
    pub store_timestamp: i64,
    /// Store address.
    pub store_host: SocketAddr,
    /// Delivery attempts so far.
    pub reconsume_times: i32,
    /// Commit log position of the half message (transaction markers).
    pub prepared_transaction_offset: i64,
}

impl RecordHeader {
    /// A header with duolog's defaults: loopback hosts, zero counters.
    pub fn local(queue_id: i32, born_timestamp: i64) -> Self {
        let local = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        RecordHeader {
            queue_id,
            flag: 0,
            queue_offset: 0,
            physical_offset: 0,
            sys_flag: 0,
            born_timestamp,
            born_host: local,
            store_timestamp: 0,
            store_host: local,
            reconsume_times: 0,
            prepared_transaction_offset: 0,
        }
    }

    fn sys_flag_with_hosts(&self) -> i32 {
        let mut f = self.sys_flag & !(SYSFLAG_BORNHOST_V6 | SYSFLAG_STOREHOST_V6);
        if self.born_host.is_ipv6() {
            f |= SYSFLAG_BORNHOST_V6;
        }
        if self.store_host.is_ipv6() {
            f |= SYSFLAG_STOREHOST_V6;
        }
        f
    }
}

fn host_len(addr: &SocketAddr) -> usize {
    if addr.is_ipv6() { 20 } else { 8 }
}

/// Size of the fixed part (through BODYLENGTH's predecessor) for the given hosts.
fn header_len(born: &SocketAddr, store: &SocketAddr) -> usize {
    BORN_HOST_POS + host_len(born) + 8 + host_len(store) + 4 + 8
}

/// Total encoded length of a record.
pub fn encoded_len(
    header: &RecordHeader,
    body_len: usize,
    topic_len: usize,
    properties_len: usize,
) -> usize {
    header_len(&header.born_host, &header.store_host)
        + 4
        + body_len
        + 1
        + topic_len
        + 2
        + properties_len
}

/// Offset of STORETIMESTAMP in a record whose SYSFLAG is `sys_flag`.
pub fn store_timestamp_pos(sys_flag: i32) -> usize {
    BORN_HOST_POS
        + if sys_flag & SYSFLAG_BORNHOST_V6 != 0 {
            20
        } else {
            8
        }
}

/// RocketMQ's body checksum: CRC-32 (IEEE) masked to 31 bits; 0 for an empty body.
pub fn body_crc(body: &[u8]) -> i32 {
    if body.is_empty() {
        0
    } else {
        (crc32fast::hash(body) & 0x7FFF_FFFF) as i32
    }
}

/// Java's `String.hashCode` over UTF-16 code units, sign-extended: RocketMQ's tag hash.
pub fn tag_hash(tags: &str) -> i64 {
    let mut h: i32 = 0;
    for unit in tags.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    i64::from(h)
}

#[inline(always)]
fn put_host(put: &mut impl FnMut(&[u8]), addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => put(&ip.octets()),
        IpAddr::V6(ip) => put(&ip.octets()),
    }
    put(&i32::from(addr.port()).to_be_bytes());
}

/// Appends one encoded message record to `out`. `properties` is the raw property string; when
/// `with_record_crc` the checksum property is appended after it and filled in (see
/// [`fill_record_crc`]). The caller has checked lengths (`topic` ≤ 255 bytes, properties fit an
/// i16, body fits an i32).
pub fn encode(
    out: &mut Vec<u8>,
    header: &RecordHeader,
    body: &[u8],
    topic: &[u8],
    properties: &[u8],
    with_record_crc: bool,
) {
    let start = out.len();
    encode_unsealed(out, header, body, topic, properties, with_record_crc);
    if with_record_crc {
        fill_record_crc(&mut out[start..]);
    }
}

/// Like [`encode`], but leaves the checksum digits as zeros for [`stamp`] to fill in.
pub fn encode_unsealed(
    out: &mut Vec<u8>,
    header: &RecordHeader,
    body: &[u8],
    topic: &[u8],
    properties: &[u8],
    with_record_crc: bool,
) {
    let props_len = properties.len() + if with_record_crc { CRC_PROPERTY_LEN } else { 0 };
    let total = encoded_len(header, body.len(), topic.len(), props_len);
    let start = out.len();
    out.reserve(total);
    // The fixed part is assembled on the stack and copied in one piece: this runs once per
    // appended message, and a capacity check per field showed in profiles.
    let mut fixed = [0u8; MAX_FIXED_LEN];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        fixed[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&(total as i32).to_be_bytes());
    put(&MESSAGE_MAGIC.to_be_bytes());
    put(&body_crc(body).to_be_bytes());
    put(&header.queue_id.to_be_bytes());
    put(&header.flag.to_be_bytes());
    put(&header.queue_offset.to_be_bytes());
    put(&header.physical_offset.to_be_bytes());
    put(&header.sys_flag_with_hosts().to_be_bytes());
    put(&header.born_timestamp.to_be_bytes());
    put_host(&mut put, &header.born_host);
    put(&header.store_timestamp.to_be_bytes());
    put_host(&mut put, &header.store_host);
    put(&header.reconsume_times.to_be_bytes());
    put(&header.prepared_transaction_offset.to_be_bytes());
    put(&(body.len() as i32).to_be_bytes());
    out.extend_from_slice(&fixed[..at]);
    out.extend_from_slice(body);
    out.push(topic.len() as u8);
    out.extend_from_slice(topic);
    out.extend_from_slice(&(props_len as i16).to_be_bytes());
    out.extend_from_slice(properties);
    if with_record_crc {
        out.extend_from_slice(CRC_TEMPLATE);
    }
    debug_assert_eq!(out.len() - start, total);
}

/// The fixed part of a record (through BODYLENGTH) with both hosts IPv6: the longest.
const MAX_FIXED_LEN: usize = BORN_HOST_POS + 20 + 8 + 20 + 4 + 8 + 4;

/// The checksum property as [`encode_unsealed`] writes it, digits left as zeros.
const CRC_TEMPLATE: &[u8; CRC_PROPERTY_LEN] = b"__CRC32#\x010000000000\x02";

/// Records at least this long get the CRC of their stable tail computed outside the append lock
/// and combined in; shorter ones are hashed whole inside it (cheaper than a combine).
pub const SPLIT_CRC_MIN_LEN: usize = 2048;

/// CRC state of the part of a record after STORETIMESTAMP and before the checksum digits: the
/// part that does not change when the record is stamped, so it can be hashed outside a lock.
/// `None` for records shorter than [`SPLIT_CRC_MIN_LEN`].
pub fn crc_of_stable_tail(record: &[u8]) -> Option<crc32fast::Hasher> {
    if record.len() < SPLIT_CRC_MIN_LEN {
        return None;
    }
    let sys_flag = read_i32(record, SYSFLAG_POS);
    let from = store_timestamp_pos(sys_flag) + 8;
    let mut h = crc32fast::Hasher::new();
    h.update(&record[from..record.len() - CRC_PROPERTY_LEN]);
    Some(h)
}

/// Stamps the fields only known at append time and fills the checksum property, reusing the
/// tail state from [`crc_of_stable_tail`] when there is one.
pub fn stamp(
    record: &mut [u8],
    queue_offset: i64,
    physical_offset: i64,
    store_timestamp: i64,
    tail: Option<&crc32fast::Hasher>,
) {
    record[QUEUE_OFFSET_POS..QUEUE_OFFSET_POS + 8].copy_from_slice(&queue_offset.to_be_bytes());
    record[PHYSICAL_OFFSET_POS..PHYSICAL_OFFSET_POS + 8]
        .copy_from_slice(&physical_offset.to_be_bytes());
    let ts_pos = store_timestamp_pos(read_i32(record, SYSFLAG_POS));
    record[ts_pos..ts_pos + 8].copy_from_slice(&store_timestamp.to_be_bytes());
    let crc = match tail {
        Some(tail) => {
            let mut h = crc32fast::Hasher::new();
            h.update(&record[..ts_pos + 8]);
            h.combine(tail);
            h.finalize()
        }
        None => crc32fast::hash(&record[..record.len() - CRC_PROPERTY_LEN]),
    };
    write_crc_digits(record, crc & 0x7FFF_FFFF);
}

/// Computes and writes the checksum property of a complete record that ends with it.
pub fn fill_record_crc(record: &mut [u8]) {
    let crc = crc32fast::hash(&record[..record.len() - CRC_PROPERTY_LEN]) & 0x7FFF_FFFF;
    write_crc_digits(record, crc);
}

fn write_crc_digits(record: &mut [u8], crc: u32) {
    let n = record.len();
    let digits = &mut record[n - 11..n - 1];
    let mut v = crc;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Writes the 8-byte blank record that closes a file with `remaining` bytes left.
pub fn encode_blank(remaining: usize) -> [u8; BLANK_LEN] {
    let mut b = [0u8; BLANK_LEN];
    b[..4].copy_from_slice(&(remaining as i32).to_be_bytes());
    b[4..].copy_from_slice(&BLANK_MAGIC.to_be_bytes());
    b
}

/// A decoded message record borrowing from the buffer it was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedRecord<'a> {
    /// TOTALSIZE.
    pub total_size: usize,
    /// MAGICCODE (v1 or v2).
    pub magic: i32,
    /// BODYCRC as stored.
    pub body_crc: i32,
    /// The header fields.
    pub header: RecordHeader,
    /// Body bytes.
    pub body: &'a [u8],
    /// Topic bytes.
    pub topic: &'a [u8],
    /// Raw properties (checksum property included).
    pub properties: &'a [u8],
    /// Offset of the body within the record.
    pub body_pos: usize,
    /// Offset of the properties within the record.
    pub properties_pos: usize,
    /// Whether the record carries the whole-record checksum property (and it matched).
    pub has_record_crc: bool,
}

/// What sits at a position of the commit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A message record.
    Message(DecodedRecord<'a>),
    /// A blank record: the rest of the file (`size` bytes from here) holds no data.
    Blank {
        /// TOTALSIZE of the blank record (bytes left in the file).
        size: usize,
    },
}

/// Why bytes are not a valid record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// All zero: the end of written data in a preallocated file.
    Empty,
    /// Too few bytes for the length the record claims.
    Truncated,
    /// Anything else, with the failed check.
    Invalid(&'static str),
}

impl DecodeError {
    /// Human-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "no record (zero bytes)",
            DecodeError::Truncated => "record extends past the end of the file",
            DecodeError::Invalid(r) => r,
        }
    }
}

/// Checks to run while decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checks {
    /// Verify BODYCRC.
    pub body_crc: bool,
    /// Require the whole-record checksum property (records written by duolog carry it). When
    /// `false` it is still verified if present.
    pub require_record_crc: bool,
}

impl Checks {
    /// Every check, for records written by duolog: the whole-record checksum, which covers the
    /// body and its BODYCRC field, so a second pass over the body would add nothing.
    pub const FULL: Checks = Checks {
        body_crc: false,
        require_record_crc: true,
    };
    /// RocketMQ's own checks, for foreign files.
    pub const ROCKETMQ: Checks = Checks {
        body_crc: true,
        require_record_crc: false,
    };
}

#[inline(always)]
fn read_i32(b: &[u8], pos: usize) -> i32 {
    i32::from_be_bytes([b[pos], b[pos + 1], b[pos + 2], b[pos + 3]])
}

#[inline(always)]
fn read_i64(b: &[u8], pos: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[pos..pos + 8]);
    i64::from_be_bytes(a)
}

#[inline(always)]
fn read_host(b: &[u8], pos: usize, v6: bool) -> SocketAddr {
    if v6 {
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&b[pos..pos + 16]);
        SocketAddr::new(IpAddr::from(ip), read_i32(b, pos + 16) as u16)
    } else {
        let ip = [b[pos], b[pos + 1], b[pos + 2], b[pos + 3]];
        SocketAddr::new(IpAddr::from(ip), read_i32(b, pos + 4) as u16)
    }
}

/// Reads TOTALSIZE and MAGICCODE only. `None` if fewer than 8 bytes.
pub fn peek(buf: &[u8]) -> Option<(i32, i32)> {
    if buf.len() < 8 {
        None
    } else {
        Some((read_i32(buf, 0), read_i32(buf, 4)))
    }
}

/// QUEUEOFFSET and PHYSICALOFFSET of a message record, unchecked (`None` if too short or
/// negative): for scans whose records were checked when written.
pub fn peek_queue_and_physical(rec: &[u8]) -> Option<(u64, u64)> {
    if rec.len() < PHYSICAL_OFFSET_POS + 8 {
        return None;
    }
    let q = read_i64(rec, QUEUE_OFFSET_POS);
    let p = read_i64(rec, PHYSICAL_OFFSET_POS);
    (q >= 0 && p >= 0).then_some((q as u64, p as u64))
}

/// Decodes the record at the start of `buf` (which may run on past it). Never panics and never
/// allocates, whatever the bytes.
// Inlined into the read loop: its result (~150 bytes) was copied out through the stack for
// every record.
#[inline]
pub fn decode(buf: &[u8], checks: Checks) -> Result<Decoded<'_>, DecodeError> {
    let Some((total, magic)) = peek(buf) else {
        return Err(if buf.iter().all(|&b| b == 0) {
            DecodeError::Empty
        } else {
            DecodeError::Truncated
        });
    };
    if total == 0 && magic == 0 {
        return Err(DecodeError::Empty);
    }
    if magic == BLANK_MAGIC {
        if total < BLANK_LEN as i32 {
            return Err(DecodeError::Invalid("blank record shorter than 8 bytes"));
        }
        return Ok(Decoded::Blank {
            size: total as usize,
        });
    }
    if magic != MESSAGE_MAGIC && magic != MESSAGE_MAGIC_V2 {
        return Err(DecodeError::Invalid("bad magic code"));
    }
    if total < 0 {
        return Err(DecodeError::Invalid("negative record size"));
    }
    let total = total as usize;
    if total > buf.len() {
        return Err(DecodeError::Truncated);
    }
    let rec = &buf[..total];
    if total < SYSFLAG_POS + 4 {
        return Err(DecodeError::Invalid("record shorter than its header"));
    }
    let sys_flag = read_i32(rec, SYSFLAG_POS);
    let born_v6 = sys_flag & SYSFLAG_BORNHOST_V6 != 0;
    let store_v6 = sys_flag & SYSFLAG_STOREHOST_V6 != 0;
    let store_ts_pos = BORN_HOST_POS + if born_v6 { 20 } else { 8 };
    let store_host_pos = store_ts_pos + 8;
    let reconsume_pos = store_host_pos + if store_v6 { 20 } else { 8 };
    let body_len_pos = reconsume_pos + 12;
    if total < body_len_pos + 4 {
        return Err(DecodeError::Invalid("record shorter than its header"));
    }
    let body_len = read_i32(rec, body_len_pos);
    if body_len < 0 {
        return Err(DecodeError::Invalid("negative body length"));
    }
    let body_pos = body_len_pos + 4;
    let body_end = body_pos
        .checked_add(body_len as usize)
        .filter(|&e| e < total)
        .ok_or(DecodeError::Invalid("body length past the record"))?;
    let (topic_len, topic_pos) = if magic == MESSAGE_MAGIC {
        (usize::from(rec[body_end]), body_end + 1)
    } else {
        if body_end + 2 > total {
            return Err(DecodeError::Invalid("topic length past the record"));
        }
        (
            usize::from(u16::from_be_bytes([rec[body_end], rec[body_end + 1]])),
            body_end + 2,
        )
    };
    let props_len_pos = topic_pos + topic_len;
    if props_len_pos + 2 > total {
        return Err(DecodeError::Invalid("topic length past the record"));
    }
    let props_len = i16::from_be_bytes([rec[props_len_pos], rec[props_len_pos + 1]]);
    if props_len < 0 {
        return Err(DecodeError::Invalid("negative properties length"));
    }
    let props_pos = props_len_pos + 2;
    if props_pos + props_len as usize != total {
        return Err(DecodeError::Invalid(
            "field lengths do not add up to the record size",
        ));
    }
    let body = &rec[body_pos..body_end];
    let stored_body_crc = read_i32(rec, 8);
    if checks.body_crc && !body.is_empty() && stored_body_crc != body_crc(body) {
        return Err(DecodeError::Invalid("body checksum mismatch"));
    }
    let properties = &rec[props_pos..];
    let has_crc_prop = properties.len() >= CRC_PROPERTY_LEN
        && properties[properties.len() - CRC_PROPERTY_LEN..].starts_with(CRC_PROPERTY.as_bytes())
        && properties[properties.len() - 12] == NAME_VALUE_SEPARATOR
        && properties[properties.len() - 1] == PROPERTY_SEPARATOR;
    if has_crc_prop {
        let digits = &properties[properties.len() - 11..properties.len() - 1];
        let mut stored: u64 = 0;
        for &d in digits {
            if !d.is_ascii_digit() {
                return Err(DecodeError::Invalid("record checksum is not a number"));
            }
            stored = stored * 10 + u64::from(d - b'0');
        }
        let actual = crc32fast::hash(&rec[..total - CRC_PROPERTY_LEN]) & 0x7FFF_FFFF;
        if stored != u64::from(actual) {
            return Err(DecodeError::Invalid("record checksum mismatch"));
        }
    } else if checks.require_record_crc {
        return Err(DecodeError::Invalid("record checksum property missing"));
    }
    let header = RecordHeader {
        queue_id: read_i32(rec, 12),
        flag: read_i32(rec, 16),
        queue_offset: read_i64(rec, QUEUE_OFFSET_POS),
        physical_offset: read_i64(rec, PHYSICAL_OFFSET_POS),
        sys_flag,
        born_timestamp: read_i64(rec, BORN_TS_POS),
        born_host: read_host(rec, BORN_HOST_POS, born_v6),
        store_timestamp: read_i64(rec, store_ts_pos),
        store_host: read_host(rec, store_host_pos, store_v6),
        reconsume_times: read_i32(rec, reconsume_pos),
        prepared_transaction_offset: read_i64(rec, reconsume_pos + 4),
    };
    Ok(Decoded::Message(DecodedRecord {
        total_size: total,
        magic,
        body_crc: stored_body_crc,
        header,
        body,
        topic: &rec[topic_pos..topic_pos + topic_len],
        properties,
        body_pos,
        properties_pos: props_pos,
        has_record_crc: has_crc_prop,
    }))
}

/// Iterates `name\u{1}value\u{2}` pairs as bytes. Pairs that lack the name/value separator are
/// skipped.
pub fn iter_raw_properties(raw: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    raw.split(|&b| b == PROPERTY_SEPARATOR).filter_map(|pair| {
        let sep = pair.iter().position(|&b| b == NAME_VALUE_SEPARATOR)?;
        Some((&pair[..sep], &pair[sep + 1..]))
    })
}

/// Iterates `name\u{1}value\u{2}` pairs as text. Pairs that are not valid UTF-8 or lack the
/// name/value separator are skipped.
pub fn iter_properties(raw: &[u8]) -> impl Iterator<Item = (&str, &str)> {
    iter_raw_properties(raw).filter_map(|(name, value)| {
        Some((
            std::str::from_utf8(name).ok()?,
            std::str::from_utf8(value).ok()?,
        ))
    })
}

/// Appends one `name\u{1}value\u{2}` pair.
pub fn put_property(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.push(NAME_VALUE_SEPARATOR);
    out.extend_from_slice(value);
    out.push(PROPERTY_SEPARATOR);
}

/// Whether a property name or value can be stored (contains no separator byte).
pub fn is_storable_property_text(s: &[u8]) -> bool {
    !s.iter()
        .any(|&b| b == NAME_VALUE_SEPARATOR || b == PROPERTY_SEPARATOR)
}

/// Whether RocketMQ would dispatch a record of this sys flag to a consume queue: its prepared
/// (half) and rollback records are not. duolog dispatches every record it writes, markers and
/// prepared records included (see [`is_marker`]); this is RocketMQ's rule, for reading its logs.
pub fn is_dispatched(sys_flag: i32) -> bool {
    let t = transaction_type(sys_flag);
    t != SYSFLAG_TRANSACTION_PREPARED && t != SYSFLAG_TRANSACTION_ROLLBACK
}

/// The transaction type of a sys flag (`0`, or one of the `SYSFLAG_TRANSACTION_*` values).
pub fn transaction_type(sys_flag: i32) -> i32 {
    sys_flag & SYSFLAG_TRANSACTION_MASK
}

/// Whether a record of this sys flag is an end-transaction marker (commit or rollback).
/// Unlike RocketMQ, where prepared records live in a half topic and rollback records are not
/// dispatched, duolog dispatches every record to its partition's consume queue: a
/// transaction's records and its marker all take queue offsets.
pub fn is_marker(sys_flag: i32) -> bool {
    let t = transaction_type(sys_flag);
    t == SYSFLAG_TRANSACTION_COMMIT || t == SYSFLAG_TRANSACTION_ROLLBACK
}

/// The consume-queue tag hash of a marker. A Java `String.hashCode` is an `i32`, so no tag's
/// (sign-extended) hash equals it: a tagged read never reads a marker's record.
pub const MARKER_TAG_HASH: i64 = i64::MIN;

/// The tag hash a record's consume-queue unit carries: [`MARKER_TAG_HASH`] for a marker, else
/// the hash of its `TAGS` property (0 without one).
pub fn unit_tag_hash(sys_flag: i32, properties: &[u8]) -> i64 {
    if is_marker(sys_flag) {
        return MARKER_TAG_HASH;
    }
    iter_properties(properties)
        .find(|(k, _)| *k == "TAGS")
        .map_or(0, |(_, v)| tag_hash(v))
}

/// Bytes of a marker's body: Kafka's end-transaction marker value (version i16 = 0,
/// coordinator epoch i32), big-endian.
pub const MARKER_BODY_LEN: usize = 6;

/// A marker's body.
pub fn encode_marker_body(coordinator_epoch: i32) -> [u8; MARKER_BODY_LEN] {
    let mut b = [0u8; MARKER_BODY_LEN];
    b[2..].copy_from_slice(&coordinator_epoch.to_be_bytes());
    b
}

/// The coordinator epoch of a marker's body (`None` unless version 0 and 6 bytes).
pub fn decode_marker_body(body: &[u8]) -> Option<i32> {
    let b: &[u8; MARKER_BODY_LEN] = body.try_into().ok()?;
    (b[..2] == [0, 0]).then(|| i32::from_be_bytes([b[2], b[3], b[4], b[5]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(props: &[u8]) -> Vec<u8> {
        let mut h = RecordHeader::local(3, 1_700_000_000_000);
        h.queue_offset = 7;
        h.physical_offset = 4096;
        h.store_timestamp = 1_700_000_000_500;
        let mut out = Vec::new();
        encode(&mut out, &h, b"hello", b"TopicA", props, true);
        out
    }

    #[test]
    fn round_trip_with_record_crc() {
        let rec = sample(b"TAGS\x01TagA\x02");
        let Ok(Decoded::Message(d)) = decode(&rec, Checks::FULL) else {
            panic!("decode failed")
        };
        assert_eq!(d.total_size, rec.len());
        assert_eq!(d.header.queue_id, 3);
        assert_eq!(d.header.queue_offset, 7);
        assert_eq!(d.body, b"hello");
        assert_eq!(d.topic, b"TopicA");
        assert!(d.has_record_crc);
        let props: Vec<_> = iter_properties(d.properties).collect();
        assert_eq!(props[0], ("TAGS", "TagA"));
        assert_eq!(props[1].0, CRC_PROPERTY);
    }

    #[test]
    fn stamping_matches_a_fresh_encode() {
        for body_len in [5usize, 100, SPLIT_CRC_MIN_LEN, 10_000] {
            let body = vec![b'b'; body_len];
            let mut rec = Vec::new();
            let header = RecordHeader::local(3, 1_700_000_000_000);
            encode_unsealed(&mut rec, &header, &body, b"TopicA", b"", true);
            let tail = crc_of_stable_tail(&rec);
            assert_eq!(tail.is_some(), rec.len() >= SPLIT_CRC_MIN_LEN);
            stamp(&mut rec, 99, 123_456, 1_800_000_000_000, tail.as_ref());
            let mut h = header;
            h.queue_offset = 99;
            h.physical_offset = 123_456;
            h.store_timestamp = 1_800_000_000_000;
            let mut fresh = Vec::new();
            encode(&mut fresh, &h, &body, b"TopicA", b"", true);
            assert_eq!(rec, fresh, "body of {body_len}");
            assert!(decode(&rec, Checks::FULL).is_ok());
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let rec = sample(b"k\x01v\x02");
        for byte in 0..rec.len() {
            for bit in 0..8 {
                let mut bad = rec.clone();
                bad[byte] ^= 1 << bit;
                match decode(&bad, Checks::FULL) {
                    Ok(Decoded::Message(d)) => panic!("flip at {byte}:{bit} accepted: {d:?}"),
                    Ok(Decoded::Blank { .. }) | Err(_) => {}
                }
            }
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let rec = sample(b"");
        for len in 0..rec.len() {
            assert!(
                decode(&rec[..len], Checks::FULL).is_err(),
                "truncated to {len}"
            );
        }
    }

    #[test]
    fn tag_hash_is_java_string_hash_code() {
        assert_eq!(tag_hash("TagA"), 2598919);
        assert_eq!(tag_hash(""), 0);
        assert_eq!(tag_hash("标签🚀x"), -178739394);
    }

    #[test]
    fn marker_body_is_kafkas_marker_value() {
        let b = encode_marker_body(-3);
        assert_eq!(b, [0, 0, 0xFF, 0xFF, 0xFF, 0xFD]);
        assert_eq!(decode_marker_body(&b), Some(-3));
        assert_eq!(decode_marker_body(&[0, 1, 0, 0, 0, 0]), None);
        assert_eq!(decode_marker_body(&b[..5]), None);
        assert!(is_marker(SYSFLAG_TRANSACTION_COMMIT | SYSFLAG_BORNHOST_V6));
        assert!(is_marker(SYSFLAG_TRANSACTION_ROLLBACK));
        assert!(!is_marker(SYSFLAG_TRANSACTION_PREPARED));
        assert!(!is_marker(0));
    }

    #[test]
    fn blank_record() {
        let b = encode_blank(1114);
        assert_eq!(decode(&b, Checks::FULL), Ok(Decoded::Blank { size: 1114 }));
        assert_eq!(decode(&[0u8; 16], Checks::FULL), Err(DecodeError::Empty));
    }
}
