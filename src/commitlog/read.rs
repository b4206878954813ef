//! The read path: consume-queue units → commit-log bytes, copied once into one buffer per read.

use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::Inner;
use super::consume_queue::Unit;
use super::record::{self, Checks, Decoded};
use crate::error::{Error, Result};
use crate::store::{Properties, PropertyEncoding, ReadLimits, Record, range_in};

fn unhex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    b.chunks(2)
        .map(|p| Some((nib(p[0])? << 4) | nib(p[1])?))
        .collect()
}

/// Builds a [`Record`] from one stored record's bytes, checking that it is the record the
/// consume queue said (topic, partition, offset).
pub(crate) fn make_record(
    chunk: Bytes,
    expect_topic: &str,
    expect_partition: u32,
    expect_offset: u64,
    locate: impl Fn() -> (std::path::PathBuf, u64),
) -> Result<Record> {
    let corrupt = |why: &str| {
        let (file, pos) = locate();
        Error::corrupted(file, pos, why.to_owned())
    };
    let d = match record::decode(&chunk, Checks::FULL) {
        Ok(Decoded::Message(d)) => d,
        Ok(Decoded::Blank { .. }) => return Err(corrupt("consume queue points at a blank record")),
        Err(e) => return Err(corrupt(e.reason())),
    };
    if d.total_size != chunk.len() {
        return Err(corrupt("record size differs from its consume-queue unit"));
    }
    if d.topic != expect_topic.as_bytes()
        || d.header.queue_id != expect_partition as i32
        || d.header.queue_offset != expect_offset as i64
    {
        return Err(corrupt("consume-queue unit points at another record"));
    }
    let props_range = range_in(&chunk, d.properties);
    let body_range = range_in(&chunk, d.body);
    let mut key = None;
    let mut tags = None;
    for (name, value) in record::iter_properties(d.properties) {
        match name {
            "__KEY" => key = Some(chunk.slice(range_in(&chunk, value.as_bytes()))),
            "__KEYHEX" => {
                key = Some(Bytes::from(
                    unhex(value).ok_or_else(|| corrupt("bad hex key"))?,
                ))
            }
            "TAGS" => tags = Some(chunk.slice(range_in(&chunk, value.as_bytes()))),
            _ => {}
        }
    }
    Ok(Record {
        offset: expect_offset,
        timestamp: d.header.born_timestamp,
        store_timestamp: d.header.store_timestamp,
        flags: d.header.sys_flag as u32,
        key,
        body: chunk.slice(body_range),
        tags,
        properties: Properties::new(chunk.slice(props_range), PropertyEncoding::RocketMq),
        size: d.total_size as u32,
    })
}

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
        let mut units: Vec<Unit> = Vec::with_capacity(n);
        let mut bytes = 0usize;
        for o in offset..offset + n as u64 {
            let unit = part.cq.unit(o).ok_or_else(|| {
                Error::corrupted(
                    part.cq.dir(),
                    o * super::UNIT_SIZE,
                    "missing consume-queue unit below the partition end",
                )
            })?;
            if !units.is_empty() && bytes + unit.size as usize > limits.max_bytes {
                break;
            }
            bytes += unit.size as usize;
            units.push(unit);
        }
        let mut buf = BytesMut::with_capacity(bytes);
        for u in &units {
            let Some(file) = self.log.find(u.position) else {
                if u.position < self.log.min_offset().unwrap_or(0) {
                    // Retention removed the file after we read the bounds.
                    return Err(out_of_range());
                }
                return Err(Error::corrupted(
                    part.cq.dir(),
                    offset * super::UNIT_SIZE,
                    format!(
                        "consume-queue unit points at {} past the end of the log",
                        u.position
                    ),
                ));
            };
            let at = (u.position - file.start_offset()) as usize;
            let data = file.read(at, u.size as usize).ok_or_else(|| {
                Error::corrupted(
                    file.path(),
                    at as u64,
                    "consume-queue unit points past the end of the log",
                )
            })?;
            buf.extend_from_slice(data);
        }
        let buf = buf.freeze();
        let mut out = Vec::with_capacity(units.len());
        let mut at = 0usize;
        for (i, u) in units.iter().enumerate() {
            let chunk = buf.slice(at..at + u.size as usize);
            at += u.size as usize;
            let pos = u.position;
            let locate = || match self.log.find(pos) {
                Some(f) => (f.path().to_owned(), pos - f.start_offset()),
                None => (self.log.dir().to_owned(), pos),
            };
            out.push(make_record(
                chunk,
                topic,
                partition,
                offset + i as u64,
                locate,
            )?);
        }
        Ok(out)
    }
}
