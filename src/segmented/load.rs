//! Opening a partition: listing its segments, trusting what a clean shutdown or the recovery
//! point vouches for, validating the rest batch by batch, truncating at the first invalid batch.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};

use parking_lot::Mutex;

use super::batch;
use super::early_index::EarlyIndexes;
use super::index::{self, OFFSET_ENTRY, TIME_ENTRY};
use super::partition::{Ctx, PartState, Partition, remove_segment_files};
use super::segment::{self, SegmentMeta};
use super::txnindex::{self, AbortedTxn};
use crate::error::{Error, Result};
use crate::io::{self, FileSystem, OpenMode};

/// How to load a partition.
pub(crate) struct LoadSpec<'a> {
    pub(crate) uid: u64,
    pub(crate) topic: &'a str,
    pub(crate) id: u32,
    pub(crate) dir: PathBuf,
    /// The last shutdown was clean: trust the files.
    pub(crate) clean: bool,
    /// Everything before this offset is known durable (unclean opens recover from its segment).
    pub(crate) recovery_point: u64,
    pub(crate) log_start: u64,
    /// The cleaner's clean end from its checkpoint (0: clean from the start).
    pub(crate) clean_end: u64,
    /// The segments `txn-index-checkpoint` says have aborts: one whose `.txnindex` is missing
    /// is rebuilt, not trusted as "no abort".
    pub(crate) txn_segments: Vec<u64>,
}

