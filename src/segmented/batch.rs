//! Kafka RecordBatch v2 (magic 2), byte for byte. Pure: bytes in, values out, no I/O.
//!
//! ```text
//! 0  baseOffset i64            35 maxTimestamp i64
//! 8  batchLength i32           43 producerId i64
//! 12 partitionLeaderEpoch i32  51 producerEpoch i16
//! 16 magic i8 = 2              53 baseSequence i32
//! 17 crc u32 (CRC-32C of 21..) 57 recordCount i32
//! 21 attributes i16            61 records
//! 23 lastOffsetDelta i32
//! 27 baseTimestamp i64
//!
//! record: length varint | attributes i8 | timestampDelta varlong | offsetDelta varint |
//!         keyLength varint (-1 = null) | key | valueLength varint (-1 = null) | value |
//!         headerCount varint | { keyLength varint | key | valueLength varint | value }*
//! ```
//! Varints are zig-zag encoded LEB128, as in Kafka.

/// Size of the batch header.
pub const HEADER_LEN: usize = 61;
/// Bytes before `batchLength`'s payload starts (baseOffset + batchLength).
pub const LOG_OVERHEAD: usize = 12;
/// The only magic written and read.
pub const MAGIC: i8 = 2;
/// Attribute bit: timestamps are LogAppendTime (the batch's maxTimestamp), not CreateTime.
pub const ATTR_LOG_APPEND_TIME: i16 = 0x08;
/// Attribute bit: the batch is part of a transaction.
pub const ATTR_TRANSACTIONAL: i16 = 0x10;
/// Attribute bit: the batch holds a control record (transaction marker).
pub const ATTR_CONTROL: i16 = 0x20;
/// Attribute bits of the compression codec (only 0, none, is written or read).
pub const ATTR_COMPRESSION_MASK: i16 = 0x07;

/// The fields of a batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Bytes after the `batchLength` field.
    pub batch_length: i32,
    /// Leader epoch (0 for duolog).
    pub partition_leader_epoch: i32,
    /// Magic (2).
    pub magic: i8,
    /// CRC-32C as stored.
    pub crc: u32,
    /// Attributes.
    pub attributes: i16,
    /// Offset of the last record minus the base offset.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest timestamp (with LogAppendTime: the append time).
    pub max_timestamp: i64,
    /// Idempotent producer id (-1: none).
    pub producer_id: i64,
    /// Producer epoch (-1: none).
    pub producer_epoch: i16,
    /// Sequence of the first record (-1: none).
    pub base_sequence: i32,
    /// Number of records.
    pub record_count: i32,
}

impl BatchHeader {
    /// Total bytes of the batch.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }
    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }
    /// Whether the batch is transactional.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }
    /// Whether the batch holds a control record.
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

/// Producer identity of a batch; all -1 for a plain producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerInfo {
    /// Producer id.
    pub id: i64,
    /// Producer epoch.
    pub epoch: i16,
    /// Sequence of the first record.
    pub base_sequence: i32,
}

impl ProducerInfo {
    /// No idempotent producer.
    pub const NONE: ProducerInfo = ProducerInfo {
        id: -1,
        epoch: -1,
        base_sequence: -1,
    };
}

/// One record to encode.
#[derive(Clone, Copy, Debug)]
pub struct RecordInput<'a> {
    /// Record timestamp.
    pub timestamp: i64,
    /// Key, `None` for null.
    pub key: Option<&'a [u8]>,
    /// Value, `None` for null (a tombstone).
    pub value: Option<&'a [u8]>,
    /// Headers (key, value; `None` value for null).
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
}

/// Appends a zig-zag varint.
pub fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_varlong(out, i64::from(v));
}

/// Appends a zig-zag varlong.
pub fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Bytes a zig-zag varlong takes.
pub fn varlong_len(v: i64) -> usize {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n
}

/// Reads a zig-zag varlong at `*pos`, advancing it. `None` if truncated or longer than 10 bytes.
#[inline(always)]
pub fn get_varlong(b: &[u8], pos: &mut usize) -> Option<i64> {
    let mut z: u64 = 0;
    for i in 0..10 {
        let byte = *b.get(*pos)?;
        *pos += 1;
        z |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    None
}

/// Reads a zig-zag varint (must fit an i32).
#[inline(always)]
pub fn get_varint(b: &[u8], pos: &mut usize) -> Option<i32> {
    i32::try_from(get_varlong(b, pos)?).ok()
}

fn bytes_len(v: Option<&[u8]>) -> usize {
    match v {
        None => varlong_len(-1),
        Some(b) => varlong_len(b.len() as i64) + b.len(),
    }
}

fn put_bytes(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i32);
            out.extend_from_slice(b);
        }
    }
}

