//! The read path: consume-queue units → zero-copy slices of the mapped commit-log files.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::Inner;
use super::consume_queue::Unit;
use super::record::{self, Checks, Decoded};
use crate::error::{Error, Result};
use crate::store::{Properties, PropertyEncoding, ReadLimits, Record};

fn unhex(b: &[u8]) -> Option<Vec<u8>> {
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    b.chunks(2)
        .map(|p| Some((nib(p[0])? << 4) | nib(p[1])?))
        .collect()
}

/// Builds a [`Record`] from the stored record at `range` of `span`, checking that it is the
/// record the consume queue said (topic, partition, offset). The record's fields are zero-copy
/// slices of `span`.
pub(crate) fn make_record(
    span: &Bytes,
    range: std::ops::Range<usize>,
    expect_topic: &str,
    expect_partition: u32,
    expect_offset: u64,
    locate: impl Fn() -> (std::path::PathBuf, u64),
) -> Result<Record> {
    let corrupt = |why: &str| {
        let (file, pos) = locate();
        Error::corrupted(file, pos, why.to_owned())
    };
    let rec = &span[range.clone()];
    let d = match record::decode(rec, Checks::FULL) {
        Ok(Decoded::Message(d)) => d,
        Ok(Decoded::Blank { .. }) => return Err(corrupt("consume queue points at a blank record")),
        Err(e) => return Err(corrupt(e.reason())),
    };
    if d.total_size != rec.len() {
        return Err(corrupt("record size differs from its consume-queue unit"));
    }
    if d.topic != expect_topic.as_bytes()
        || d.header.queue_id != expect_partition as i32
        || d.header.queue_offset != expect_offset as i64
    {
        return Err(corrupt("consume-queue unit points at another record"));
    }
    let slice = |part: &[u8]| span.slice_ref(part);
    let mut key = None;
    let mut tags = None;
    let mut tombstone = false;
    for (name, value) in record::iter_raw_properties(d.properties) {
        match name {
            b"__KEY" => key = Some(slice(value)),
            b"__KEYHEX" => {
                key = Some(Bytes::from(
                    unhex(value).ok_or_else(|| corrupt("bad hex key"))?,
                ))
            }
            b"TAGS" => tags = Some(slice(value)),
            b"__TOMBSTONE" => tombstone = true,
            _ => {}
        }
    }
    Ok(Record {
        offset: expect_offset,
        timestamp: d.header.born_timestamp,
        store_timestamp: d.header.store_timestamp,
        flags: d.header.sys_flag as u32,
        key,
        body: slice(d.body),
        tags,
        properties: Properties::new(slice(d.properties), PropertyEncoding::RocketMq),
        size: d.total_size as u32,
        tombstone,
    })
}

/// Units reserved up front by a read; more are allocated only as they are returned.
const INITIAL_UNITS: usize = 64;

impl Inner {
    pub(crate) fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limits: ReadLimits,
    ) -> Result<Vec<Record>> {
        let t = self.topic(topic)?;
        let part = t.partition(partition)?;
        let start = part.start.load(Ordering::Acquire);
        let end = part.end.load(Ordering::Acquire);
        let out_of_range = || Error::OffsetOutOfRange {
            topic: topic.to_owned(),
            partition,
            offset,
            start: part.start.load(Ordering::Acquire),
            end: part.end.load(Ordering::Acquire),
        };
        if offset < start || offset > end {
            return Err(out_of_range());
        }
        let n = (end - offset).min(limits.max_messages as u64) as usize;
        if n == 0 {
            return Ok(Vec::new());
        }
        // Grown as units are accepted, so the allocation follows what the read returns: `n` is
        // the whole backlog when the caller sets no message limit and only `max_bytes` stops it.
        let mut units: Vec<Unit> = Vec::with_capacity(n.min(INITIAL_UNITS));
        let mut bytes = 0usize;
        for o in offset..offset + n as u64 {
            let Some(unit) = part.cq.unit(o)? else {
                // Retention and `delete_before` raise the start before they unlink queue files:
                // a unit that vanished below the start as it is now was deleted under this read,
                // a normal race the caller recovers from by seeking. Above the start it is damage.
                if o < part.start.load(Ordering::Acquire) {
                    return Err(out_of_range());
                }
                return Err(Error::corrupted(
                    part.cq.dir(),
                    o * super::UNIT_SIZE,
                    "missing consume-queue unit below the partition end",
                ));
            };
            if !units.is_empty() && bytes + unit.size as usize > limits.max_bytes {
                break;
            }
            bytes += unit.size as usize;
            units.push(unit);
        }
        // Zero-copy: one `Bytes` over each mapped file the read touches (the units of a read are
        // mostly in one file), every record a slice of it.
        let mut out = Vec::with_capacity(units.len());
        let mut i = 0;
        while i < units.len() {
            let u = units[i];
            let Some(file) = self.log.find(u.position) else {
                if u.position < self.log.min_offset().unwrap_or(0) {
                    // Retention removed the file after we read the bounds.
                    return Err(out_of_range());
                }
                return Err(Error::corrupted(
                    part.cq.dir(),
                    (offset + i as u64) * super::UNIT_SIZE,
                    format!(
                        "consume-queue unit points at {} past the end of the log",
                        u.position
                    ),
                ));
            };
            let base = file.start_offset();
            let file_end = base + file.len() as u64;
            // The run of units in this file, and the byte span covering them.
            let mut j = i;
            let (mut lo, mut hi) = (u.position, u.position);
            while j < units.len() && units[j].position >= base && units[j].position < file_end {
                lo = lo.min(units[j].position);
                hi = hi.max(units[j].position + units[j].size as u64);
                j += 1;
            }
            let span = file
                .published_bytes((lo - base) as usize, (hi - lo) as usize)
                .ok_or_else(|| {
                    Error::corrupted(
                        file.path(),
                        lo - base,
                        "consume-queue unit points past the end of the log",
                    )
                })?;
            for (k, u) in units[i..j].iter().enumerate() {
                let from = (u.position - lo) as usize;
                let pos = u.position;
                let locate = || (file.path().to_owned(), pos - base);
                out.push(make_record(
                    &span,
                    from..from + u.size as usize,
                    topic,
                    partition,
                    offset + (i + k) as u64,
                    locate,
                )?);
            }
            i = j;
        }
        Ok(out)
    }
}
