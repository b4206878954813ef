//! [`SimFs`]: a simulated disk behind the storage interface, for crash-testing duolog and the
//! services built on it.
//!
//! Put it behind a store with `StoreOptions { fs: Arc::new(sim.clone()), .. }`, run a workload,
//! stop the store as a process crash would ([`LogStore::abandon`](crate::LogStore::abandon)),
//! take the disk as a power cut would leave it ([`SimFs::crash`]) and reopen the store on that
//! disk: whatever the store acknowledged as durable must be there. Faults (EIO, ENOSPC, EACCES)
//! are injected by countdown ([`SimFs::fail_after`]) or on every sync ([`SimFs::fail_syncs`]).
//! The README's "Testing your service's crash recovery" and `examples/crash_test.rs` show a
//! whole property test.
//!
//! # The model
//!
//! Every file has a *volatile* image (what the running process reads: the page cache) and a
//! *durable* image (what survives a power cut). Every directory entry is either durable or
//! pending.
//!
//! | operation | changes at once | durable when |
//! |---|---|---|
//! | [`StorageFile::write_all_at`], [`StorageFile::set_len`] | the volatile image | the file's next [`StorageFile::sync_data`] (the whole file) |
//! | stores into a mapping ([`FileSystem::map_file`]) | the mapped memory | [`MappedStorage::flush_range`] over them (exactly that range) |
//! | [`MappedStorage::release`] (the real disk's `MADV_DONTNEED`) | the resident set only: the bytes stay visible to reads and to the next mapping | still only the [`MappedStorage::flush_range`] over them: released is not flushed |
//! | [`MappedStorage::zero_range`] | both images | at once |
//! | [`FileSystem::write_file_synced`] | both images | the contents at once; a new file's entry as below |
//! | creating a file (`open_file(CreateNew)`, `map_file(Create)`, `write_file_synced`), [`FileSystem::rename`], [`FileSystem::remove_file`] | the listing | [`FileSystem::sync_dir`] of its directory (a rename: of either directory) |
//! | each directory [`FileSystem::create_dir_all`] creates, [`FileSystem::remove_dir`] | the listing | [`FileSystem::sync_dir`] of its parent |
//!
//! Roots (`/`, and the empty path relative paths hang from) are always durable. A new disk is
//! empty: even a directory a test creates itself is pending until its parent is synced
//! ([`create_dir_durable`](super::create_dir_durable) does both).
//!
//! # What every crash guarantees
//!
//! Whatever the [`CrashMode`] and the seed:
//! - **Synced data survives**: every byte made durable (table above) and not written since
//!   reads back exactly, in a file whose entry and every ancestor directory's entry are durable.
//! - **Durable entries survive**, and an entry operation is atomic: a durable file that was
//!   renamed is under its old name or its new one, never both or neither, with the same
//!   contents either way (a file the new name replaced is there exactly when the old name is).
//! - **Nothing is invented**, except by the modes that say so: bytes that were never written
//!   appear only as [`CrashMode::ExtendWithZeros`]'s zeros, [`CrashMode::ExtendWithGarbage`]'s
//!   random bytes, the zeros of a mapped file's never-synced sectors, and holes (a write kept
//!   past a shorter durable end leaves zeros between them, as on any file system).
//! - **It is deterministic**: the same disk, mode and seed give the same result. The crashed
//!   disk is a new, independent `SimFs` (operation count 0, no faults, no locks held); the
//!   original is unchanged and can be crashed again with another mode or seed.
//!
//! # What a crash may do to what was not synced
//!
//! - **Entries**: every pending entry operation is lost, except that
//!   [`CrashMode::PersistPrefix`] and [`CrashMode::PersistSubset`] keep a random prefix of them,
//!   in the order they were issued across all directories (file systems journal metadata in
//!   order). A file whose entry is lost is gone with all its data, synced or not; a directory
//!   whose entry is lost is gone with everything under it, synced or not.
//! - **Data of positional files** ([`StorageFile`]): the unit is one `write_all_at` or `set_len`,
//!   and each file's unsynced ones are kept, dropped, reordered or torn as the mode says.
//! - **Data of mapped files**: the unit is the 512-byte sector (at a multiple of 512 from the
//!   start of the file) whose memory differs from the durable image, taken in file order: the
//!   page cache writes back in an order unrelated to the order of the stores. A mapped file
//!   keeps the length it was created with (its preallocation counts as durable); a length it
//!   grew to ([`MappedStorage::grow`]) is durable once a flush of the file follows the grow,
//!   and before that is kept or lost as a whole (always lost under
//!   [`CrashMode::DropUnsynced`], always kept under the modes that extend files, either way
//!   otherwise), with everything written past the shorter length. A sector that was never
//!   synced and is not kept reads as zeros.
//!
//! # What it does not model
//!
//! - A failed sync changes nothing: the data stays pending, and a later sync that succeeds makes
//!   it durable. Linux may instead drop the dirty pages a failed `fsync` covered and report
//!   success next time (fsyncgate), so a service must never retry a failed sync and trust it
//!   (duolog turns `Poisoned`). Tests of that path inject the failure and check the service
//!   stops, not what a retry would have saved.
//! - Space: ENOSPC happens only when injected. Reads never fail or return damage unless a fault
//!   is injected or [`SimFs::flip_bit`] rots a byte.
//! - `exists`, `file_len`, `lock_file`, a positional file's `len`, and loads and stores in
//!   mapped memory are not counted operations: they never fail by injection.
//! - Time and concurrency: a crash is a snapshot of the disk when [`SimFs::crash`] is called.
//!   Stop the store first (`abandon`); its handles keep pointing at the old disk.

use std::any::Any;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;

use super::{DirEntry, FileSystem, MapMode, MappedStorage, OpenMode, StorageFile};

const SECTOR: usize = 512;

