//! One partition of the segmented engine: its directory of segments and the state appends,
//! reads, recovery and retention share. The work is split by concern: `append.rs` (appends,
//! rolls and seals), `read.rs` (reads and time lookups), `load.rs` (open and crash recovery),
//! `retention.rs` (retention and `delete_before`), `verify.rs`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::handles::HandleCache;
use super::segment::{self, SegmentHandle, SegmentMeta};
use crate::error::{Error, Result};
use crate::io::{self, FileSystem};
use crate::options::SegmentedOptions;

/// What partitions share: the file system, the options and the handle cache.
pub(crate) struct Ctx {
    pub(crate) fs: Arc<dyn FileSystem>,
    pub(crate) opts: SegmentedOptions,
    pub(crate) cache: HandleCache,
    /// Set when the store closes; appends check it under the partition lock.
    pub(crate) closed: AtomicBool,
    /// The key index (None when disabled).
    pub(crate) index: Option<crate::index::KeyIndex>,
    /// `StoreOptions::producer_id_expiration`.
    pub(crate) producer_expiration: std::time::Duration,
    /// The store's group commit: poisoned when a transaction index cannot record an abort
    /// whose marker is already in the log (a reopen rebuilds it).
    pub(crate) gc: Arc<crate::durability::GroupCommit>,
    /// Faults active logs in ahead of their appenders (`None`: the thread could not start;
    /// appenders then take the page faults themselves).
    pub(crate) warmer: Option<crate::io::Warmer>,
}

pub(crate) struct PartState {
    /// Oldest first; the last one is active (being appended to).
    pub(super) segments: Vec<SegmentMeta>,
    pub(super) last_timestamp: i64,
    /// Rolled segments not sealed yet (base, the handle written through), oldest first.
    pub(super) pending: Vec<(u64, Arc<SegmentHandle>)>,
    /// Idempotent producers' state (checked and updated under this lock).
    pub(super) producers: crate::producer_state::ProducerStates,
    /// Whether the partition has a producer snapshot file. Without one, its log holds no
    /// idempotent batch (the first idempotent append writes an empty snapshot before it writes
    /// anything: see `producers`), so an open needs no replay to know that.
    pub(super) has_snapshot: bool,
    /// Producer snapshots taken at rolls (offset, entries), written by the seal path once the
    /// segments below them are sealed.
    pub(super) pending_snapshots: Vec<(u64, Vec<crate::producer_state::SnapshotEntry>)>,
    /// Segments (base, whether the write created the file) whose `.txnindex` took an abort
    /// not synced yet: `flush` and the seal sync them before the recovery point or a seal can
    /// make a reopen trust the segment (and so its index) past the marker.
    pub(super) txn_unsynced: Vec<(u64, bool)>,
    /// The active segment's base and its handle as of the last append: appends reach it from
    /// here instead of looking it up in the handle cache (a shard lock, a map probe and an LRU
    /// relink, each a cache miss per append at 1,024 partitions). Weak, so the cache's bound on
    /// open mappings holds; used only while the cache still holds it
    /// ([`SegmentHandle::is_cached`]).
    pub(super) active: Option<ActiveAppend>,
}

/// What an append needs to reach the active segment's writer: its handle, and the addresses
/// the append will touch, to start loading them as soon as the partition lock is taken. At
/// 1,024 partitions each is a cache miss; hinted together they overlap instead of following one
/// another (BENCHMARKS.md "Segmented fan-out: a compact append path").
pub(super) struct ActiveAppend {
    pub(super) base: u64,
    pub(super) handle: Weak<SegmentHandle>,
    /// The log mapping's state, its storage and its first byte ([`crate::io::MappedFile::prefetch_addrs`]).
    hints: [usize; 3],
    /// Where the next batch goes in the log (the segment's size after the last append here).
    pub(super) pos: u64,
}

impl ActiveAppend {
    pub(super) fn new(base: u64, handle: &Arc<SegmentHandle>, pos: u64) -> ActiveAppend {
        ActiveAppend {
            base,
            handle: Arc::downgrade(handle),
            hints: handle.prefetch_addrs().unwrap_or([0; 3]),
            pos,
        }
    }

