//! The delay layer's two record bodies, bytes in and values out (no I/O): the timer-log entry
//! and the progress record. Both travel as record bodies of the store, which checksums every
//! record, so they carry a magic and a version but no checksum of their own. Big-endian
//! throughout. Layouts are drawn in docs/format.md ("Delay layer").

/// Magic of a timer-log entry: `DLT` and format version 1.
pub(crate) const ENTRY_MAGIC: [u8; 4] = *b"DLT1";
/// Magic of a progress record: `DLP` and format version 2 (written).
pub(crate) const PROGRESS_MAGIC: [u8; 4] = *b"DLP2";
/// Magic of a format-1 progress record (read only): no watermark, no cursor.
pub(crate) const PROGRESS_MAGIC_V1: [u8; 4] = *b"DLP1";
/// Encoded size of a timer-log entry.
pub(crate) const ENTRY_LEN: usize = 45;
/// Encoded size of a progress record without its targets.
pub(crate) const HEADER_LEN: usize = 85;
/// The same in format 1.
const HEADER_LEN_V1: usize = 53;
/// `prev` of the first entry of a slot.
pub(crate) const NO_ENTRY: u64 = u64::MAX;

/// What a timer-log entry stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// A scheduled message (first schedule or a roll of it).
    Message = 0,
    /// A cancel of the message whose id the entry carries.
    Cancel = 1,
    /// A record of `__delay_messages` the wheel ignores (a cancel that came too late, a
    /// duplicate cancel, a record without the layer's properties): written so the enqueue
    /// cursor still moves past it.
    Void = 2,
}

/// One timer-log entry: a record of `__delay_messages` placed in a slot of the wheel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerEntry {
    pub(crate) kind: EntryKind,
    /// The slot (ms since the epoch, a multiple of the precision) the entry sits in.
    pub(crate) slot_ms: i64,
    /// Offset of the record in `__delay_messages`.
    pub(crate) message_offset: u64,
    /// Timer-log offset of the previous entry of the same slot, or [`NO_ENTRY`].
    pub(crate) prev: u64,
    /// When the message is due (requested time, ms since the epoch).
    pub(crate) deliver_ms: i64,
    /// The handle id: the message's own (first schedule's) offset; for a cancel, the target's.
    pub(crate) id: u64,
}

impl TimerEntry {
    pub(crate) fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..4].copy_from_slice(&ENTRY_MAGIC);
        b[4] = self.kind as u8;
        b[5..13].copy_from_slice(&self.slot_ms.to_be_bytes());
        b[13..21].copy_from_slice(&self.message_offset.to_be_bytes());
        b[21..29].copy_from_slice(&self.prev.to_be_bytes());
        b[29..37].copy_from_slice(&self.deliver_ms.to_be_bytes());
        b[37..45].copy_from_slice(&self.id.to_be_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<TimerEntry, &'static str> {
        if b.len() != ENTRY_LEN {
            return Err("timer-log entry has the wrong length");
        }
        if b[0..4] != ENTRY_MAGIC {
            return Err("timer-log entry has a bad magic or version");
        }
        let kind = match b[4] {
            0 => EntryKind::Message,
            1 => EntryKind::Cancel,
            2 => EntryKind::Void,
            _ => return Err("timer-log entry has an unknown kind"),
        };
        Ok(TimerEntry {
            kind,
            slot_ms: i64_at(b, 5),
            message_offset: u64_at(b, 13),
            prev: u64_at(b, 21),
            deliver_ms: i64_at(b, 29),
            id: u64_at(b, 37),
        })
    }
}

/// The phase a progress record marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A round is about to write: `targets` lists each partition it may write to with its
    /// end offset before the round. The state fields are the state before the round.
    Intent = 1,
    /// The round's writes are durable; the state fields are the state after it.
    Done = 2,
}