/// How a crash damages what was not synced. Every mode keeps what was synced (see the
/// [module docs](self) for the guarantees all modes share and for the units: one write of a
/// positional file, one 512-byte sector of a mapped file, one entry operation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Everything unsynced is lost: data and entries. The disk is exactly its durable image (a
    /// power cut with nothing written back since the last syncs).
    DropUnsynced,
    /// Per file, a random prefix (possibly none, possibly all) of the unsynced writes reaches
    /// the disk, in the order they were issued (mapped files: a prefix of the dirty sectors in
    /// file order). A random prefix of the pending entry operations persists too.
    PersistPrefix,
    /// Each unsynced write (mapped files: each dirty sector) independently reaches the disk or
    /// not, so a later write can persist without an earlier one (reordering); writes that do
    /// persist overlay in the order issued. A random prefix of the pending entry operations
    /// persists (entries are never reordered).
    PersistSubset,
    /// Per file, a prefix of the unsynced writes persists and the next one is torn at a random
    /// byte: its first `n` bytes persist, `0 <= n <= len` (mapped files: the next dirty sector
    /// keeps its first `n < 512` new bytes). Pending entry operations are lost.
    TearAtByte,
    /// As [`TearAtByte`](CrashMode::TearAtByte), but the torn write keeps a multiple of 512
    /// bytes counted from its own start (mapped files: whole sectors only, so a prefix of the
    /// dirty sectors). Pending entry operations are lost.
    TearAtSector,
    /// Unsynced data is lost, but each positional file keeps the length it had in the page
    /// cache, the bytes past its durable length reading as zeros (the size reached the disk,
    /// the data did not: ext4 `data=writeback`, XFS). A file whose unsynced length is shorter
    /// keeps its durable length. Mapped files lose their dirty sectors. Pending entry
    /// operations are lost.
    ExtendWithZeros,
    /// As [`ExtendWithZeros`](CrashMode::ExtendWithZeros), with random bytes instead of zeros;
    /// in a mapped file, the bytes that changed in its first dirty sector read as random bytes
    /// (synced bytes stay). Pending entry operations are lost.
    ExtendWithGarbage,
}

impl CrashMode {
    /// Every mode.
    pub const ALL: [CrashMode; 7] = [
        CrashMode::DropUnsynced,
        CrashMode::PersistPrefix,
        CrashMode::PersistSubset,
        CrashMode::TearAtByte,
        CrashMode::TearAtSector,
        CrashMode::ExtendWithZeros,
        CrashMode::ExtendWithGarbage,
    ];
}

/// A fault to inject with [`SimFs::fail_after`]: from the chosen operation on, every counted
/// operation fails with this error before it has any effect, as if the disk had gone away;
/// the disk keeps whatever state the earlier operations left (then [`SimFs::crash`] cuts the
/// power there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `EIO` (OS error 5): a failing disk, or a writeback error reported by a sync.
    Eio,
    /// `ENOSPC` (OS error 28): the disk is full.
    NoSpace,
    /// `EACCES` (OS error 13): permission denied.
    PermissionDenied,
}

impl Fault {
    fn error(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            Fault::Eio => 5,
            Fault::NoSpace => 28,
            Fault::PermissionDenied => 13,
        })
    }
}

/// One unsynced change of a file's contents.
#[derive(Clone, Debug)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

struct FileData {
    volatile: Mutex<Vec<u8>>,
    durable: Mutex<Vec<u8>>,
    pending: Mutex<Vec<Pending>>,
    /// Mapped files: the buffer handed out (fixed length, never reallocated).
    mapped: Mutex<Option<Arc<MapBuf>>>,
}

impl FileData {
    fn new(volatile: Vec<u8>, durable: Vec<u8>) -> Arc<FileData> {
        Arc::new(FileData {
            volatile: Mutex::new(volatile),
            durable: Mutex::new(durable),
            pending: Mutex::new(Vec::new()),
            mapped: Mutex::new(None),
        })
    }

    /// The volatile contents, including a mapped buffer's.
    fn current(&self) -> Vec<u8> {
        match &*self.mapped.lock() {
            Some(m) => m.snapshot(),
            None => self.volatile.lock().clone(),
        }
    }
}

/// A mapped file's memory: anonymous memory of the mapping's full length, of which only the
/// allocated prefix is accessible. The pages past it are protected (`PROT_NONE`), so code that
/// touches a byte a real grow-on-demand file has no block for crashes in tests as it would on a
/// full disk, instead of passing unnoticed.
struct MapBuf {
    ptr: *mut u8,
    len: usize,
    allocated: AtomicUsize,
    grow_lock: Mutex<()>,
    _owner: memmap2::MmapMut,
}

// SAFETY: the buffer is memory owned by `_owner`; concurrent access follows the same discipline
// as a real mapping (see `io::mapped`).
unsafe impl Send for MapBuf {}
// SAFETY: as above.
unsafe impl Sync for MapBuf {}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

impl MapBuf {
    fn new(contents: &[u8], len: usize, allocated: usize) -> io::Result<MapBuf> {
        // A shared mapping of an unnamed in-memory file (shmem), not private anonymous memory:
        // as on a shared file mapping, `MADV_DONTNEED` then only drops page-table entries and
        // the bytes stay in the (simulated) page cache, which is what `release` relies on.
        // SAFETY: memfd_create with a NUL-terminated name and no flags has no other
        // preconditions; the descriptor it returns is owned by the `File` below.
        let fd = unsafe { libc::memfd_create(c"duolog-sim".as_ptr(), 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        file.set_len(len.max(1) as u64)?;
        // SAFETY: the file is ours alone (unnamed, its descriptor dropped below: the mapping
        // keeps it alive); nothing else can truncate it under the mapping.
        let mut owner = unsafe { memmap2::MmapMut::map_mut(&file)? };
        drop(file);
        let allocated = allocated.min(len);
        let n = contents.len().min(allocated);
        owner[..n].copy_from_slice(&contents[..n]);
        let ptr = owner.as_mut_ptr();
        let buf = MapBuf {
            ptr,
            len,
            allocated: AtomicUsize::new(allocated),
            grow_lock: Mutex::new(()),
            _owner: owner,
        };
        buf.protect(allocated, len, false)?;
        Ok(buf)
    }

    /// Makes the whole pages of `[from, to)` (`from` rounded up to a page) accessible or not.
    fn protect(&self, from: usize, to: usize, accessible: bool) -> io::Result<()> {
        let page = page_size();
        let from = from.div_ceil(page) * page;
        let to = to.div_ceil(page) * page;
        if from >= to || from >= self.len.max(1).div_ceil(page) * page {
            return Ok(());
        }
        let prot = if accessible {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_NONE
        };
        // SAFETY: `[from, to)` lies inside our anonymous mapping (whole pages, checked above);
        // nothing accesses the pages being protected (they lie past the allocated prefix).
        let rc = unsafe { libc::mprotect(self.ptr.add(from).cast(), to - from, prot) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn allocated(&self) -> usize {
        self.allocated.load(Ordering::Acquire)
    }

    fn grow(&self, upto: usize) -> io::Result<()> {
        if upto > self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot grow past the mapping's length",
            ));
        }
        let _one = self.grow_lock.lock();
        let from = self.allocated();
        if upto > from {
            // Page-aligned: the page holding `from` is already accessible.
            self.protect(from, upto, true)?;
            self.allocated.store(upto, Ordering::Release);
        }
        Ok(())
    }

    fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        let end = offset.saturating_add(len).min(self.allocated());
        let mut out = vec![0u8; end.saturating_sub(offset)];
        // Racing writers only touch unpublished bytes; a torn copy of those is what a crash keeps.
        // SAFETY: [offset, end) lies inside the allocated prefix, which lives as long as `self`.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), out.as_mut_ptr(), out.len()) };
        out
    }