/// The bases of the segments in `dir` and the offsets of its producer snapshots, ascending.
fn list_segments(fs: &dyn FileSystem, dir: &Path) -> Result<(Vec<u64>, Vec<u64>)> {
    let mut bases = Vec::new();
    let mut snapshots = Vec::new();
    let mut indexes = Vec::new();
    for e in io::list_dir_or_empty(fs, dir).map_err(|e| Error::io(dir, e))? {
        let name = e.name.as_str();
        let (stem, ext) = name.rsplit_once('.').unwrap_or((name, ""));
        match (io::parse_offset_name(stem), ext) {
            (Some(base), "log") => bases.push(base),
            (Some(base), "index" | "timeindex" | "txnindex") => {
                indexes.push((base, e.name.clone()))
            }
            // Producer snapshots: read by `producers::rebuild`.
            (Some(offset), "snapshot") => snapshots.push(offset),
            (_, "tmp") => {
                let p = dir.join(name);
                fs.remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
            // Left by a cleaner swap that `finish_interrupted_swaps` found nothing to do with.
            (_, "cleaned" | "swap") => {
                let p = dir.join(name);
                fs.remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
            _ => {
                return Err(Error::corrupted(
                    dir.join(name),
                    0,
                    "unexpected file in a partition directory",
                ));
            }
        }
    }
    bases.sort_unstable();
    snapshots.sort_unstable();
    // Index files without a log: a segment creation cut short (the log is created first) or
    // a seal that finished after retention removed its segment. Nothing refers to them.
    for (base, name) in indexes {
        if bases.binary_search(&base).is_err() {
            let p = dir.join(name);
            fs.remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok((bases, snapshots))
}

/// Kafka's `LogLoader` for a cleaner swap cut short (see `cleaner.rs` for the protocol):
/// `.cleaned` files are an unfinished recopy whose old segments are all intact, so they go.
/// A `<base>.log.swap` was complete and synced before it got that name, so its swap is
/// finished: every other segment whose base lies in the offsets it covers (`base` to its last
/// batch's last offset, which is the replaced group's last offset: the cleaner keeps each
/// group's last batch) is deleted, its indexes are deleted (the open rebuilds them from the
/// log, whichever of the old and new ones were in place), and it is renamed to `<base>.log`.
/// Index `.swap` files without a log `.swap` belong to a swap that never committed (or one
/// whose indexes were renamed into place already) and go. Runs before the segments are listed.
fn finish_interrupted_swaps(ctx: &Ctx, dir: &Path) -> Result<()> {
    let fs = ctx.fs.as_ref();
    let entries = io::list_dir_or_empty(fs, dir).map_err(|e| Error::io(dir, e))?;
    let mut logs = Vec::new();
    let mut swap_logs = Vec::new();
    let mut leftovers = Vec::new();
    for e in &entries {
        let name = e.name.as_str();
        if let Some(stem) = name.strip_suffix(".log")
            && let Some(base) = io::parse_offset_name(stem)
        {
            logs.push(base);
        }
        if name.ends_with(&format!(".{}", segment::CLEANED_SUFFIX)) {
            leftovers.push(dir.join(name));
        } else if let Some(stem) = name.strip_suffix(&format!(".{}", segment::SWAP_SUFFIX)) {
            match stem.strip_suffix(".log").and_then(io::parse_offset_name) {
                Some(base) => swap_logs.push(base),
                None => leftovers.push(dir.join(name)),
            }
        }
    }
    if leftovers.is_empty() && swap_logs.is_empty() {
        return Ok(());
    }
    for p in &leftovers {
        io::remove_if_exists(fs, p).map_err(|e| Error::io(p, e))?;
    }
    swap_logs.sort_unstable();
    for base in swap_logs {
        let final_log = segment::log_path(dir, base);
        let swap = segment::with_suffix(&final_log, segment::SWAP_SUFFIX);
        let log = fs
            .open_file(&swap, OpenMode::Existing)
            .map_err(|e| Error::io(&swap, e))?;
        let len = log.len().map_err(|e| Error::io(&swap, e))?;
        // Validated in full. A `.swap` log was complete and synced before it got its name, so
        // damage here is rot, not a crash: one without a single valid batch is no cleaned
        // segment (those always keep their last batch) and is dropped, the old segments
        // staying; one with a damaged tail is cut to its valid prefix and covers only that, so
        // old segments past it stay — never a scan that truncates it and takes every later
        // segment with it.
        let scan = segment::scan(
            log.as_ref(),
            base,
            len,
            ctx.opts.index_interval_bytes,
            ctx.opts.max_index_bytes,
            0,
        );
        if scan.valid_size == 0 {
            drop(log);
            for p in [
                swap.clone(),
                segment::with_suffix(&segment::index_path(dir, base), segment::SWAP_SUFFIX),
                segment::with_suffix(&segment::time_index_path(dir, base), segment::SWAP_SUFFIX),
            ] {
                io::remove_if_exists(fs, &p).map_err(|e| Error::io(&p, e))?;
            }
            continue;
        }
        if scan.valid_size < len {
            log.set_len(scan.valid_size)
                .map_err(|e| Error::io(&swap, e))?;
            log.sync_data().map_err(|e| Error::io(&swap, e))?;
        }
        drop(log);
        for &old in logs.iter().filter(|&&b| b > base && b < scan.next_offset) {
            remove_segment_files(fs, dir, old)?;
        }
        // The replaced segments are gone for good before the swapped one takes its name, so
        // no crash can leave both (on a file system that reorders directory operations too).
        fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
        for p in [
            segment::index_path(dir, base),
            segment::time_index_path(dir, base),
        ] {
            for p in [segment::with_suffix(&p, segment::SWAP_SUFFIX), p] {
                io::remove_if_exists(fs, &p).map_err(|e| Error::io(&p, e))?;
            }
        }
        fs.rename(&swap, &final_log)
            .map_err(|e| Error::io(&swap, e))?;
    }
    fs.sync_dir(dir).map_err(|e| Error::io(dir, e))
}

/// Entries in a preallocated index file: its non-zero prefix, found by binary search with
/// positional reads (entries are never all zero). Also returns the last entry.
fn count_entries(fs: &dyn FileSystem, path: &Path, unit: usize) -> Result<(u64, Option<Vec<u8>>)> {
    let len = fs.file_len(path).map_err(|e| Error::io(path, e))?;
    let f = fs
        .open_file(path, OpenMode::Existing)
        .map_err(|e| Error::io(path, e))?;
    let mut buf = vec![0u8; unit];
    let mut present = |k: u64| -> Result<bool> {
        io::read_exact_at(f.as_ref(), &mut buf, k * unit as u64).map_err(|e| Error::io(path, e))?;
        Ok(buf.iter().any(|&b| b != 0))
    };
    let (mut lo, mut hi) = (0u64, len / unit as u64);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if present(mid)? {
            lo = mid + 1
        } else {
            hi = mid
        }
    }
    if lo == 0 {
        return Ok((0, None));
    }
    let mut last = vec![0u8; unit];
    io::read_exact_at(f.as_ref(), &mut last, (lo - 1) * unit as u64)
        .map_err(|e| Error::io(path, e))?;
    Ok((lo, Some(last)))
}

/// Opens a partition directory: trusts segments before the recovery point (a clean shutdown
/// trusts all), validates the others batch by batch, truncates at the first invalid batch,
/// removes the segments after it, and rebuilds the indexes of everything it validated.
pub(crate) fn load(ctx: &Ctx, spec: LoadSpec<'_>) -> Result<Partition> {
    let fs = ctx.fs.as_ref();
    let dir = &spec.dir;
    let o = &ctx.opts;
    io::create_dir_durable(fs, dir).map_err(|e| Error::io(dir, e))?;
    finish_interrupted_swaps(ctx, dir)?;
    let (mut bases, snapshots) = list_segments(fs, dir)?;
    // The first segment that must be validated.
    let recover_from = if spec.clean {
        bases.len()
    } else {
        bases
            .partition_point(|&b| b <= spec.recovery_point)
            .saturating_sub(1)
    };
    let mut metas: Vec<SegmentMeta> = Vec::with_capacity(bases.len());
    // Per segment: whether its transaction index is rebuilt from the log (it was validated
    // from the log, not trusted).
    let mut rebuild_txn: Vec<bool> = Vec::with_capacity(bases.len());
    let mut i = 0;
    while i < bases.len() {
        let base = bases[i];
        let last = i + 1 == bases.len();
        let lp = segment::log_path(dir, base);
        let size = fs.file_len(&lp).map_err(|e| Error::io(&lp, e))?;
        let oi = segment::index_path(dir, base);
        let ti = segment::time_index_path(dir, base);
        let has_oi = fs.exists(&oi).map_err(|e| Error::io(&oi, e))?;
        let has_ti = fs.exists(&ti).map_err(|e| Error::io(&ti, e))?;
        let have_indexes = has_oi && has_ti;
        let mut meta = SegmentMeta::new(base);
        meta.size = size;
        // A segment rolled but not sealed before a crash still has untrimmed indexes (and no
        // final time entry): it is validated, never trusted.
        let trusted = if i < recover_from && have_indexes && !last {
            segment::sealed_indexes(fs, dir, base, size)?
        } else {
            None
        };
        let mut rebuild = trusted.is_none();
        if let Some(sealed) = trusted {
            // Trusted sealed segment: its indexes were trimmed and synced when it was sealed.
            meta.next_offset = bases[i + 1];
            meta.index_entries = sealed.index_entries;
            meta.time_entries = sealed.time_entries;
            meta.max_timestamp = sealed.max_timestamp;
            meta.sealed = true;
        } else {
            let log = fs
                .open_file(&lp, OpenMode::Existing)
                .map_err(|e| Error::io(&lp, e))?;
            let trust_tail = spec.clean && have_indexes && last;
            // The active segment of a clean shutdown with its index entries held in memory (see
            // `early_index`): validated (it is small), its damage stepped over, not cut.
            let early_tail = spec.clean && !have_indexes && last;
            let scan = if trust_tail {
                None
            } else {
                let trusted_below = if spec.clean { 0 } else { spec.recovery_point };
                // After a crash, skip the part of the segment below the recovery point using
                // its offset index as (checked) hints; otherwise validate from the start.
                let resume = if trusted_below > base && have_indexes {
                    fs.open_file(&oi, OpenMode::Existing).ok().and_then(|idx| {
                        segment::resume_state(
                            log.as_ref(),
                            idx.as_ref(),
                            base,
                            size,
                            o.max_index_bytes,
                            trusted_below,
                        )
                    })
                } else {
                    None
                };
                // Without index files (entries held in memory) there is nothing to resume from:
                // damage in data known good (a clean shutdown's, or below the recovery point)
                // is stepped over rather than cut, as a resumed scan never reaches it.
                // After a clean shutdown its recovery point is the partition's end (if it was
                // recorded), and no batch holds offsets past the next segment's base.
                let next_base = bases.get(i + 1).copied().unwrap_or(u64::MAX);
                let keep_below = match (have_indexes, spec.clean) {
                    (true, _) => None,
                    (false, true) if spec.recovery_point > base => Some(spec.recovery_point),
                    (false, true) => Some(u64::MAX),
                    (false, false) => Some(spec.recovery_point),
                };
                Some(match (resume, keep_below) {
                    (None, Some(keep_below)) => segment::scan_keeping(
                        log.as_ref(),
                        base,
                        size,
                        o.index_interval_bytes,
                        o.max_index_bytes,
                        keep_below,
                        match spec.clean {
                            true => keep_below.min(next_base),
                            false => next_base,
                        },
                    ),
                    (resume, _) => segment::scan_from(
                        log.as_ref(),
                        base,
                        size,
                        o.index_interval_bytes,
                        o.max_index_bytes,
                        trusted_below,
                        resume.unwrap_or_else(|| segment::ScanResult::start(base)),
                    ),
                })
            };
            match scan {
                Some(scan) => {
                    // A rolled segment whose batches reach the next segment's base is whole:
                    // what follows them is the zeros its mapping grew into before the seal
                    // could cut them (a crash in between), not a torn write.
                    let whole = bases.get(i + 1) == Some(&scan.next_offset);
                    if scan.valid_size < size {
                        // Truncate the first invalid batch and everything after it.
                        log.set_len(scan.valid_size)
                            .map_err(|e| Error::io(&lp, e))?;
                        log.sync_data().map_err(|e| Error::io(&lp, e))?;
                        if !whole {
                            for &later in &bases[i + 1..] {
                                remove_segment_files(fs, dir, later)?;
                            }
                            fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
                            bases.truncate(i + 1);
                        }
                    } else if !spec.clean && scan.next_offset > spec.recovery_point {
                        // What was validated past the recovery point may exist only in the page
                        // cache (a process crash); the recovery point written at open will claim
                        // it, and the next unclean open trusts what it claims.
                        log.sync_data().map_err(|e| Error::io(&lp, e))?;
                    }
                    let sealed = i + 1 < bases.len();
                    // The active segment of a partition that never grew past the early entries
                    // (see `early_index`) keeps them in memory again; any other has its
                    // indexes written.
                    let early = (!sealed && !have_indexes)
                        .then(|| EarlyIndexes::holding(&scan.offset_entries, &scan.time_entries))
                        .flatten();
                    match early {
                        Some(early) => {
                            // A file left by a crash while the two were being created goes
                            // (durably: a clean open would trust one that came back).
                            for (p, exists) in [(&oi, has_oi), (&ti, has_ti)] {
                                if exists {
                                    io::remove_if_exists(fs, p).map_err(|e| Error::io(p, e))?;
                                }
                            }
                            if has_oi || has_ti {
                                fs.sync_dir(dir).map_err(|e| Error::io(dir, e))?;
                            }
                            meta.early = Some(Arc::new(early));
                            // Trusted whole, as `trust_tail` is: the producer state and the
                            // transaction index come from their files.
                            rebuild = rebuild && !(early_tail && scan.valid_size == size);
                        }
                        None => {
                            segment::write_indexes(fs, dir, base, &scan, sealed, o.max_index_bytes)?
                        }
                    }
                    meta.apply_scan(&scan);
                    if sealed {
                        meta.next_offset = bases[i + 1].max(scan.next_offset);
                        meta.time_entries = (segment::sealed_time_entries(
                            &scan.time_entries,
                            base,
                            scan.max_timestamp,
                            scan.next_offset,
                        )
                        .len()
                            / TIME_ENTRY) as u64;
                    }
                    meta.sealed = sealed;
                }
                None => {
                    // Clean shutdown, active segment: count the (preallocated) indexes' entries
                    // with a binary search and scan only past the last offset-index entry.
                    let (o_count, o_last) = count_entries(fs, &oi, OFFSET_ENTRY)?;
                    let (t_count, t_last) = count_entries(fs, &ti, TIME_ENTRY)?;
                    let from = o_last.map_or(0, |e| u64::from(index::offset_at(&e, 0).1));
                    match scan_tail(log.as_ref(), base, from, size) {
                        Some((next, max_ts)) => {
                            rebuild = false;
                            let last_ts = t_last.map_or(-1, |e| index::time_at(&e, 0).0);
                            meta.next_offset = next;
                            meta.max_timestamp = max_ts.max(last_ts);
                            meta.index_entries = o_count;
                            meta.time_entries = t_count;
                            meta.bytes_since_index = size - from;
                            meta.last_time_indexed = last_ts;
                        }
                        None => {
                            // The tail does not parse after a "clean" shutdown: recover it.
                            let scan = segment::scan(
                                log.as_ref(),
                                base,
                                size,
                                o.index_interval_bytes,
                                o.max_index_bytes,
                                0,
                            );
                            if scan.valid_size < size {
                                log.set_len(scan.valid_size)
                                    .map_err(|e| Error::io(&lp, e))?;
                                log.sync_data().map_err(|e| Error::io(&lp, e))?;
                            }
                            segment::write_indexes(fs, dir, base, &scan, false, o.max_index_bytes)?;
                            meta.apply_scan(&scan);
                        }
                    }
                    meta.sealed = false;
                }
            }
            if !meta.sealed && meta.size > 0 {
                // `segment_ms` counts from the first batch's time, across reopens.
                meta.first_timestamp = segment::read_header(log.as_ref(), 0, meta.size)
                    .map_or(-1, |h| h.max_timestamp);
            }
        }
        metas.push(meta);
        rebuild_txn.push(rebuild);
        i += 1;
    }
    // Segments truncated away above took their flags with them.
    rebuild_txn.truncate(metas.len());
    // Trusted segments' transaction indexes are checked; a bad one is rebuilt.
    for (m, rebuild) in metas.iter_mut().zip(rebuild_txn.iter_mut()) {
        if !*rebuild {
            match read_txn_index(fs, dir, m) {
                Some(0) if spec.txn_segments.contains(&m.base) => *rebuild = true,
                Some(n) => m.txn_entries = n,
                None => *rebuild = true,
            }
        }
    }
    let replay_from = metas
        .iter()
        .zip(&rebuild_txn)
        .find(|(_, r)| **r)
        .map_or(u64::MAX, |(m, _)| m.base);
    let end = metas.last().map_or(spec.log_start, |m| m.next_offset);
    let first_base = metas.first().map_or(0, |m| m.base);
    let start = spec.log_start.max(first_base).min(end);
    let last_timestamp = metas.iter().map(|m| m.max_timestamp).max().unwrap_or(-1);
    let rebuilt = super::producers::rebuild(
        fs,
        dir,
        snapshots,
        &metas,
        end,
        replay_from,
        crate::clock::now_ms(),
        ctx.producer_expiration,
    )?;
    for (m, _) in metas.iter_mut().zip(&rebuild_txn).filter(|(_, r)| **r) {
        let entries: Vec<AbortedTxn> = rebuilt
            .aborts
            .iter()
            .filter(|(base, _)| *base == m.base)
            .map(|(_, e)| *e)
            .collect();
        txnindex::write_all(fs, dir, m.base, &entries)?;
        m.txn_entries = entries.len() as u64;
    }
    let (producers, has_snapshot) = (rebuilt.state, rebuilt.has_snapshot);
    Ok(Partition {
        uid: spec.uid,
        topic: spec.topic.to_owned(),
        id: spec.id,
        dir: spec.dir,
        state: Mutex::new(PartState {
            segments: metas,
            last_timestamp,
            pending: Vec::new(),
            producers,
            has_snapshot,
            pending_snapshots: Vec::new(),
            txn_unsynced: Vec::new(),
            active: None,
        }),
        seal_lock: Mutex::new(()),
        snapshot_lock: Mutex::new(()),
        clean_lock: Mutex::new(()),
        clean_end: AtomicU64::new(spec.clean_end.min(end)),
        tombstone_due: AtomicI64::new(i64::MAX),
        end: AtomicU64::new(end),
        start: AtomicU64::new(start),
        durable_end: AtomicU64::new(end),
        dirty: AtomicBool::new(false),
        signal: Default::default(),
        deleted: Default::default(),
        dir_unsynced: AtomicBool::new(false),
        dir_lock: Mutex::new(()),
    })
}

/// The entry count of segment `m`'s transaction index (0 without one), or `None` if the file
/// does not check out (see `txnindex::decode`) and must be rebuilt.
fn read_txn_index(fs: &dyn FileSystem, dir: &Path, m: &SegmentMeta) -> Option<u64> {
    let p = txnindex::path(dir, m.base);
    match fs.read_file(&p) {
        Ok(b) => txnindex::decode(&b, m.base, m.next_offset)
            .ok()
            .map(|v| v.len() as u64),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(0),
        Err(_) => None,
    }
}

/// Scans batch headers from `from` to `size`: the next offset and newest max timestamp, or
/// `None` if a batch does not check out.
fn scan_tail(
    log: &dyn crate::io::StorageFile,
    base: u64,
    from: u64,
    size: u64,
) -> Option<(u64, i64)> {
    let mut pos = from;
    let mut next = base;
    let mut max_ts = -1;
    let mut buf = Vec::new();
    while pos < size {
        let total = segment::read_header(log, pos, size).ok()?.total_len() as u64;
        buf.resize(total as usize, 0);
        io::read_exact_at(log, &mut buf, pos).ok()?;
        let header = batch::check_batch(&buf).ok()?;
        next = header.last_offset() as u64 + 1;
        max_ts = max_ts.max(header.max_timestamp);
        pos += total;
    }
    if from > 0 && next == base {
        return None;
    }
    Some((next, max_ts))
}