/// The state of delivery, as persisted in `__delay_progress` (the latest record wins).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) phase: Phase,
    /// The format the record was read in (1 or 2); written records are format 2.
    pub(crate) version: u8,
    /// The last slot processed completely (ms); `i64::MIN` before any.
    pub(crate) read_time: i64,
    /// Timer-log offset of the oldest pending entry: the wheel is rebuilt from here.
    pub(crate) scan_start: u64,
    /// The open slot: one processed in part (rounds are bounded, and a slot's entries go
    /// out at their exact due time), or `i64::MIN`.
    pub(crate) partial_slot: i64,
    /// Format 1's cursor in the partial slot, kept while that slot lasts: its entries above
    /// this timer-log offset (and below `partial_below`) are done. [`NO_ENTRY`]: none.
    pub(crate) partial_next: u64,
    /// In the partial slot, every entry at or before this (effective due time, timer-log
    /// offset) is done: the slot is processed in that order. `(i64::MIN, 0)`: none.
    pub(crate) partial_due: i64,
    pub(crate) partial_offset: u64,
    /// See `partial_next`; `u64::MAX` in a format-1 record (the timer log's end at open).
    pub(crate) partial_below: u64,
    /// The enqueue cursor: records of `__delay_messages` before it are placed. Format 1: 0
    /// (the cursor came from the timer log's last entry only).
    pub(crate) cursor: u64,
    /// INTENT only: the time the round was planned at and how many entries it takes, so a
    /// redo plans exactly the same round.
    pub(crate) up_to: i64,
    pub(crate) count: u32,
    /// INTENT only: (topic, partition, end offset before the round).
    pub(crate) targets: Vec<(String, u32, u64)>,
}