    /// The file's contents: its allocated prefix.
    fn snapshot(&self) -> Vec<u8> {
        self.read(0, self.len)
    }

    fn zero(&self, offset: usize, len: usize) {
        let end = offset.saturating_add(len).min(self.allocated());
        // SAFETY: inside the allocated prefix; the engine zeroes only a tail it owns exclusively.
        unsafe { std::ptr::write_bytes(self.ptr.add(offset), 0, end.saturating_sub(offset)) };
    }
}

#[derive(Clone, Debug)]
enum DirOp {
    Create(PathBuf),
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
    CreateDir(PathBuf),
    RemoveDir(PathBuf),
}

impl DirOp {
    /// Whether syncing `dir` makes this operation durable: it changes an entry of `dir`.
    fn in_dir(&self, dir: &Path) -> bool {
        match self {
            DirOp::Create(p) | DirOp::Remove(p) | DirOp::CreateDir(p) | DirOp::RemoveDir(p) => {
                p.parent() == Some(dir)
            }
            DirOp::Rename(a, b) => a.parent() == Some(dir) || b.parent() == Some(dir),
        }
    }
}

/// A root (`/`, or the empty path that relative paths hang from): it has no entry in a parent
/// directory, so it is always durable.
fn is_root(p: &Path) -> bool {
    p.parent().is_none()
}

#[derive(Default)]
struct State {
    /// Names visible now.
    names: BTreeMap<PathBuf, Arc<FileData>>,
    /// Names that survive a crash.
    durable_names: BTreeMap<PathBuf, Arc<FileData>>,
    /// Directories visible now.
    dirs: HashSet<PathBuf>,
    /// Directories whose entry in their parent is durable (a directory survives a crash only
    /// if it and every ancestor are durable; roots always are).
    durable_dirs: HashSet<PathBuf>,
    pending_dir_ops: Vec<DirOp>,
    locked: HashSet<PathBuf>,
    fault: Option<(u64, Fault)>,
    fail_syncs: bool,
    /// Bytes passed to [`MappedStorage::release`] (a no-op on content here).
    released_bytes: u64,
}

/// The simulated disk. Clones share it.
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    ops: Arc<AtomicU64>,
    /// Holds mapped flushes back (see [`SimFs::hold_mapped_flushes`]).
    gate: Arc<FlushGate>,
}

/// A slow-msync hook: while `held`, every [`MappedStorage::flush_range`] waits, so a test can
/// see who waits on a flush in progress.
#[derive(Default)]
struct FlushGate {
    held: std::sync::Mutex<bool>,
    released: std::sync::Condvar,
    /// Flushes waiting at the gate now.
    waiting: AtomicUsize,
}

impl FlushGate {
    fn pass(&self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if !*held {
            return;
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        while *held {
            held = self.released.wait(held).unwrap_or_else(|e| e.into_inner());
        }
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl fmt::Debug for SimFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFs")
            .field("ops", &self.ops.load(Ordering::Relaxed))
            .finish()
    }
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", p.display()),
    )
}

/// A small deterministic generator for crash damage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

impl SimFs {
    /// An empty disk: no files, no directories. Clones share the disk.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    /// Counted I/O operations performed so far (failed ones included): every
    /// [`FileSystem`] method except `exists`, `file_len` and `lock_file`, and every
    /// [`StorageFile`] and [`MappedStorage`] method that does I/O (`read_at`, `write_all_at`,
    /// `set_len`, `sync_data`, `flush_range`, `zero_range`). Run a workload once and read the
    /// count to know how many crash points [`fail_after`](SimFs::fail_after) can choose from.
    pub fn op_count(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Bytes of mappings released from the process so far ([`MappedStorage::release`]): the
    /// simulated mapping is the page cache itself, so a release changes nothing else.
    pub fn released_bytes(&self) -> u64 {
        self.state.lock().released_bytes
    }

    /// The next `n` counted operations succeed; the one after them and every later one fail
    /// with `fault` (and change nothing) until [`clear_faults`](SimFs::clear_faults).
    /// `fail_after(0, ..)` fails the very next operation. With a crash afterwards, this cuts
    /// the power after exactly `n` operations.
    pub fn fail_after(&self, n: u64, fault: Fault) {
        self.state.lock().fault = Some((self.op_count() + n, fault));
    }

    /// While `fail` is set, every sync (`sync_data`, `flush_range`, `sync_dir`,
    /// `write_file_synced`) fails with `EIO` and changes nothing; other operations work.
    pub fn fail_syncs(&self, fail: bool) {
        self.state.lock().fail_syncs = fail;
    }

    /// While `hold` is set, every flush of a mapping ([`MappedStorage::flush_range`], an
    /// msync) waits before it does anything, as a very slow disk would; clearing it lets them
    /// all through. A test uses it to check that nobody else waits on a flush in progress.
    pub fn hold_mapped_flushes(&self, hold: bool) {
        *self.gate.held.lock().unwrap_or_else(|e| e.into_inner()) = hold;
        if !hold {
            self.gate.released.notify_all();
        }
    }

    /// Mapped flushes waiting now because of [`SimFs::hold_mapped_flushes`].
    pub fn held_mapped_flushes(&self) -> usize {
        self.gate.waiting.load(Ordering::Acquire)
    }

    /// Clears injected faults (the countdown and failing syncs).
    pub fn clear_faults(&self) {
        let mut st = self.state.lock();
        st.fault = None;
        st.fail_syncs = false;
    }

    fn op(&self) -> io::Result<()> {
        let n = self.ops.fetch_add(1, Ordering::Relaxed);
        match self.state.lock().fault {
            Some((at, fault)) if n >= at => Err(fault.error()),
            _ => Ok(()),
        }
    }

    /// Flips bit `bit % 8` of byte `byte` in both images of a file (bit rot that survives a
    /// crash); a byte past the end is left alone.
    pub fn flip_bit(&self, path: &Path, byte: usize, bit: u8) -> io::Result<()> {
        let st = self.state.lock();
        let f = st.names.get(path).ok_or_else(|| not_found(path))?;
        for img in [&f.durable, &f.volatile] {
            let mut d = img.lock();
            if let Some(b) = d.get_mut(byte) {
                *b ^= 1 << (bit % 8);
            }
        }
        if let Some(m) = &*f.mapped.lock() {
            let mut b = m.read(byte, 1);
            if let Some(x) = b.first_mut() {
                *x ^= 1 << (bit % 8);
                // SAFETY: inside the buffer (read returned a byte).
                unsafe { *m.ptr.add(byte) = *x };
            }
        }
        Ok(())
    }

    /// Paths of every file that exists now (volatile listing), sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.state.lock().names.keys().cloned().collect()
    }

