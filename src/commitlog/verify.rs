//! `verify`: every record's checksums, and every consume-queue unit against the log.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::Inner;
use super::record::{self, Checks, Decoded};
use crate::error::Result;
use crate::store::VerifyReport;

impl Inner {
    pub(crate) fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let written = self.written.load(Ordering::Acquire);
        let size = self.log.file_size();
        let topics: HashMap<String, _> = self
            .topics
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Per partition: how many records at or after the start offset the log holds.
        let mut seen: HashMap<(String, u32), u64> = HashMap::new();
        for file in self.log.snapshot() {
            let data = file.committed_bytes();
            let mut at = 0usize;
            while at < data.len() && file.start_offset() + (at as u64) < written {
                match record::decode(&data[at..], Checks::FULL) {
                    Ok(Decoded::Blank { size: blank }) => {
                        if at + blank != size as usize {
                            report.problems.push(format!(
                                "{}: blank record at {at} does not close the file",
                                file.path().display()
                            ));
                        }
                        break;
                    }
                    Ok(Decoded::Message(d)) => {
                        report.records_checked += 1;
                        let pos = file.start_offset() + at as u64;
                        if d.header.physical_offset != pos as i64 {
                            report.problems.push(format!(
                                "{}: record at {at} says it is at {}",
                                file.path().display(),
                                d.header.physical_offset
                            ));
                        }
                        {
                            let name = String::from_utf8_lossy(d.topic).into_owned();
                            let topic = topics.get(&name);
                            if topic.is_none_or(|t| pos < t.since) {
                                // A deleted topic's record, unreachable until retention.
                                at += d.total_size;
                                continue;
                            }
                            match topic.and_then(|t| t.partitions.get(d.header.queue_id as usize)) {
                                None => report.problems.push(format!(
                                    "{}: record at {at} belongs to unknown topic/partition {name}/{}",
                                    file.path().display(),
                                    d.header.queue_id
                                )),
                                Some(part) => {
                                    let offset = d.header.queue_offset as u64;
                                    // Below `clean_end` the compacted files serve the offset
                                    // (checked below); the queue may no longer hold its unit.
                                    let served = part.start.load(Ordering::Acquire).max(part.clean_end());
                                    if offset >= served {
                                        report.derived_checked += 1;
                                        *seen.entry((name.clone(), d.header.queue_id as u32)).or_default() += 1;
                                        // Tag filters trust the unit's tag hash.
                                        let tag_hash = record::unit_tag_hash(d.header.sys_flag, d.properties);
                                        match part.cq.unit(offset)? {
                                            Some(u) if u.position == pos && u.size as usize == d.total_size && u.tag_hash == tag_hash => {}
                                            other => report.problems.push(format!(
                                                "consume queue {name}/{} unit {offset} is {other:?}, expected position {pos} size {} tag hash {tag_hash}",
                                                d.header.queue_id, d.total_size
                                            )),
                                        }
                                    }
                                }
                            }
                        }
                        at += d.total_size;
                    }
                    Err(e) => {
                        report.problems.push(format!(
                            "{}: invalid record at {at}: {}",
                            file.path().display(),
                            e.reason()
                        ));
                        break;
                    }
                }
            }
        }
        for (name, t) in &topics {
            for (p, part) in t.partitions.iter().enumerate() {
                let end = part.end.load(Ordering::Acquire);
                let start = part
                    .start
                    .load(Ordering::Acquire)
                    .max(part.clean_end())
                    .min(end);
                let found = seen.get(&(name.clone(), p as u32)).copied().unwrap_or(0);
                report.records_checked +=
                    self.verify_compacted(name, p as u32, part, &mut report.problems)?;
                if found != end - start {
                    report.problems.push(format!(
                        "partition {name}/{p}: offsets {start}..{end} but the log holds {found} of its records"
                    ));
                }
                // The aborted-transaction index is derived: it must be exactly the entries of
                // the partition's abort markers from its start to its end.
                let from = part.start.load(Ordering::Acquire).min(end);
                // (A diagnostic: every entry in memory at once.)
                let mut indexed = Vec::new();
                let listed = part.txn_index.lock().for_each(|e| {
                    if e.last_offset >= from && e.last_offset < end {
                        indexed.push(*e);
                    }
                    Ok(())
                });
                if let Err(e) = listed {
                    report.problems.push(format!(
                        "partition {name}/{p}: aborted-transaction index does not read: {e}"
                    ));
                }
                match self.aborted_from_markers(name, p as u32, from, end) {
                    Ok(derived) => {
                        report.derived_checked += derived.len() as u64;
                        if indexed != derived {
                            report.problems.push(format!(
                                "partition {name}/{p}: aborted-transaction index holds {} entries, its abort markers say {}",
                                indexed.len(),
                                derived.len()
                            ));
                        }
                    }
                    // A record that does not read is reported by the checks above.
                    Err(e) => report.problems.push(format!(
                        "partition {name}/{p}: abort markers unreadable: {e}"
                    )),
                }
            }
        }
        if let Some(index) = &self.index {
            for (name, t) in &topics {
                for (p, part) in t.partitions.iter().enumerate() {
                    let (start, end) = (
                        part.start.load(Ordering::Acquire),
                        part.end.load(Ordering::Acquire),
                    );
                    let read = |o: u64| {
                        self.read(name, p as u32, o, crate::store::ReadLimits::messages(1000))
                    };
                    report.derived_checked += crate::index::verify_partition(
                        index,
                        name,
                        p as u32,
                        start,
                        end,
                        &read,
                        &mut report.problems,
                    )?;
                }
            }
        }
        Ok(report)
    }
}

