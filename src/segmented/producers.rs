//! Idempotent producers on the segmented engine: Kafka's producer snapshots
//! (`<20-digit offset>.snapshot` in the partition directory, the state of every producer as of
//! that offset: see `producer_state`) and the rebuild at open.
//!
//! A partition without a snapshot file has no idempotent batch in its log: the first idempotent
//! append to it writes an empty snapshot at its end before it writes anything, and the newest
//! snapshot is never deleted (one past the recovered end covers only batches that are gone).
//! So an open of a partition that never had an idempotent producer reads nothing more, and
//! one that has snapshots replays from the newest. A snapshot file deleted by hand is not
//! noticed (its producers are forgotten), as in Kafka after a clean shutdown.
//!
//! A snapshot at offset `X` is taken under the partition lock when a roll makes `X` the new
//! active segment's base (the state then covers exactly the offsets below `X`), and written by
//! the seal path once every rolled segment is sealed — their logs synced, so no snapshot ever
//! claims a batch a crash could still take away. A clean close writes one at the end offset.
//! Written atomically (temporary file, fsync, rename, directory fsync). At open the newest
//! snapshot at or below the recovered end that decodes (version, CRC-32C, sane entries) is the
//! starting point, older ones are the fallback, and none at all means the log start; the batch
//! headers after it are replayed (never the records). Snapshots past the recovered end (the log
//! was cut by recovery) describe batches that are gone and are deleted before anything is
//! appended. Before retention or `delete_before` deletes segments, a snapshot is written at the
//! end (log synced first); then only the newest snapshot and those at segment bases stay, so
//! snapshots go with their segments and live producers' state outlives the segments they wrote.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::batch;
use super::segment::{self, SegmentMeta};
use super::txnindex::AbortedTxn;
use crate::error::{Error, Result};
use crate::io::{self, FileSystem, OpenMode};
use crate::producer_state::{self, BatchMeta, ProducerStates, SnapshotEntry};
use crate::store::{ProducerId, TxnMarker};

const SUFFIX: &str = "snapshot";

/// `<dir>/<20-digit offset>.snapshot`.
pub(super) fn snapshot_path(dir: &Path, offset: u64) -> PathBuf {
    dir.join(format!("{offset:020}.{SUFFIX}"))
}

/// The offset a snapshot file name stands for.
pub(super) fn parse_snapshot_name(name: &str) -> Option<u64> {
    io::parse_offset_name(name.strip_suffix(&format!(".{SUFFIX}"))?)
}