    /// The disk as a power cut now would leave it: what was synced, plus what `mode` keeps,
    /// tears or invents of what was not, the random choices drawn from `seed`. Returns a new,
    /// independent disk (see the [module docs](self) for the guarantees); `self` is unchanged.
    /// Stop the store first ([`LogStore::abandon`](crate::LogStore::abandon)): its handles keep
    /// pointing at the old disk. Every file lives in memory (a mapped file at its full length),
    /// so give a store on a `SimFs` small files.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use duolog::io::{CrashMode, SimFs};
    /// use duolog::{CommitLogOptions, FlushPolicy, IndexOptions, LogStore, Message, StoreOptions};
    /// use duolog::TopicConfig;
    ///
    /// # fn main() -> duolog::Result<()> {
    /// let options = |sim: &SimFs| StoreOptions {
    ///     fs: Arc::new(sim.clone()),
    ///     flush: FlushPolicy::Sync,
    ///     // The simulated disk is memory: small files.
    ///     commitlog: CommitLogOptions { file_size: 1 << 20, ..CommitLogOptions::default() },
    ///     index: IndexOptions { enabled: false, ..IndexOptions::default() },
    ///     ..StoreOptions::default()
    /// };
    /// let sim = SimFs::new();
    /// let store = duolog::open("/data/store", options(&sim))?;
    /// store.create_topic("t", TopicConfig::with_partitions(1))?;
    /// store.append("t", 0, &[Message::new("acknowledged")])?; // durable under `Sync`
    /// store.abandon();
    ///
    /// for mode in CrashMode::ALL {
    ///     let disk = sim.crash(mode, 42);
    ///     let store = duolog::open("/data/store", options(&disk))?;
    ///     assert_eq!(store.read("t", 0, 0, Default::default())?[0].body(), b"acknowledged");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn crash(&self, mode: CrashMode, seed: u64) -> SimFs {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let st = self.state.lock();
        // Directory entries: unsynced operations are lost, except a prefix in the "persist"
        // modes (the file system may have committed some of them).
        let mut names = st.durable_names.clone();
        let mut dirs: HashSet<PathBuf> = st.durable_dirs.clone();
        dirs.extend(st.dirs.iter().filter(|d| is_root(d)).cloned());
        let keep = match mode {
            CrashMode::PersistPrefix | CrashMode::PersistSubset => {
                rng.below(st.pending_dir_ops.len() as u64 + 1) as usize
            }
            _ => 0,
        };
        for op in st.pending_dir_ops.iter().take(keep) {
            match op {
                DirOp::Create(p) => {
                    if let Some(f) = st.names.get(p) {
                        names.insert(p.clone(), Arc::clone(f));
                    }
                }
                DirOp::Rename(from, to) => {
                    if let Some(f) = names.remove(from) {
                        names.insert(to.clone(), f);
                    }
                }
                DirOp::Remove(p) => {
                    names.remove(p);
                }
                DirOp::CreateDir(p) => {
                    dirs.insert(p.clone());
                }
                DirOp::RemoveDir(p) => {
                    dirs.remove(p);
                }
            }
        }
        // A directory whose entry (or an ancestor's) was lost takes everything under it along,
        // whether or not those entries were synced in it.
        let reachable = |p: &Path| p.ancestors().skip(1).all(|a| dirs.contains(a));
        let dirs: HashSet<PathBuf> = dirs.iter().filter(|d| reachable(d)).cloned().collect();
        names.retain(|p, _| p.parent().is_some_and(|d| dirs.contains(d)));
        let mut out = State {
            durable_dirs: dirs.clone(),
            dirs,
            ..State::default()
        };
        let mut done: BTreeMap<usize, Arc<FileData>> = BTreeMap::new();
        for (path, f) in names {
            let key = Arc::as_ptr(&f) as usize;
            let data = done
                .entry(key)
                .or_insert_with(|| FileData::new(Vec::new(), Vec::new()))
                .clone();
            if data.durable.lock().is_empty() && data.volatile.lock().is_empty() {
                let image = damaged_image(&f, mode, &mut rng);
                *data.volatile.lock() = image.clone();
                *data.durable.lock() = image;
            }
            out.names.insert(path.clone(), Arc::clone(&data));
            out.durable_names.insert(path, data);
        }
        SimFs {
            state: Arc::new(Mutex::new(out)),
            ops: Arc::new(AtomicU64::new(0)),
            gate: Arc::default(),
        }
    }
}