impl Inner {
    /// Checks a partition's compacted generation: every record whole (CRCs), of this
    /// partition, offsets ascending and below `clean_end`, the counts and length `state`
    /// names, and every index entry pointing at the record it names. Returns records checked.
    fn verify_compacted(
        &self,
        topic: &str,
        partition: u32,
        part: &super::PartitionState,
        problems: &mut Vec<String>,
    ) -> Result<u64> {
        let (c, reader) = match self.open_compacted(part) {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(0),
            Err(e) => {
                problems.push(format!("compacted {topic}/{partition}: {e}"));
                return Ok(0);
            }
        };
        let mut scan = reader.scan_from(0);
        let (mut records, mut tombstones, mut entry) = (0u64, 0u64, 0u64);
        let mut last: Option<u64> = None;
        let mut next_entry = match reader.entry(0) {
            Ok(e) => Some(e),
            Err(e) => {
                problems.push(format!("compacted {topic}/{partition}: index: {e}"));
                None
            }
        };
        loop {
            let pos = scan.position();
            let (chunk, range) = match scan.next_raw() {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    problems.push(format!("compacted {topic}/{partition}: {e}"));
                    return Ok(records);
                }
            };
            let meta = match super::compacted::describe(&chunk[range], topic) {
                Ok(m) => m,
                Err(why) => {
                    problems.push(format!(
                        "{}: invalid record at {pos}: {why}",
                        reader.data_path().display()
                    ));
                    return Ok(records);
                }
            };
            records += 1;
            tombstones += u64::from(meta.tombstone);
            if meta.partition != partition as i32 || last.is_some_and(|l| l >= meta.offset) {
                problems.push(format!(
                    "{}: record at {pos} (partition {}, offset {}) out of place",
                    reader.data_path().display(),
                    meta.partition,
                    meta.offset
                ));
            }
            last = Some(meta.offset);
            if let Some((o, at)) = next_entry
                && at == pos
            {
                if o != meta.offset {
                    problems.push(format!(
                        "{}: index entry {entry} says offset {o} at {at}, the record there is {}",
                        reader.data_path().display(),
                        meta.offset
                    ));
                }
                entry += 1;
                next_entry = if entry < c.state.index_entries {
                    reader.entry(entry).ok()
                } else {
                    None
                };
            }
        }
        if entry != c.state.index_entries {
            problems.push(format!(
                "compacted {topic}/{partition}: {entry} of {} index entries point at records",
                c.state.index_entries
            ));
        }
        if records != c.state.records || tombstones != c.state.tombstones {
            problems.push(format!(
                "compacted {topic}/{partition}: {records} records ({tombstones} tombstones), state says {} ({})",
                c.state.records, c.state.tombstones
            ));
        }
        Ok(records)
    }
}