impl Progress {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + self.targets.len() * 32);
        b.extend_from_slice(&PROGRESS_MAGIC);
        b.push(self.phase as u8);
        b.extend_from_slice(&self.read_time.to_be_bytes());
        b.extend_from_slice(&self.scan_start.to_be_bytes());
        b.extend_from_slice(&self.partial_slot.to_be_bytes());
        b.extend_from_slice(&self.partial_next.to_be_bytes());
        b.extend_from_slice(&self.partial_due.to_be_bytes());
        b.extend_from_slice(&self.partial_offset.to_be_bytes());
        b.extend_from_slice(&self.partial_below.to_be_bytes());
        b.extend_from_slice(&self.cursor.to_be_bytes());
        b.extend_from_slice(&self.up_to.to_be_bytes());
        b.extend_from_slice(&self.count.to_be_bytes());
        b.extend_from_slice(&(self.targets.len() as u32).to_be_bytes());
        for (topic, partition, end) in &self.targets {
            // Topic names are at most 249 bytes (validate_topic_name): a u16 length suffices.
            b.extend_from_slice(&(topic.len() as u16).to_be_bytes());
            b.extend_from_slice(topic.as_bytes());
            b.extend_from_slice(&partition.to_be_bytes());
            b.extend_from_slice(&end.to_be_bytes());
        }
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Progress, &'static str> {
        let v1 = b.get(0..4) == Some(&PROGRESS_MAGIC_V1[..]);
        let header = if v1 { HEADER_LEN_V1 } else { HEADER_LEN };
        if b.len() < header {
            return Err("progress record is too short");
        }
        if !v1 && b[0..4] != PROGRESS_MAGIC {
            return Err("progress record has a bad magic or version");
        }
        let phase = match b[4] {
            1 => Phase::Intent,
            2 => Phase::Done,
            _ => return Err("progress record has an unknown phase"),
        };
        // Format 2 inserts the watermark, the format-1 bound and the cursor after
        // partial_next.
        let tail = if v1 { 37 } else { 69 };
        let n = u32::from_be_bytes([b[tail + 12], b[tail + 13], b[tail + 14], b[tail + 15]]);
        let mut at = header;
        let mut targets = Vec::with_capacity((n as usize).min(1024));
        for _ in 0..n {
            let len = b.get(at..at + 2).ok_or("progress record is truncated")?;
            let len = u16::from_be_bytes([len[0], len[1]]) as usize;
            at += 2;
            let name = b.get(at..at + len).ok_or("progress record is truncated")?;
            let topic = std::str::from_utf8(name)
                .map_err(|_| "progress record names a topic that is not UTF-8")?
                .to_owned();
            at += len;
            let rest = b.get(at..at + 12).ok_or("progress record is truncated")?;
            let partition = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let end = u64_at(rest, 4);
            at += 12;
            targets.push((topic, partition, end));
        }
        if at != b.len() {
            return Err("progress record has trailing bytes");
        }
        let (partial_due, partial_offset, partial_below, cursor) = if v1 {
            (i64::MIN, 0, u64::MAX, 0)
        } else {
            (i64_at(b, 37), u64_at(b, 45), u64_at(b, 53), u64_at(b, 61))
        };
        Ok(Progress {
            phase,
            version: if v1 { 1 } else { 2 },
            read_time: i64_at(b, 5),
            scan_start: u64_at(b, 13),
            partial_slot: i64_at(b, 21),
            partial_next: u64_at(b, 29),
            partial_due,
            partial_offset,
            partial_below,
            cursor,
            up_to: i64_at(b, tail),
            count: u32::from_be_bytes([b[tail + 8], b[tail + 9], b[tail + 10], b[tail + 11]]),
            targets,
        })
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    u64_at(b, at) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn entry_round_trips_and_names_damage() {
        let e = TimerEntry {
            kind: EntryKind::Cancel,
            slot_ms: -5_000,
            message_offset: 7,
            prev: NO_ENTRY,
            deliver_ms: i64::MAX,
            id: 3,
        };
        let b = e.encode();
        assert_eq!(TimerEntry::decode(&b), Ok(e));
        assert!(TimerEntry::decode(&b[..44]).is_err());
        let mut bad = b;
        bad[4] = 9;
        assert!(TimerEntry::decode(&bad).is_err());
        bad = b;
        bad[3] = b'2';
        assert!(TimerEntry::decode(&bad).is_err());
    }

    /// A format-1 record (as session 5 wrote it) still decodes: no watermark, no cursor.
    #[test]
    fn format_1_progress_still_decodes() {
        let mut b = Vec::new();
        b.extend_from_slice(b"DLP1");
        b.push(2);
        for v in [7i64, 9, 3_000] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(&42u64.to_be_bytes());
        b.extend_from_slice(&2_000i64.to_be_bytes());
        b.extend_from_slice(&5u32.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.push(b't');
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(&11u64.to_be_bytes());
        let p = Progress::decode(&b).unwrap();
        assert_eq!(p.version, 1);
        assert_eq!(
            (p.read_time, p.scan_start, p.partial_slot, p.partial_next),
            (7, 9, 3_000, 42)
        );
        assert_eq!(
            (p.partial_due, p.partial_below, p.cursor),
            (i64::MIN, u64::MAX, 0)
        );
        assert_eq!((p.up_to, p.count), (2_000, 5));
        assert_eq!(p.targets, vec![("t".to_owned(), 3, 11)]);
        assert!(Progress::decode(&b[..b.len() - 1]).is_err());
    }

    proptest! {
        #[test]
        fn progress_round_trips_and_never_panics_on_garbage(
            read_time in any::<i64>(), scan in any::<u64>(), slot in any::<i64>(), next in any::<u64>(),
            up_to in any::<i64>(), count in any::<u32>(),
            targets in proptest::collection::vec(("[a-z_]{1,20}", any::<u32>(), any::<u64>()), 0..5),
            cut in 0usize..200, garbage in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let p = Progress { phase: Phase::Intent, version: 2, read_time, scan_start: scan,
                partial_slot: slot, partial_next: next, partial_due: up_to ^ 5, partial_offset: next ^ 9,
                partial_below: scan ^ 3, cursor: scan ^ 7, up_to, count, targets };
            let b = p.encode();
            prop_assert_eq!(Progress::decode(&b), Ok(p));
            if cut < b.len() {
                prop_assert!(Progress::decode(&b[..cut]).is_err());
            }
            let _ = Progress::decode(&garbage);
            let _ = TimerEntry::decode(&garbage);
        }
    }
}