    /// Hints the CPU to load what the next append touches (see [`crate::io::prefetch`]).
    pub(super) fn prefetch(&self) {
        use crate::io::prefetch;
        let [writer, storage, log] = self.hints;
        if writer == 0 {
            return;
        }
        prefetch(self.handle.as_ptr() as usize);
        prefetch(writer);
        prefetch(writer + 64);
        prefetch(writer + 128);
        prefetch(storage);
        prefetch(log + self.pos as usize);
    }
}

pub(crate) struct Partition {
    pub(crate) uid: u64,
    pub(crate) topic: String,
    pub(crate) id: u32,
    pub(crate) dir: PathBuf,
    pub(super) state: Mutex<PartState>,
    /// Taken by whoever seals pending segments, so two sealers never race on one segment;
    /// retention, `delete_before` and the cleaner's swaps take it too, so only one of them
    /// changes the list of sealed segments at a time.
    pub(super) seal_lock: Mutex<()>,
    /// Held by whoever writes a producer snapshot, from sampling the state through the write:
    /// snapshots at one offset share a file name (and its `.tmp`), so two writers at once could
    /// collide, or an older sample land last and lose a fence after a crash. Taken after
    /// `seal_lock` (when both are), before `state`; never by appends.
    pub(super) snapshot_lock: Mutex<()>,
    /// Held for a whole cleaning pass: one pass per partition at a time.
    pub(super) clean_lock: Mutex<()>,
    /// The cleaner's clean end: offsets below were cleaned by a finished pass (Kafka's first
    /// dirty offset, in `cleaner-offset-checkpoint`).
    pub(crate) clean_end: AtomicU64,
    /// Store time of the oldest tombstone the last cleaning pass kept (`i64::MAX`: none or
    /// unknown): once it is past `delete_retention`, a pass is due even with nothing dirty.
    pub(crate) tombstone_due: AtomicI64,
    pub(crate) end: AtomicU64,
    pub(crate) start: AtomicU64,
    pub(crate) durable_end: AtomicU64,
    pub(crate) dirty: AtomicBool,
    /// Wakes `wait_for` callers of this partition only.
    pub(crate) signal: crate::durability::DataSignal,
    /// Set (under the state lock) when its topic is deleted: appends and flushes stop.
    pub(crate) deleted: AtomicBool,
    /// Set when a segment's files were created (a partition's first append, a roll) and the
    /// directory naming them has not been synced since: the next flush syncs it before it
    /// advances `durable_end` (see `sync_txn_indexes`). Creating a segment then costs no
    /// directory fsync of its own, which made the first append to each of 1,024 new
    /// partitions pay 1,024 of them.
    pub(crate) dir_unsynced: AtomicBool,
    /// Held by a directory sync (`sync_dir`) and by `delete` from after it sets `deleted`
    /// through the directory's removal: a sync never runs on a directory being removed (the
    /// store's sync guard would take the missing directory for a failed sync and poison the
    /// store). Never taken by appends.
    pub(crate) dir_lock: Mutex<()>,
}

impl Partition {
    /// The handle of the segment `meta` describes, from the cache or opened (and cached).
    /// Callers hold the partition lock and pass the segment's current meta: the handle of a
    /// segment not sealed yet writes at `meta.size`, so one opened from a stale copy would,
    /// once cached, have appends write over published batches (`SegmentHandle::append` then
    /// refuses them rather than writing).
    pub(super) fn handle(&self, ctx: &Ctx, meta: &SegmentMeta) -> Result<Arc<SegmentHandle>> {
        let key = (self.uid, meta.base);
        if let Some(h) = ctx.cache.get(key) {
            return Ok(h);
        }
        let h = SegmentHandle::open(
            ctx.fs.as_ref(),
            &self.dir,
            meta,
            ctx.opts.max_index_bytes,
            ctx.opts.segment_bytes,
        )?;
        Ok(ctx.cache.insert(key, Arc::new(h)))
    }