/// The durable image of one file after a crash.
fn damaged_image(f: &FileData, mode: CrashMode, rng: &mut Rng) -> Vec<u8> {
    let mut durable = f.durable.lock().clone();
    if let Some(m) = &*f.mapped.lock() {
        // Mapped: the unit is the 512-byte sector that differs from the durable image.
        let now = m.snapshot();
        // A length grown since the last flush is metadata not yet synced: the file system may
        // or may not have committed it (always in the modes that keep sizes, never when all
        // that was not synced is lost). Without it, the file ends at its durable length and
        // whatever was written past that is gone.
        let durable_len = durable.len();
        let keeps_length = now.len() <= durable_len
            || match mode {
                CrashMode::DropUnsynced => false,
                CrashMode::ExtendWithZeros | CrashMode::ExtendWithGarbage => true,
                _ => rng.below(2) == 0,
            };
        durable.resize(now.len().max(durable_len), 0);
        let dirty: Vec<usize> = (0..now.len().div_ceil(SECTOR))
            .filter(|&s| {
                let r = s * SECTOR..((s + 1) * SECTOR).min(now.len());
                now[r.clone()] != durable[r]
            })
            .collect();
        let n = dirty.len() as u64;
        let chosen: Vec<usize> = match mode {
            CrashMode::DropUnsynced | CrashMode::ExtendWithZeros | CrashMode::ExtendWithGarbage => {
                Vec::new()
            }
            CrashMode::PersistPrefix | CrashMode::TearAtByte | CrashMode::TearAtSector => {
                dirty[..rng.below(n + 1) as usize].to_vec()
            }
            CrashMode::PersistSubset => dirty
                .iter()
                .copied()
                .filter(|_| rng.below(2) == 0)
                .collect(),
        };
        for s in &chosen {
            let r = s * SECTOR..((s + 1) * SECTOR).min(now.len());
            durable[r.clone()].copy_from_slice(&now[r]);
        }
        if mode == CrashMode::TearAtByte
            && let Some(&s) = dirty.get(chosen.len())
        {
            let start = s * SECTOR;
            let end = ((s + 1) * SECTOR).min(now.len());
            let cut = start + rng.below((end - start) as u64) as usize;
            durable[start..cut].copy_from_slice(&now[start..cut]);
        }
        if mode == CrashMode::ExtendWithGarbage {
            // Garbage where the first unsynced sector's new bytes should be (synced bytes stay).
            if let Some(&s) = dirty.first() {
                for i in s * SECTOR..((s + 1) * SECTOR).min(now.len()) {
                    if now[i] != durable[i] {
                        durable[i] = rng.next() as u8;
                    }
                }
            }
        }
        if !keeps_length {
            durable.truncate(durable_len);
        }
        return durable;
    }
    let pending = f.pending.lock().clone();
    let n = pending.len() as u64;
    let apply = |img: &mut Vec<u8>, op: &Pending, upto: Option<usize>| match op {
        Pending::Write { offset, data } => {
            let data = &data[..upto.unwrap_or(data.len()).min(data.len())];
            let end = *offset as usize + data.len();
            if img.len() < end {
                img.resize(end, 0);
            }
            img[*offset as usize..end].copy_from_slice(data);
        }
        Pending::SetLen(len) => img.resize(*len as usize, 0),
    };
    match mode {
        CrashMode::DropUnsynced => {}
        CrashMode::PersistPrefix => {
            for op in &pending[..rng.below(n + 1) as usize] {
                apply(&mut durable, op, None);
            }
        }
        CrashMode::PersistSubset => {
            for op in &pending {
                if rng.below(2) == 0 {
                    apply(&mut durable, op, None);
                }
            }
        }
        CrashMode::TearAtByte | CrashMode::TearAtSector => {
            let k = rng.below(n + 1) as usize;
            for op in &pending[..k] {
                apply(&mut durable, op, None);
            }
            if let Some(op @ Pending::Write { data, .. }) = pending.get(k) {
                let mut cut = rng.below(data.len() as u64 + 1) as usize;
                if mode == CrashMode::TearAtSector {
                    cut -= cut % SECTOR;
                }
                apply(&mut durable, op, Some(cut));
            }
        }
        CrashMode::ExtendWithZeros | CrashMode::ExtendWithGarbage => {
            let target = f.volatile.lock().len();
            let old = durable.len();
            if target > old {
                durable.resize(target, 0);
                if mode == CrashMode::ExtendWithGarbage {
                    for b in &mut durable[old..] {
                        *b = rng.next() as u8;
                    }
                }
            }
        }
    }
    durable
}

#[derive(Debug)]
struct SimFile {
    fs: SimFs,
    data: Arc<FileData>,
}

impl fmt::Debug for FileData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileData")
            .field("len", &self.volatile.lock().len())
            .finish()
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.fs.op()?;
        let v = self.data.volatile.lock();
        let off = offset as usize;
        if off >= v.len() {
            return Ok(0);
        }
        let n = buf.len().min(v.len() - off);
        buf[..n].copy_from_slice(&v[off..off + n]);
        Ok(n)
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.fs.op()?;
        let mut v = self.data.volatile.lock();
        let end = offset as usize + data.len();
        if v.len() < end {
            v.resize(end, 0);
        }
        v[offset as usize..end].copy_from_slice(data);
        self.data.pending.lock().push(Pending::Write {
            offset,
            data: data.to_vec(),
        });
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.data.volatile.lock().len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.op()?;
        self.data.volatile.lock().resize(len as usize, 0);
        self.data.pending.lock().push(Pending::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.op()?;
        if self.fs.state.lock().fail_syncs {
            return Err(Fault::Eio.error());
        }
        let v = self.data.volatile.lock().clone();
        *self.data.durable.lock() = v;
        self.data.pending.lock().clear();
        Ok(())
    }
}

#[derive(Debug)]
struct SimMapped {
    fs: SimFs,
    data: Arc<FileData>,
    buf: Arc<MapBuf>,
}

impl fmt::Debug for MapBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapBuf").field("len", &self.len).finish()
    }
}

impl MappedStorage for SimMapped {
    fn len(&self) -> usize {
        self.buf.len
    }

    fn base_ptr(&self) -> *mut u8 {
        self.buf.ptr
    }

    fn allocated(&self) -> usize {
        self.buf.allocated()
    }

    fn grow(&self, upto: usize) -> io::Result<()> {
        if upto <= self.buf.allocated() {
            return Ok(());
        }
        // A grow is an allocation on the disk: injected faults (a full disk) apply.
        self.fs.op()?;
        self.buf.grow(upto)
    }