/// Length of a record's body (what its length varint says).
fn record_body_len(r: &RecordInput<'_>, timestamp_delta: i64, offset_delta: i32) -> usize {
    let mut n = 1 + varlong_len(timestamp_delta) + varlong_len(i64::from(offset_delta));
    n += bytes_len(r.key) + bytes_len(r.value);
    n += varlong_len(r.headers.len() as i64);
    for (k, v) in r.headers {
        n += varlong_len(k.len() as i64) + k.len() + bytes_len(*v);
    }
    n
}

/// Appends one record to `out`.
pub fn put_record(out: &mut Vec<u8>, r: &RecordInput<'_>, timestamp_delta: i64, offset_delta: i32) {
    put_record_parts(
        out,
        timestamp_delta,
        offset_delta,
        r.key,
        r.value,
        r.headers.iter().copied(),
    );
}

/// Appends one record whose headers come from an iterator (no header slice to build).
pub fn put_record_parts<'h, I>(
    out: &mut Vec<u8>,
    timestamp_delta: i64,
    offset_delta: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: I,
) where
    I: Iterator<Item = (&'h [u8], Option<&'h [u8]>)> + Clone,
{
    let mut body = 1 + varlong_len(timestamp_delta) + varlong_len(i64::from(offset_delta));
    body += bytes_len(key) + bytes_len(value);
    let mut count = 0usize;
    for (k, v) in headers.clone() {
        body += varlong_len(k.len() as i64) + k.len() + bytes_len(v);
        count += 1;
    }
    body += varlong_len(count as i64);
    put_varint(out, body as i32);
    out.push(0);
    put_varlong(out, timestamp_delta);
    put_varint(out, offset_delta);
    put_bytes(out, key);
    put_bytes(out, value);
    put_varint(out, count as i32);
    for (k, v) in headers {
        put_varint(out, k.len() as i32);
        out.extend_from_slice(k);
        put_bytes(out, v);
    }
}

/// Encoded size of one record, length prefix included.
pub fn record_len(r: &RecordInput<'_>, timestamp_delta: i64, offset_delta: i32) -> usize {
    let body = record_body_len(r, timestamp_delta, offset_delta);
    varlong_len(body as i64) + body
}

/// Writes a batch header with a zero CRC at the start of `out[start..]` (61 bytes reserved).
pub fn begin_batch(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.resize(start + HEADER_LEN, 0);
    start
}

/// Fills the header of the batch that starts at `start` and runs to the end of `out`, then its
/// CRC.
pub fn finish_batch(out: &mut [u8], start: usize, h: &BatchHeader) {
    let b = &mut out[start..];
    let total = b.len();
    b[0..8].copy_from_slice(&h.base_offset.to_be_bytes());
    b[8..12].copy_from_slice(&((total - LOG_OVERHEAD) as i32).to_be_bytes());
    b[12..16].copy_from_slice(&h.partition_leader_epoch.to_be_bytes());
    b[16] = MAGIC as u8;
    b[21..23].copy_from_slice(&h.attributes.to_be_bytes());
    b[23..27].copy_from_slice(&h.last_offset_delta.to_be_bytes());
    b[27..35].copy_from_slice(&h.base_timestamp.to_be_bytes());
    b[35..43].copy_from_slice(&h.max_timestamp.to_be_bytes());
    b[43..51].copy_from_slice(&h.producer_id.to_be_bytes());
    b[51..53].copy_from_slice(&h.producer_epoch.to_be_bytes());
    b[53..57].copy_from_slice(&h.base_sequence.to_be_bytes());
    b[57..61].copy_from_slice(&h.record_count.to_be_bytes());
    restamp(b, h.base_offset, h.max_timestamp);
}