    /// The active segment's handle for an append (the caller holds the partition lock and the
    /// partition has a segment): the one remembered in `st.active` if the cache still holds it
    /// — every handle of a segment not sealed yet is opened under this lock and cached, so
    /// while the cache holds it no other handle of the segment exists — else [`Self::handle`].
    pub(super) fn active_handle(
        &self,
        ctx: &Ctx,
        st: &mut PartState,
    ) -> Result<Arc<SegmentHandle>> {
        let meta = st
            .segments
            .last()
            .ok_or_else(|| Error::corrupted(&self.dir, 0, "partition has no segment"))?;
        if let Some(a) = &st.active
            && a.base == meta.base
            && let Some(h) = a.handle.upgrade()
            && h.is_cached()
        {
            return Ok(h);
        }
        let h = self.handle(ctx, meta)?;
        st.active = Some(ActiveAppend::new(meta.base, &h, meta.size));
        Ok(h)
    }

    /// Makes everything appended so far durable: the active segment's log and those of rolled
    /// segments not sealed yet. Returns the offset now durable.
    pub(crate) fn flush(&self, ctx: &Ctx) -> Result<u64> {
        let (end, handles) = {
            let st = self.state.lock();
            let end = self.end.load(Ordering::Acquire);
            if self.deleted.load(Ordering::Acquire) {
                return Ok(end);
            }
            let Some(active) = st.segments.last() else {
                return Ok(end);
            };
            let mut handles: Vec<Arc<SegmentHandle>> =
                st.pending.iter().map(|(_, h)| Arc::clone(h)).collect();
            handles.push(self.handle(ctx, active)?);
            (end, handles)
        };
        for h in handles {
            h.sync()?;
        }
        self.sync_txn_indexes(ctx)?;
        self.durable_end.fetch_max(end, Ordering::AcqRel);
        Ok(end)
    }

    /// Syncs the transaction indexes that took an abort since the last call, and the
    /// partition's directory if a segment or transaction index was created since it was last
    /// synced. `flush` and the seal call it after syncing the logs and before anything claims
    /// them durable (`durable_end`, a sealed segment): a segment's log is durable only once its
    /// directory entry is. A failure puts the work back for the next flush.
    pub(crate) fn sync_txn_indexes(&self, ctx: &Ctx) -> Result<()> {
        // Held through every sync below: a second flush must not find the work taken by a
        // first whose syncs are still running and claim its own end durable before they are
        // done (it waits here, then finds the work done or put back).
        let _dir = self.dir_lock.lock();
        if self.deleted.load(Ordering::Acquire) {
            // Its directory is gone or going, with nothing left to make durable.
            return Ok(());
        }
        // Taken before the syncs below: a segment created after this swap sets it again.
        let new_entries = self.dir_unsynced.swap(false, Ordering::AcqRel);
        if new_entries && let Err(e) = self.sync_dir_locked(ctx) {
            self.dir_unsynced.store(true, Ordering::Release);
            return Err(e);
        }
        let unsynced = std::mem::take(&mut self.state.lock().txn_unsynced);
        let fs = ctx.fs.as_ref();
        let synced = (|| {
            for &(base, _) in &unsynced {
                let path = super::txnindex::path(&self.dir, base);
                match fs.open_file(&path, io::OpenMode::Existing) {
                    Ok(f) => f.sync_data().map_err(|e| Error::io(&path, e))?,
                    // Its segment was deleted meanwhile: nothing left to sync.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io(&path, e)),
                }
            }
            if unsynced.iter().any(|&(_, created)| created) {
                self.sync_dir_locked(ctx)?;
            }
            Ok(())
        })();
        if synced.is_err() {
            let mut st = self.state.lock();
            let newer = std::mem::replace(&mut st.txn_unsynced, unsynced);
            st.txn_unsynced.extend(newer);
        }
        synced
    }