    fn flush_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.fs.gate.pass();
        self.fs.op()?;
        if self.fs.state.lock().fail_syncs {
            return Err(Fault::Eio.error());
        }
        let allocated = self.buf.allocated();
        if len > 0 && offset >= allocated {
            // Only reachable through a bug: nothing can have been written there.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "flush past the allocated length of a growable file",
            ));
        }
        let bytes = self.buf.read(offset, len);
        let mut d = self.data.durable.lock();
        // Like fdatasync, the flush also makes a grown length durable.
        if d.len() < allocated {
            d.resize(allocated, 0);
        }
        d[offset..offset + bytes.len()].copy_from_slice(&bytes);
        Ok(())
    }

    fn release(&self, offset: usize, len: usize) -> io::Result<()> {
        // What the real disk does: `MADV_DONTNEED` on a shared mapping drops the page-table
        // entries (the resident set shrinks) while the bytes stay in the page cache, dirty if
        // they were: reads and the next mapping see them, and they are durable only once a
        // flush covers them (a crash before drops them like any unflushed sector). The
        // buffer is shmem, so the same call keeps its bytes here. Counted so tests can see a
        // caller release. No fault injection: it is no I/O.
        if offset.saturating_add(len) > self.buf.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "release past the end of the mapping",
            ));
        }
        // Whole pages inside the allocated prefix (past it the pages are protected).
        let page = page_size();
        let from = offset.div_ceil(page) * page;
        let end = (offset + len).min(self.buf.allocated()) / page * page;
        if from < end {
            // SAFETY: `[from, end)` is whole pages inside the buffer's accessible prefix; on a
            // shared mapping DONTNEED never changes the contents a reader observes.
            let rc = unsafe {
                libc::madvise(
                    self.buf.ptr.add(from).cast(),
                    end - from,
                    libc::MADV_DONTNEED,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        self.fs.state.lock().released_bytes += len as u64;
        Ok(())
    }

    fn zero_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.fs.op()?;
        self.buf.zero(offset, len);
        let mut d = self.data.durable.lock();
        let end = (offset + len).min(d.len());
        if offset < end {
            d[offset..end].fill(0);
        }
        Ok(())
    }
}

struct SimLock {
    fs: SimFs,
    path: PathBuf,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.fs.state.lock().locked.remove(&self.path);
    }
}