/// Rewrites the base offset and max timestamp of an encoded batch and recomputes its CRC (the
/// CRC covers attributes onward, so the base offset is outside it).
pub fn restamp(batch: &mut [u8], base_offset: i64, max_timestamp: i64) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    batch[35..43].copy_from_slice(&max_timestamp.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// [`restamp`] for a batch whose CRC is valid (one [`finish_batch`] made): the base offset lies
/// outside the CRC, so the CRC is recomputed only when the max timestamp changes. An append
/// stamps with the time its batch was encoded at, unless the partition's clock is ahead, so
/// this spares the append path a second CRC over the whole batch.
pub fn restamp_checked(batch: &mut [u8], base_offset: i64, max_timestamp: i64) {
    if batch[35..43] == max_timestamp.to_be_bytes() {
        batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
    } else {
        restamp(batch, base_offset, max_timestamp);
    }
}

/// Encodes a whole batch as Kafka's builder does: the first record's timestamp is the base,
/// `max_timestamp` is the largest (or, with [`ATTR_LOG_APPEND_TIME`], `log_append_time`).
pub fn encode_batch(
    out: &mut Vec<u8>,
    base_offset: i64,
    records: &[RecordInput<'_>],
    attributes: i16,
    producer: ProducerInfo,
    log_append_time: Option<i64>,
) {
    let base_ts = records.first().map_or(-1, |r| r.timestamp);
    let start = begin_batch(out);
    let mut max_ts = i64::MIN;
    for (i, r) in records.iter().enumerate() {
        put_record(out, r, r.timestamp - base_ts, i as i32);
        max_ts = max_ts.max(r.timestamp);
    }
    let (attributes, max_ts) = match log_append_time {
        Some(t) => (attributes | ATTR_LOG_APPEND_TIME, t),
        None => (
            attributes & !ATTR_LOG_APPEND_TIME,
            if records.is_empty() { -1 } else { max_ts },
        ),
    };
    let h = BatchHeader {
        base_offset,
        batch_length: 0,
        partition_leader_epoch: 0,
        magic: MAGIC,
        crc: 0,
        attributes,
        last_offset_delta: records.len().saturating_sub(1) as i32,
        base_timestamp: base_ts,
        max_timestamp: max_ts,
        producer_id: producer.id,
        producer_epoch: producer.epoch,
        base_sequence: producer.base_sequence,
        record_count: records.len() as i32,
    };
    finish_batch(out, start, &h);
}

/// Kafka's control record type of an end-transaction marker (the key's second field).
const CONTROL_ABORT: i16 = 0;
const CONTROL_COMMIT: i16 = 1;

/// An end-transaction marker as a control batch holds it (Kafka's `EndTransactionMarker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndTxnMarker {
    /// Commit or abort.
    pub marker: crate::store::TxnMarker,
    /// Epoch of the coordinator that wrote it.
    pub coordinator_epoch: i32,
}

/// Encodes the control batch of an end-transaction marker as a Kafka broker writes it:
/// attributes `0x30` (transactional | control, CreateTime), base sequence −1, the marker's
/// producer id and epoch, and one record whose key is `version i16 = 0 | type i16` (ABORT 0,
/// COMMIT 1) and value `version i16 = 0 | coordinatorEpoch i32`.
pub fn encode_end_txn_marker(
    out: &mut Vec<u8>,
    base_offset: i64,
    producer_id: i64,
    producer_epoch: i16,
    m: EndTxnMarker,
    timestamp: i64,
) {
    let kind = match m.marker {
        crate::store::TxnMarker::Commit => CONTROL_COMMIT,
        crate::store::TxnMarker::Abort => CONTROL_ABORT,
    };
    let mut key = [0u8; 4];
    key[2..].copy_from_slice(&kind.to_be_bytes());
    let mut value = [0u8; 6];
    value[2..].copy_from_slice(&m.coordinator_epoch.to_be_bytes());
    let record = RecordInput {
        timestamp,
        key: Some(&key),
        value: Some(&value),
        headers: &[],
    };
    let producer = ProducerInfo {
        id: producer_id,
        epoch: producer_epoch,
        base_sequence: -1,
    };
    encode_batch(
        out,
        base_offset,
        &[record],
        ATTR_TRANSACTIONAL | ATTR_CONTROL,
        producer,
        None,
    );
}

/// The end-transaction marker of a checked control batch `b` (exactly the batch's bytes).
/// Only the first record is read: Kafka's control batches hold one.
pub fn end_txn_marker(b: &[u8], h: &BatchHeader) -> Result<EndTxnMarker, BatchError> {
    if !h.is_control() {
        return Err(BatchError::Invalid("not a control batch"));
    }
    let r = records(b, h)
        .next()
        .ok_or(BatchError::Invalid("control batch without a record"))??;
    let key = r
        .key
        .map(|k| &b[k])
        .filter(|k| k.len() >= 4)
        .ok_or(BatchError::Invalid(
            "control record key shorter than 4 bytes",
        ))?;
    let marker = match i16_at(key, 2) {
        CONTROL_ABORT => crate::store::TxnMarker::Abort,
        CONTROL_COMMIT => crate::store::TxnMarker::Commit,
        _ => {
            return Err(BatchError::Invalid(
                "control record is no transaction marker",
            ));
        }
    };
    let value = r
        .value
        .map(|v| &b[v])
        .filter(|v| v.len() >= 6)
        .ok_or(BatchError::Invalid(
            "transaction marker value shorter than 6 bytes",
        ))?;
    Ok(EndTxnMarker {
        marker,
        coordinator_epoch: i32_at(value, 2),
    })
}

/// Why bytes are not a valid batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than a header, or than the length the header claims.
    Truncated,
    /// All-zero header: no batch here.
    Empty,
    /// A failed check.
    Invalid(&'static str),
}

impl BatchError {
    /// Human-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            BatchError::Truncated => "batch extends past the end of the data",
            BatchError::Empty => "no batch (zero bytes)",
            BatchError::Invalid(r) => r,
        }
    }
}