    /// Syncs the partition's directory, unless its topic was deleted (then it is gone, with
    /// nothing left to make durable).
    pub(crate) fn sync_dir(&self, ctx: &Ctx) -> Result<()> {
        let _dir = self.dir_lock.lock();
        if self.deleted.load(Ordering::Acquire) {
            return Ok(());
        }
        self.sync_dir_locked(ctx)
    }

    /// [`Self::sync_dir`] for a caller that holds `dir_lock` and checked `deleted`.
    fn sync_dir_locked(&self, ctx: &Ctx) -> Result<()> {
        ctx.fs
            .sync_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))
    }

    /// Writes a producer snapshot at the partition's end (a clean close: everything is synced),
    /// if the partition keeps snapshots, and deletes the ones it supersedes.
    pub(crate) fn write_producer_snapshot(&self, ctx: &Ctx) -> Result<()> {
        let _writer = self.snapshot_lock.lock();
        let (end, entries) = {
            let mut st = self.state.lock();
            if !st.has_snapshot || self.deleted.load(Ordering::Acquire) {
                return Ok(());
            }
            st.producers
                .expire(crate::clock::now_ms(), ctx.producer_expiration);
            (self.end.load(Ordering::Acquire), st.producers.snapshot())
        };
        super::producers::write(ctx.fs.as_ref(), &self.dir, end, &entries)?;
        super::producers::prune(ctx.fs.as_ref(), &self.dir, &self.segment_bases())
    }

    /// (start, end, last stable offset), read together under the partition lock (appends and
    /// markers publish their end under it).
    pub(crate) fn stable_bounds(&self) -> (u64, u64, u64) {
        let st = self.state.lock();
        let start = self.start.load(Ordering::Acquire);
        let end = self.end.load(Ordering::Acquire);
        (start, end, st.producers.last_stable(start, end))
    }

    /// The bases of the segments that have aborts (a `.txnindex`), ascending.
    pub(crate) fn txn_segment_bases(&self) -> Vec<u64> {
        let st = self.state.lock();
        st.segments
            .iter()
            .filter(|m| m.txn_entries > 0)
            .map(|m| m.base)
            .collect()
    }

    /// The bases of the partition's segments, ascending.
    pub(super) fn segment_bases(&self) -> Vec<u64> {
        self.state.lock().segments.iter().map(|m| m.base).collect()
    }

    /// Writes a producer snapshot at the partition's end after syncing its log up to there (so
    /// the snapshot claims only durable batches), if the partition keeps snapshots. Called
    /// before segments are deleted: the newest snapshot on disk may be older than them (one a
    /// crash kept from being written at a roll).
    ///
    /// Also what makes a fence durable (`fence_epoch`): a success here records that the
    /// fences sampled with the state are on disk.
    pub(crate) fn snapshot_producers_durably(&self, ctx: &Ctx) -> Result<()> {
        let _writer = self.snapshot_lock.lock();
        let (end, entries, fences) = {
            let mut st = self.state.lock();
            if !st.has_snapshot || self.deleted.load(Ordering::Acquire) {
                return Ok(());
            }
            st.producers
                .expire(crate::clock::now_ms(), ctx.producer_expiration);
            let end = self.end.load(Ordering::Acquire);
            // A roll's snapshot at this same offset, still waiting for its seal, is older
            // than this sample: written after it, it would replace it.
            st.pending_snapshots.retain(|(o, _)| *o != end);
            (
                end,
                st.producers.snapshot(),
                st.producers.fence_generation(),
            )
        };
        // Syncs everything appended so far, so every offset below `end`.
        self.flush(ctx)?;
        super::producers::write(ctx.fs.as_ref(), &self.dir, end, &entries)?;
        self.state.lock().producers.fences_durable(fences);
        Ok(())
    }

    /// The last offset of each idempotent producer's last batch (what the cleaner keeps).
    pub(crate) fn producer_last_offsets(&self) -> std::collections::HashSet<u64> {
        let st = self.state.lock();
        st.producers.last_offsets()
    }

    /// Before the partition's first idempotent batch: writes an empty snapshot at its end, so
    /// that "no snapshot file" keeps meaning "no idempotent batch in the log" (an open then
    /// skips the replay). Once per partition; serialised with seals by the seal lock.
    pub(crate) fn start_tracking_producers(&self, ctx: &Ctx) -> Result<()> {
        let _one = self.seal_lock.lock();
        let end = {
            let st = self.state.lock();
            if st.has_snapshot {
                return Ok(());
            }
            if self.deleted.load(Ordering::Acquire) {
                return Err(Error::UnknownTopic(self.topic.clone()));
            }
            self.end.load(Ordering::Acquire)
        };
        // The state below `end` is empty: the log holds no idempotent batch yet.
        let _writer = self.snapshot_lock.lock();
        super::producers::write(ctx.fs.as_ref(), &self.dir, end, &[])?;
        self.state.lock().has_snapshot = true;
        Ok(())
    }

    /// Makes the active segment's index entries durable and cuts its log to its batches (for a
    /// clean close, whose next open trusts both). The caller has stopped appends and flushed
    /// the log.
    pub(crate) fn sync_active_indexes(&self, ctx: &Ctx) -> Result<()> {
        let (handle, size) = {
            let st = self.state.lock();
            if self.deleted.load(Ordering::Acquire) {
                return Ok(());
            }
            match st.segments.last() {
                Some(active) => (self.handle(ctx, active)?, active.size),
                None => return Ok(()),
            }
        };
        handle.sync_indexes()?;
        handle.sync()?;
        handle.trim_log(ctx.fs.as_ref(), size, false)
    }

    /// Whether appends may have left data that is not durable yet.
    pub(crate) fn has_unsynced(&self) -> bool {
        self.durable_end.load(Ordering::Acquire) < self.end.load(Ordering::Acquire)
            || !self.state.lock().pending.is_empty()
    }

    /// Segment files and their sizes, for `disk_usage`.
    pub(crate) fn usage(&self, ctx: &Ctx) -> (u64, u64) {
        let st = self.state.lock();
        let mut files = 0;
        let mut bytes = 0;
        for m in &st.segments {
            for p in [
                segment::log_path(&self.dir, m.base),
                segment::index_path(&self.dir, m.base),
                segment::time_index_path(&self.dir, m.base),
                super::txnindex::path(&self.dir, m.base),
            ] {
                if let Ok(len) = ctx.fs.file_len(&p) {
                    files += 1;
                    bytes += len;
                }
            }
        }
        (files, bytes)
    }
}