/// Offsets of the snapshots in `dir`, ascending.
fn list(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<u64>> {
    let mut v: Vec<u64> = io::list_dir_or_empty(fs, dir)
        .map_err(|e| Error::io(dir, e))?
        .iter()
        .filter_map(|e| parse_snapshot_name(&e.name))
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// Writes the snapshot of `entries` at `offset`, atomically.
pub(super) fn write(
    fs: &dyn FileSystem,
    dir: &Path,
    offset: u64,
    entries: &[SnapshotEntry],
) -> Result<()> {
    let path = snapshot_path(dir, offset);
    io::write_atomic(fs, &path, &producer_state::encode_snapshot(entries))
        .map_err(|e| Error::io(&path, e))
}

/// Deletes snapshots that nothing needs: every one but the newest and those at the base of a
/// segment of `bases` (sorted; the fallbacks of a damaged newest one). So snapshots go with
/// their segments, and those a clean close wrote inside a segment go once a newer one exists.
pub(super) fn prune(fs: &dyn FileSystem, dir: &Path, bases: &[u64]) -> Result<()> {
    let all = list(fs, dir)?;
    let Some(&newest) = all.last() else {
        return Ok(());
    };
    let mut removed = false;
    for &o in &all {
        if o != newest && bases.binary_search(&o).is_err() {
            let p = snapshot_path(dir, o);
            io::remove_if_exists(fs, &p).map_err(|e| Error::io(&p, e))?;
            removed = true;
        }
    }
    if removed {
        fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// What an open rebuilds from the snapshots and the log.
pub(super) struct Rebuilt {
    pub(super) state: ProducerStates,
    /// Whether the partition has a snapshot (see `PartState::has_snapshot`).
    pub(super) has_snapshot: bool,
    /// The aborts whose markers the replay went over: (base of the segment holding the
    /// marker, the transaction index entry).
    pub(super) aborts: Vec<(u64, AbortedTxn)>,
}

/// Rebuilds a partition's producer state at open from its snapshots (`all`, their offsets
/// ascending): the newest usable snapshot, then the batch headers of the log from its offset
/// to `end`, then expiry at `now`. Collects the aborts of the markers from `replay_from` on
/// (the first segment whose transaction index must be rebuilt from the log), each with the
/// state it was written in: those below the snapshot by a replay from an older one. Deletes snapshots past `end` first (durably: a later open
/// must not find them once the log has grown past them).
#[allow(clippy::too_many_arguments)]
pub(super) fn rebuild(
    fs: &dyn FileSystem,
    dir: &Path,
    all: Vec<u64>,
    metas: &[SegmentMeta],
    end: u64,
    replay_from: u64,
    now: i64,
    expiration: Duration,
) -> Result<Rebuilt> {
    let stale: Vec<u64> = all.iter().copied().filter(|&o| o > end).collect();
    for &o in &stale {
        let p = snapshot_path(dir, o);
        io::remove_if_exists(fs, &p).map_err(|e| Error::io(&p, e))?;
    }
    if !stale.is_empty() {
        fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut state = ProducerStates::default();
    let mut aborts = Vec::new();
    if all.len() == stale.len() {
        // No snapshot: the log holds no idempotent batch (see `Partition::has_snapshot`), so
        // no transaction either.
        return Ok(Rebuilt {
            state,
            has_snapshot: false,
            aborts,
        });
    }
    let usable = |limit: u64| {
        for &o in all.iter().rev().filter(|&&o| o <= limit) {
            let p = snapshot_path(dir, o);
            // A damaged or unreadable snapshot is passed over: an older one, or the log, has it.
            let Ok(bytes) = fs.read_file(&p) else {
                continue;
            };
            if let Ok(entries) = producer_state::decode_snapshot(&bytes) {
                return (ProducerStates::from_snapshot(&entries), o);
            }
        }
        (ProducerStates::default(), 0)
    };
    let from;
    (state, from) = usable(end);
    if replay_from < from {
        // Markers below the newest snapshot whose index must be rebuilt: replayed from an
        // older snapshot (or the log's first segment: a transaction begun in a deleted
        // segment opens at its first batch still there, all that a reader can see of it),
        // in a state thrown away after.
        let (mut older, older_from) = usable(replay_from);
        replay(fs, dir, metas, older_from, from, &mut older, &mut aborts)?;
    }
    replay(fs, dir, metas, from, end, &mut state, &mut aborts)?;
    state.expire(now, expiration);
    Ok(Rebuilt {
        state,
        has_snapshot: true,
        aborts,
    })
}

/// Applies the idempotent and transactional batches of offsets `from..end` (headers only)
/// and the end-transaction markers among them (a control batch is one short record: read
/// whole), collecting the aborts.
fn replay(
    fs: &dyn FileSystem,
    dir: &Path,
    metas: &[SegmentMeta],
    from: u64,
    end: u64,
    state: &mut ProducerStates,
    aborts: &mut Vec<(u64, AbortedTxn)>,
) -> Result<()> {
    for m in metas
        .iter()
        .filter(|m| m.next_offset > from && m.base < end && m.size > 0)
    {
        let lp = segment::log_path(dir, m.base);
        let log = fs
            .open_file(&lp, OpenMode::Existing)
            .map_err(|e| Error::io(&lp, e))?;
        let mut pos = 0;
        // The open validated (or trusted) every batch up to the segment's size; a header that
        // does not parse ends the walk of this segment rather than failing the open.
        while let Ok(h) = segment::read_header(log.as_ref(), pos, m.size) {
            let at = pos;
            pos += h.total_len() as u64;
            if h.base_offset as u64 >= end {
                break;
            }
            let last = h.last_offset() as u64;
            if last < from || h.producer_id < 0 || h.producer_epoch < 0 {
                continue;
            }
            let producer = ProducerId {
                id: h.producer_id,
                epoch: h.producer_epoch,
            };
            if h.is_control() {
                let mut b = vec![0u8; h.total_len()];
                io::read_exact_at(log.as_ref(), &mut b, at).map_err(|e| Error::io(&lp, e))?;
                // The open validated the batch; one that is no marker is passed over.
                let Ok(marker) = batch::check_batch(&b).and_then(|h| batch::end_txn_marker(&b, &h))
                else {
                    continue;
                };
                let offset = h.base_offset as u64;
                let last_stable = state.aborted_lso(producer.id, offset);
                let first =
                    state.complete_txn(producer, offset, marker.coordinator_epoch, h.max_timestamp);
                if let (Some(first), TxnMarker::Abort) = (first, marker.marker) {
                    aborts.push((
                        m.base,
                        AbortedTxn {
                            producer_id: producer.id,
                            first_offset: first,
                            last_offset: offset,
                            last_stable,
                        },
                    ));
                }
                continue;
            }
            if h.base_sequence < 0 {
                continue;
            }
            state.record(
                producer,
                BatchMeta {
                    first_seq: h.base_sequence,
                    last_seq: h.base_sequence.saturating_add(h.last_offset_delta),
                    base_offset: h.base_offset as u64,
                    last_offset: last,
                    timestamp: h.max_timestamp,
                },
                h.is_transactional(),
            );
        }
    }
    Ok(())
}