fn i16_at(b: &[u8], p: usize) -> i16 {
    i16::from_be_bytes([b[p], b[p + 1]])
}
fn i32_at(b: &[u8], p: usize) -> i32 {
    i32::from_be_bytes([b[p], b[p + 1], b[p + 2], b[p + 3]])
}
fn i64_at(b: &[u8], p: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[p..p + 8]);
    i64::from_be_bytes(a)
}

/// Parses a header (no CRC check; `buf` needs at least [`HEADER_LEN`] bytes).
pub fn parse_header(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    if buf.len() < HEADER_LEN {
        return Err(if buf.iter().all(|&b| b == 0) {
            BatchError::Empty
        } else {
            BatchError::Truncated
        });
    }
    if buf[..HEADER_LEN].iter().all(|&b| b == 0) {
        return Err(BatchError::Empty);
    }
    let h = BatchHeader {
        base_offset: i64_at(buf, 0),
        batch_length: i32_at(buf, 8),
        partition_leader_epoch: i32_at(buf, 12),
        magic: buf[16] as i8,
        crc: u32::from_be_bytes([buf[17], buf[18], buf[19], buf[20]]),
        attributes: i16_at(buf, 21),
        last_offset_delta: i32_at(buf, 23),
        base_timestamp: i64_at(buf, 27),
        max_timestamp: i64_at(buf, 35),
        producer_id: i64_at(buf, 43),
        producer_epoch: i16_at(buf, 51),
        base_sequence: i32_at(buf, 53),
        record_count: i32_at(buf, 57),
    };
    if h.magic != MAGIC {
        return Err(BatchError::Invalid(
            "unsupported magic (only RecordBatch v2 is read)",
        ));
    }
    if (h.batch_length as i64) < (HEADER_LEN - LOG_OVERHEAD) as i64 {
        return Err(BatchError::Invalid("batch length shorter than a header"));
    }
    if h.base_offset < 0 || h.last_offset_delta < 0 || h.record_count < 0 {
        return Err(BatchError::Invalid(
            "negative offset, offset delta or record count",
        ));
    }
    if h.attributes & ATTR_COMPRESSION_MASK != 0 {
        return Err(BatchError::Invalid("compressed batches are not supported"));
    }
    Ok(h)
}

/// Parses and checks a whole batch at the start of `buf`: header, CRC-32C, and that the records
/// parse exactly to the end with offset deltas inside the batch.
pub fn check_batch(buf: &[u8]) -> Result<BatchHeader, BatchError> {
    let h = parse_header(buf)?;
    let total = h.total_len();
    if total > buf.len() {
        return Err(BatchError::Truncated);
    }
    let b = &buf[..total];
    if crc32c::crc32c(&b[21..]) != h.crc {
        return Err(BatchError::Invalid("batch CRC-32C mismatch"));
    }
    let mut n = 0;
    for r in records(b, &h) {
        let r = r?;
        if r.offset_delta > h.last_offset_delta {
            return Err(BatchError::Invalid(
                "record offset delta past the batch's last offset",
            ));
        }
        n += 1;
    }
    if n != h.record_count {
        return Err(BatchError::Invalid(
            "record count does not match the records",
        ));
    }
    Ok(h)
}