pub(super) fn remove_segment_files(fs: &dyn FileSystem, dir: &Path, base: u64) -> Result<()> {
    for p in [
        segment::log_path(dir, base),
        segment::index_path(dir, base),
        segment::time_index_path(dir, base),
        super::txnindex::path(dir, base),
    ] {
        io::remove_if_exists(fs, &p).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

impl Partition {
    /// Bytes of the partition's segment logs.
    pub(crate) fn log_bytes(&self) -> u64 {
        self.state.lock().segments.iter().map(|m| m.size).sum()
    }

    /// Stops appends and flushes (under the partition's locks, so none is halfway through),
    /// forgets its open segments and removes its directory. The caller has already taken the
    /// topic out of the catalog and syncs the store directory afterwards.
    pub(crate) fn delete(&self, ctx: &Ctx) -> Result<()> {
        {
            let _seal = self.seal_lock.lock();
            let mut st = self.state.lock();
            self.deleted.store(true, Ordering::Release);
            for m in &st.segments {
                ctx.cache.remove((self.uid, m.base));
            }
            st.pending.clear();
            st.pending_snapshots.clear();
        }
        self.signal.notify();
        // A cleaning pass in progress sees `deleted` and stops at its next check; waiting for
        // it here means no `.cleaned` or `.swap` file appears in the directory being removed.
        drop(self.clean_lock.lock());
        // `deleted` is set: a directory sync waiting for this lock then skips the directory.
        let _dir = self.dir_lock.lock();
        io::remove_tree(ctx.fs.as_ref(), &self.dir).map_err(|e| Error::io(&self.dir, e))
    }
}