impl SimFs {
    fn parent_of(p: &Path) -> PathBuf {
        p.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    fn create_mapped(&self, path: &Path, len: usize) -> io::Result<Arc<FileData>> {
        let data = self.create_file(path, vec![0u8; len])?;
        *data.durable.lock() = vec![0u8; len];
        Ok(data)
    }

    fn create_file(&self, path: &Path, contents: Vec<u8>) -> io::Result<Arc<FileData>> {
        let mut st = self.state.lock();
        if !st.dirs.contains(&Self::parent_of(path)) {
            return Err(not_found(path));
        }
        if st.names.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        let data = FileData::new(contents, Vec::new());
        st.names.insert(path.to_owned(), Arc::clone(&data));
        st.pending_dir_ops.push(DirOp::Create(path.to_owned()));
        Ok(data)
    }
}

impl FileSystem for SimFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.op()?;
        let mut st = self.state.lock();
        if st.names.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} is a file", path.display()),
            ));
        }
        // Each new directory's entry is pending in its parent, as a new file's is; parents
        // first, so a crash that keeps a prefix of the pending operations keeps a parent
        // before its children.
        let missing: Vec<PathBuf> = path
            .ancestors()
            .take_while(|d| !st.dirs.contains(*d))
            .map(Path::to_path_buf)
            .collect();
        for d in missing.into_iter().rev() {
            st.dirs.insert(d.clone());
            if is_root(&d) {
                st.durable_dirs.insert(d);
            } else {
                st.pending_dir_ops.push(DirOp::CreateDir(d));
            }
        }
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        self.op()?;
        let st = self.state.lock();
        if !st.dirs.contains(path) {
            return Err(not_found(path));
        }
        let mut out: Vec<DirEntry> = st
            .names
            .keys()
            .filter(|p| p.parent() == Some(path))
            .filter_map(|p| {
                p.file_name()?.to_str().map(|n| DirEntry {
                    name: n.to_owned(),
                    is_dir: false,
                })
            })
            .collect();
        out.extend(
            st.dirs
                .iter()
                .filter(|d| d.parent() == Some(path))
                .filter_map(|d| {
                    d.file_name()?.to_str().map(|n| DirEntry {
                        name: n.to_owned(),
                        is_dir: true,
                    })
                }),
        );
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let st = self.state.lock();
        Ok(st.names.contains_key(path) || st.dirs.contains(path))
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let st = self.state.lock();
        let f = st.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(match &*f.mapped.lock() {
            Some(m) => m.allocated() as u64,
            None => f.volatile.lock().len() as u64,
        })
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.op()?;
        let f = self
            .state
            .lock()
            .names
            .get(path)
            .cloned()
            .ok_or_else(|| not_found(path))?;
        Ok(f.current())
    }

    fn write_file_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.op()?;
        if self.state.lock().fail_syncs {
            return Err(Fault::Eio.error());
        }
        let existing = self.state.lock().names.get(path).cloned();
        let f = match existing {
            Some(f) => f,
            None => self.create_file(path, Vec::new())?,
        };
        *f.volatile.lock() = data.to_vec();
        *f.durable.lock() = data.to_vec();
        f.pending.lock().clear();
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.op()?;
        let mut st = self.state.lock();
        let f = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_owned(), f);
        st.pending_dir_ops
            .push(DirOp::Rename(from.to_owned(), to.to_owned()));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.op()?;
        let mut st = self.state.lock();
        st.names.remove(path).ok_or_else(|| not_found(path))?;
        st.pending_dir_ops.push(DirOp::Remove(path.to_owned()));
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.op()?;
        let mut st = self.state.lock();
        if !st.dirs.contains(path) {
            return Err(not_found(path));
        }
        let has_children = st.names.keys().any(|p| p.parent() == Some(path))
            || st.dirs.iter().any(|d| d.parent() == Some(path));
        if has_children {
            return Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                format!("{} is not empty", path.display()),
            ));
        }
        st.dirs.remove(path);
        st.pending_dir_ops.push(DirOp::RemoveDir(path.to_owned()));
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.op()?;
        let mut st = self.state.lock();
        if st.fail_syncs {
            return Err(Fault::Eio.error());
        }
        if !st.dirs.contains(path) {
            return Err(not_found(path));
        }
        // Apply, in order, the pending operations on entries of this directory.
        let ops = std::mem::take(&mut st.pending_dir_ops);
        let mut rest = Vec::new();
        for op in ops {
            if !op.in_dir(path) {
                rest.push(op);
                continue;
            }
            match op {
                DirOp::Create(p) => {
                    if let Some(f) = st.names.get(&p).cloned() {
                        st.durable_names.insert(p, f);
                    }
                }
                DirOp::Rename(a, b) => {
                    let f = st
                        .durable_names
                        .remove(&a)
                        .or_else(|| st.names.get(&b).cloned());
                    if let Some(f) = f {
                        st.durable_names.insert(b, f);
                    }
                }
                DirOp::Remove(p) => {
                    st.durable_names.remove(&p);
                }
                DirOp::CreateDir(p) => {
                    st.durable_dirs.insert(p);
                }
                DirOp::RemoveDir(p) => {
                    st.durable_dirs.remove(&p);
                }
            }
        }
        st.pending_dir_ops = rest;
        Ok(())
    }

    fn map_file(&self, path: &Path, len: u64, mode: MapMode) -> io::Result<Box<dyn MappedStorage>> {
        self.op()?;
        let data = match mode {
            // The length a file is created with counts as durable (its allocation reached the
            // disk with its entry); a length it grows to later, only once a flush covers it.
            MapMode::Create => self.create_mapped(path, len as usize)?,
            MapMode::CreateGrowable { initial } => {
                self.create_mapped(path, initial.min(len) as usize)?
            }
            MapMode::Open | MapMode::OpenGrowable => {
                let f = self
                    .state
                    .lock()
                    .names
                    .get(path)
                    .cloned()
                    .ok_or_else(|| not_found(path))?;
                let actual = match &*f.mapped.lock() {
                    Some(m) => m.allocated() as u64,
                    None => f.volatile.lock().len() as u64,
                };
                let fits = match mode {
                    MapMode::Open => actual == len,
                    _ => actual <= len,
                };
                if !fits {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("file is {actual} bytes, expected {len}"),
                    ));
                }
                f
            }
        };
        let mut slot = data.mapped.lock();
        // A file mapped twice with one length shares one buffer, as two mappings share the
        // page cache. Another length gets a buffer of its own with the current contents.
        let buf = match &*slot {
            Some(b) if b.len == len as usize => Arc::clone(b),
            old => {
                let contents = match old {
                    Some(b) => b.snapshot(),
                    None => data.volatile.lock().clone(),
                };
                let b = Arc::new(MapBuf::new(&contents, len as usize, contents.len())?);
                *slot = Some(Arc::clone(&b));
                b
            }
        };
        drop(slot);
        Ok(Box::new(SimMapped {
            fs: self.clone(),
            data,
            buf,
        }))
    }

    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        self.op()?;
        let data = match mode {
            OpenMode::CreateNew => self.create_file(path, Vec::new())?,
            OpenMode::Existing => self
                .state
                .lock()
                .names
                .get(path)
                .cloned()
                .ok_or_else(|| not_found(path))?,
        };
        if data.mapped.lock().is_some() {
            // Positional I/O on a mapped file (truncating an index): work on the mapped image.
            let snapshot = data.current();
            *data.volatile.lock() = snapshot;
            *data.mapped.lock() = None;
        }
        Ok(Box::new(SimFile {
            fs: self.clone(),
            data,
        }))
    }

    fn lock_file(&self, path: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        let mut st = self.state.lock();
        if !st.locked.insert(path.to_owned()) {
            return Ok(None);
        }
        Ok(Some(Box::new(SimLock {
            fs: self.clone(),
            path: path.to_owned(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{RealFs, create_dir_durable};

    /// Bytes resident in this process's mapping that contains `addr` (`Rss:` in smaps).
    fn resident_at(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-')
                && let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = (a..b).contains(&addr);
            } else if inside && let Some(kb) = line.strip_prefix("Rss:") {
                let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap();
                return kb * 1024;
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    /// The real disk's release (`MADV_DONTNEED` on a shared file mapping) modelled: the pages
    /// leave the resident set, their bytes stay visible to the mapping and to a new one, and
    /// they are durable only once a flush covers them (a crash before loses them).
    #[test]
    fn released_pages_leave_the_resident_set_but_stay_visible_and_unsynced() {
        let fs = SimFs::new();
        create_dir_durable(&fs, Path::new("/d")).unwrap();
        let path = Path::new("/d/f");
        let len = 1 << 20;
        let m = fs.map_file(path, len as u64, MapMode::Create).unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        // SAFETY: `[0, len)` is the mapping's allocated prefix; nobody else uses it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), m.base_ptr(), len) };
        let before = resident_at(m.base_ptr() as usize);
        assert!(before >= len as u64, "written pages resident: {before}");
        m.release(0, len).unwrap();
        let after = resident_at(m.base_ptr() as usize);
        assert!(
            after < (len / 4) as u64,
            "released pages still resident: {after} of {before} bytes"
        );
        // Visible through the mapping, to a positional read and to another mapping.
        // SAFETY: as above.
        let seen = unsafe { std::slice::from_raw_parts(m.base_ptr(), len) }.to_vec();
        assert!(seen == bytes, "a released byte changed");
        assert!(fs.read_file(path).unwrap() == bytes);
        let other = fs
            .map_file(path, 2 * len as u64, MapMode::OpenGrowable)
            .unwrap();
        // SAFETY: the new mapping's allocated prefix is the file's `len` bytes.
        let seen = unsafe { std::slice::from_raw_parts(other.base_ptr(), len) }.to_vec();
        assert!(seen == bytes, "a new mapping lost released bytes");
        drop(other);
        // Released is not flushed: a crash before the flush loses them.
        let lost = fs.crash(CrashMode::DropUnsynced, 1);
        assert!(lost.read_file(path).unwrap().iter().all(|&b| b == 0));
        m.flush_range(0, len).unwrap();
        for mode in CrashMode::ALL {
            let kept = fs.crash(mode, 7);
            assert!(kept.read_file(path).unwrap() == bytes, "{mode:?}");
        }
    }

    fn dirs_of(fs: &SimFs) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs.state.lock().dirs.iter().cloned().collect();
        v.sort();
        v
    }

    fn write(fs: &SimFs, path: &str) {
        fs.write_file_synced(Path::new(path), b"x").unwrap();
        fs.sync_dir(Path::new(path).parent().unwrap()).unwrap();
    }

    #[test]
    fn unsynced_new_directory_vanishes_with_everything_under_it() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/a/b/c")).unwrap();
        // Files synced in their own directory, but /a/b/c's entry is never made durable.
        write(&fs, "/a/b/c/f");
        fs.sync_dir(Path::new("/")).unwrap();
        fs.sync_dir(Path::new("/a")).unwrap();
        for mode in CrashMode::ALL {
            if matches!(mode, CrashMode::PersistPrefix | CrashMode::PersistSubset) {
                continue; // those may keep the pending entry
            }
            let after = fs.crash(mode, 1);
            assert_eq!(
                dirs_of(&after),
                [Path::new("/"), Path::new("/a"), Path::new("/a/b")],
                "{mode:?}"
            );
            assert!(after.files().is_empty(), "{mode:?}");
            assert!(after.list_dir(Path::new("/a/b/c")).is_err());
        }
    }

    #[test]
    fn directory_synced_into_its_parent_survives() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/a/b")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        fs.sync_dir(Path::new("/a")).unwrap();
        write(&fs, "/a/b/f");
        for mode in CrashMode::ALL {
            let after = fs.crash(mode, 3);
            assert_eq!(after.files(), [PathBuf::from("/a/b/f")], "{mode:?}");
            assert_eq!(after.read_file(Path::new("/a/b/f")).unwrap(), b"x");
        }
    }

    #[test]
    fn a_durable_directory_under_a_lost_parent_is_lost() {
        let fs = SimFs::new();
        fs.create_dir_all(Path::new("/a/b")).unwrap();
        // /a/b's entry is durable in /a, but /a's entry in / is not.
        fs.sync_dir(Path::new("/a")).unwrap();
        write(&fs, "/a/b/f");
        let after = fs.crash(CrashMode::DropUnsynced, 0);
        assert_eq!(dirs_of(&after), [Path::new("/")]);
        assert!(after.files().is_empty());
    }

    #[test]
    fn persist_prefix_keeps_parents_before_children() {
        for seed in 0..64 {
            let fs = SimFs::new();
            fs.create_dir_all(Path::new("/a/b/c")).unwrap();
            let after = fs.crash(CrashMode::PersistPrefix, seed);
            let dirs = dirs_of(&after);
            for d in &dirs {
                let parent_kept = d.parent().is_none_or(|p| dirs.iter().any(|x| x == p));
                assert!(
                    parent_kept,
                    "seed {seed}: {d:?} without its parent in {dirs:?}"
                );
            }
        }
    }

    #[test]
    fn remove_dir_needs_an_empty_existing_directory_and_is_pending_until_synced() {
        let fs = SimFs::new();
        create_dir_durable(&fs, Path::new("/a/b")).unwrap();
        write(&fs, "/a/b/f");
        let e = fs.remove_dir(Path::new("/a/b")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::DirectoryNotEmpty);
        assert_eq!(
            fs.remove_dir(Path::new("/nope")).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        fs.remove_file(Path::new("/a/b/f")).unwrap();
        fs.remove_dir(Path::new("/a/b")).unwrap();
        assert!(!fs.exists(Path::new("/a/b")).unwrap());
        // Not synced: the removal may be undone by a power cut.
        let after = fs.crash(CrashMode::DropUnsynced, 0);
        assert!(after.exists(Path::new("/a/b")).unwrap());
        fs.sync_dir(Path::new("/a")).unwrap();
        let after = fs.crash(CrashMode::DropUnsynced, 0);
        assert!(!after.exists(Path::new("/a/b")).unwrap());
    }

    #[test]
    fn sync_dir_of_a_missing_directory_fails() {
        let fs = SimFs::new();
        let e = fs.sync_dir(Path::new("/nope")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn create_dir_durable_survives_every_crash_mode() {
        for rel in ["/x/y/z", "x/y/z"] {
            let fs = SimFs::new();
            create_dir_durable(&fs, Path::new(rel)).unwrap();
            write(&fs, &format!("{rel}/f"));
            for mode in CrashMode::ALL {
                let after = fs.crash(mode, 5);
                assert_eq!(
                    after.files(),
                    [PathBuf::from(format!("{rel}/f"))],
                    "{rel} {mode:?}"
                );
            }
        }
    }

    #[test]
    fn create_dir_durable_syncs_nothing_for_an_existing_directory() {
        let fs = SimFs::new();
        create_dir_durable(&fs, Path::new("/x/y")).unwrap();
        let before = fs.op_count();
        create_dir_durable(&fs, Path::new("/x/y")).unwrap();
        assert_eq!(fs.op_count(), before);
    }

    #[test]
    fn create_dirs_durable_syncs_each_parent_once() {
        let fs = SimFs::new();
        let dirs: Vec<PathBuf> = (0..100).map(|p| PathBuf::from(format!("/t/{p}"))).collect();
        let before = fs.op_count();
        crate::io::create_dirs_durable(&fs, &dirs).unwrap();
        // One create_dir_all per directory, then one sync of `/` and one of `/t`.
        assert_eq!(fs.op_count() - before, 100 + 2);
        let after = fs.crash(CrashMode::DropUnsynced, 0);
        for d in &dirs {
            assert!(after.exists(d).unwrap(), "{d:?}");
        }
    }

    #[test]
    fn create_dir_durable_removes_what_it_created_when_a_sync_fails() {
        let fs = SimFs::new();
        create_dir_durable(&fs, Path::new("/x")).unwrap();
        fs.fail_syncs(true);
        assert!(create_dir_durable(&fs, Path::new("/x/y/z")).is_err());
        fs.fail_syncs(false);
        assert!(!fs.exists(Path::new("/x/y")).unwrap());
        // A retry creates and syncs them again.
        create_dir_durable(&fs, Path::new("/x/y/z")).unwrap();
        let after = fs.crash(CrashMode::DropUnsynced, 0);
        assert!(after.exists(Path::new("/x/y/z")).unwrap());
    }

    #[test]
    fn real_sync_dir_works_on_the_working_directory_and_new_trees() {
        let real = RealFs;
        // The parent of a relative path's first component is the empty path.
        real.sync_dir(Path::new("")).unwrap();
        real.sync_dir(Path::new("/")).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a/b/c");
        create_dir_durable(&real, &deep).unwrap();
        assert!(deep.is_dir());
        create_dir_durable(&real, &deep).unwrap();
    }
}