/// One record decoded from a batch; byte fields are ranges into the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordView {
    /// Start of the record (its length varint) in the batch.
    pub start: usize,
    /// Total bytes of the record, length varint included.
    pub len: usize,
    /// Timestamp delta from the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Offset delta from the batch's base offset.
    pub offset_delta: i32,
    /// Key range, `None` for a null key.
    pub key: Option<std::ops::Range<usize>>,
    /// Value range, `None` for a null value.
    pub value: Option<std::ops::Range<usize>>,
    /// Header count.
    pub header_count: u32,
    /// Range of the encoded headers.
    pub headers: std::ops::Range<usize>,
}

#[inline(always)]
fn get_bytes(
    b: &[u8],
    pos: &mut usize,
    end: usize,
) -> Result<Option<std::ops::Range<usize>>, BatchError> {
    let len = get_varint(b, pos).ok_or(BatchError::Invalid("bad varint"))?;
    if len < 0 {
        return Ok(None);
    }
    let s = *pos;
    let e = s
        .checked_add(len as usize)
        .filter(|&e| e <= end)
        .ok_or(BatchError::Invalid("field runs past its record"))?;
    *pos = e;
    Ok(Some(s..e))
}

/// Iterates the records of a checked batch `b` (exactly the batch's bytes).
pub fn records<'a>(
    b: &'a [u8],
    h: &BatchHeader,
) -> impl Iterator<Item = Result<RecordView, BatchError>> + 'a {
    let mut pos = HEADER_LEN;
    let mut left = h.record_count.max(0);
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || left == 0 {
            if !failed && left == 0 && pos != b.len() {
                failed = true;
                return Some(Err(BatchError::Invalid("bytes after the last record")));
            }
            return None;
        }
        left -= 1;
        let r = parse_record(b, &mut pos);
        if r.is_err() {
            failed = true;
        }
        Some(r)
    })
}

/// Parses the record at `*pos` of batch `b`, advancing `pos` past it. Always inlined, with
/// the varint readers: a sequential read parses one per record (issue 16).
#[inline(always)]
pub fn parse_record(b: &[u8], pos: &mut usize) -> Result<RecordView, BatchError> {
    let start = *pos;
    let body = get_varint(b, pos).ok_or(BatchError::Invalid("bad record length"))?;
    if body < 0 {
        return Err(BatchError::Invalid("negative record length"));
    }
    let end = pos
        .checked_add(body as usize)
        .filter(|&e| e <= b.len())
        .ok_or(BatchError::Invalid("record runs past its batch"))?;
    let bad = BatchError::Invalid("bad varint in a record");
    *pos += 1; // attributes
    let timestamp_delta = get_varlong(b, pos).ok_or(bad)?;
    let offset_delta = get_varint(b, pos).ok_or(bad)?;
    let key = get_bytes(b, pos, end)?;
    let value = get_bytes(b, pos, end)?;
    let header_count = get_varint(b, pos).ok_or(bad)?;
    if header_count < 0 {
        return Err(BatchError::Invalid("negative header count"));
    }
    let headers_start = *pos;
    for _ in 0..header_count {
        let k = get_bytes(b, pos, end)?;
        if k.is_none() {
            return Err(BatchError::Invalid("null header key"));
        }
        get_bytes(b, pos, end)?;
    }
    if *pos != end || offset_delta < 0 {
        return Err(BatchError::Invalid(
            "record fields do not add up to its length",
        ));
    }
    Ok(RecordView {
        start,
        len: end - start,
        timestamp_delta,
        offset_delta,
        key,
        value,
        header_count: header_count as u32,
        headers: headers_start..end,
    })
}

/// Kafka's `MemoryRecords.filterTo` for one checked, uncompressed batch `b` with header `h`:
/// appends to `out` the batch holding only the records `keep` accepts, and returns how many it
/// kept. Offsets never change: the base offset and the last offset delta stay (so the batch
/// still ends at its old last offset, as Kafka keeps it for producer sequences), each kept
/// record keeps its offset delta, its key, value and headers byte for byte, and its absolute
/// timestamp (deltas are re-based on the first kept record, as Kafka's builder does). The
/// attributes, max timestamp (with LogAppendTime, the store time), producer fields and leader
/// epoch are copied. A batch that keeps everything is copied unchanged; one that keeps nothing
/// is dropped unless `keep_empty`, when it becomes an empty batch (record count 0, both
/// timestamps the max timestamp: Kafka's empty-batch header).
pub fn filter_batch(
    out: &mut Vec<u8>,
    b: &[u8],
    h: &BatchHeader,
    mut keep: impl FnMut(&RecordView) -> bool,
    keep_empty: bool,
) -> Result<usize, BatchError> {
    let b = b.get(..h.total_len()).ok_or(BatchError::Truncated)?;
    let mut kept = Vec::new();
    let mut total = 0;
    for r in records(b, h) {
        let r = r?;
        total += 1;
        if keep(&r) {
            kept.push(r);
        }
    }
    if kept.len() == total {
        out.extend_from_slice(b);
        return Ok(kept.len());
    }
    if kept.is_empty() && !keep_empty {
        return Ok(0);
    }
    let bad = BatchError::Invalid("bad varint in a record");
    let base_timestamp = match kept.first() {
        Some(r) => h.base_timestamp.wrapping_add(r.timestamp_delta),
        None => h.max_timestamp,
    };
    let start = begin_batch(out);
    for r in &kept {
        // Length, attributes, timestamp delta and offset delta, then the rest (key, value,
        // headers) copied as it is.
        let mut pos = r.start;
        get_varint(b, &mut pos).ok_or(bad)?;
        let attributes = *b.get(pos).ok_or(bad)?;
        pos += 1;
        let ts_delta = get_varlong(b, &mut pos).ok_or(bad)?;
        get_varint(b, &mut pos).ok_or(bad)?;
        let tail = b.get(pos..r.start + r.len).ok_or(bad)?;
        let new_delta = h
            .base_timestamp
            .wrapping_add(ts_delta)
            .wrapping_sub(base_timestamp);
        let body = 1 + varlong_len(new_delta) + varlong_len(i64::from(r.offset_delta)) + tail.len();
        put_varint(out, body as i32);
        out.push(attributes);
        put_varlong(out, new_delta);
        put_varint(out, r.offset_delta);
        out.extend_from_slice(tail);
    }
    let header = BatchHeader {
        base_timestamp,
        record_count: kept.len() as i32,
        ..*h
    };
    finish_batch(out, start, &header);
    Ok(kept.len())
}

/// Iterates encoded headers: (key, value) with `None` for a null value. Stops at the first
/// malformed header (never happens for a checked batch).
pub fn iter_headers(raw: &[u8]) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= raw.len() {
            return None;
        }
        let k = get_bytes(raw, &mut pos, raw.len()).ok()??;
        let v = get_bytes(raw, &mut pos, raw.len()).ok()?;
        Some((&raw[k], v.map(|r| &raw[r])))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let headers: [(&[u8], Option<&[u8]>); 1] = [(b"TAGS", Some(b"A"))];
        let recs: Vec<RecordInput<'_>> = (0..4)
            .map(|i| RecordInput {
                timestamp: 1000 + i * 7,
                key: Some(if i % 2 == 0 { b"even" } else { b"odd" }),
                value: if i == 3 { None } else { Some(b"value") },
                headers: &headers,
            })
            .collect();
        let mut out = Vec::new();
        encode_batch(&mut out, 40, &recs, 0, ProducerInfo::NONE, Some(5000));
        out
    }

    #[test]
    fn a_checked_restamp_keeps_the_crc_valid_whether_or_not_the_time_moves() {
        for ts in [5000, 7777] {
            let mut b = sample();
            restamp_checked(&mut b, 1234, ts);
            let h = check_batch(&b).unwrap();
            assert_eq!((h.base_offset, h.max_timestamp), (1234, ts));
            let mut full = sample();
            restamp(&mut full, 1234, ts);
            assert_eq!(b, full, "same bytes as a full restamp at {ts}");
        }
    }

    #[test]
    fn filtering_keeps_offsets_timestamps_and_bytes_of_kept_records() {
        let b = sample();
        let h = check_batch(&b).unwrap();
        // Keep everything: unchanged bytes.
        let mut out = Vec::new();
        assert_eq!(filter_batch(&mut out, &b, &h, |_| true, false), Ok(4));
        assert_eq!(out, b);
        // Keep offsets 41 and 43 (the first kept is not the first record).
        let mut out = Vec::new();
        assert_eq!(
            filter_batch(&mut out, &b, &h, |r| r.offset_delta % 2 == 1, false),
            Ok(2)
        );
        let h2 = check_batch(&out).unwrap();
        assert_eq!(h2.base_offset, 40);
        assert_eq!(h2.last_offset(), 43);
        assert_eq!(h2.record_count, 2);
        assert_eq!(h2.max_timestamp, 5000);
        assert_eq!(h2.attributes, h.attributes);
        assert_eq!(h2.base_timestamp, 1007);
        let old: Vec<RecordView> = records(&b, &h).map(|r| r.unwrap()).collect();
        let new: Vec<RecordView> = records(&out, &h2).map(|r| r.unwrap()).collect();
        for (n, o) in new.iter().zip([&old[1], &old[3]]) {
            assert_eq!(n.offset_delta, o.offset_delta);
            assert_eq!(
                h2.base_timestamp + n.timestamp_delta,
                h.base_timestamp + o.timestamp_delta
            );
            assert_eq!(n.key.clone().map(|k| &out[k]), o.key.clone().map(|k| &b[k]));
            assert_eq!(
                n.value.clone().map(|v| &out[v]),
                o.value.clone().map(|v| &b[v])
            );
            assert_eq!(&out[n.headers.clone()], &b[o.headers.clone()]);
        }
        // Keep nothing: gone, or an empty batch that still ends at the old last offset.
        let mut out = Vec::new();
        assert_eq!(filter_batch(&mut out, &b, &h, |_| false, false), Ok(0));
        assert!(out.is_empty());
        assert_eq!(filter_batch(&mut out, &b, &h, |_| false, true), Ok(0));
        let h3 = check_batch(&out).unwrap();
        assert_eq!(
            (h3.base_offset, h3.last_offset(), h3.record_count),
            (40, 43, 0)
        );
        assert_eq!((h3.base_timestamp, h3.max_timestamp), (5000, 5000));
        assert_eq!(out.len(), HEADER_LEN);
    }

    #[test]
    fn varints_match_kafka() {
        for (v, bytes) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (63, vec![0x7e]),
            (64, vec![0x80, 0x01]),
            (300, vec![0xd8, 0x04]),
        ] {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            assert_eq!(out, bytes, "{v}");
            assert_eq!(varlong_len(v), bytes.len());
            let mut p = 0;
            assert_eq!(get_varlong(&out, &mut p), Some(v));
        }
        let mut p = 0;
        assert_eq!(get_varlong(&[0xff; 11], &mut p), None);
    }

    #[test]
    fn round_trip_and_every_bit_flip_is_caught() {
        let headers: [(&[u8], Option<&[u8]>); 2] = [(b"TAGS", Some(b"A")), (b"n", None)];
        let recs = [
            RecordInput {
                timestamp: 10,
                key: Some(b"k"),
                value: Some(b"v"),
                headers: &headers,
            },
            RecordInput {
                timestamp: 5,
                key: None,
                value: None,
                headers: &[],
            },
        ];
        let mut out = Vec::new();
        encode_batch(&mut out, 42, &recs, 0, ProducerInfo::NONE, Some(99));
        let h = check_batch(&out).unwrap();
        assert_eq!(h.base_offset, 42);
        assert_eq!(h.last_offset(), 43);
        assert_eq!(h.max_timestamp, 99);
        assert_eq!(h.attributes & ATTR_LOG_APPEND_TIME, ATTR_LOG_APPEND_TIME);
        let rs: Vec<_> = records(&out, &h).map(|r| r.unwrap()).collect();
        assert_eq!(rs.len(), 2);
        assert_eq!(&out[rs[0].key.clone().unwrap()], b"k");
        assert_eq!(rs[1].value, None);
        assert_eq!(rs[1].timestamp_delta, -5);
        let hs: Vec<_> = iter_headers(&out[rs[0].headers.clone()]).collect();
        assert_eq!(hs, vec![(&b"TAGS"[..], Some(&b"A"[..])), (&b"n"[..], None)]);
        // The CRC leaves out the base offset and the leader epoch (Kafka's layout); every other
        // byte is covered by it or by the length checks.
        for i in (8..12).chain(16..out.len()) {
            for bit in 0..8 {
                let mut bad = out.clone();
                bad[i] ^= 1 << bit;
                if let Ok(h2) = check_batch(&bad) {
                    panic!("flip at {i}:{bit} accepted: {h2:?}");
                }
            }
        }
        for len in 0..out.len() {
            assert!(check_batch(&out[..len]).is_err());
        }
    }
}
