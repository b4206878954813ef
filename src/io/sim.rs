//! [`SimFs`]: a simulated disk behind the storage interface, for crash testing.
//!
//! Every file has a *volatile* image (what the running process sees, the page cache) and a
//! *durable* image (what survives a power loss). Writes change the volatile image; `sync_data`
//! and `flush_range` copy it to the durable one. Directory entries (create, rename, remove) are
//! pending until their directory is synced. [`SimFs::crash`] returns the disk as it is after a
//! power loss, damaged in one of several ways ([`CrashMode`]); faults can be injected by
//! countdown ([`SimFs::fail_after`]).
//!
//! Mapped files expose the volatile image's buffer directly; at a crash their unsynced 512-byte
//! sectors are the unit that persists or not.

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

/// How a crash damages what was not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Everything unsynced is lost.
    DropUnsynced,
    /// A prefix of the unsynced writes (in order) reaches the disk.
    PersistPrefix,
    /// An arbitrary subset of the unsynced writes reaches the disk (reordering).
    PersistSubset,
    /// A prefix persists and the next write is torn at an arbitrary byte.
    TearAtByte,
    /// A prefix persists and the next write is torn at a 512-byte boundary.
    TearAtSector,
    /// Unsynced appends extend the file with zeros instead of their data.
    ExtendWithZeros,
    /// Unsynced appends extend the file with garbage instead of their data.
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

/// A fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// EIO.
    Eio,
    /// ENOSPC.
    NoSpace,
    /// EACCES.
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
        let mut owner = memmap2::MmapMut::map_anon(len.max(1))?;
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
}

#[derive(Default)]
struct State {
    /// Names visible now.
    names: BTreeMap<PathBuf, Arc<FileData>>,
    /// Names that survive a crash.
    durable_names: BTreeMap<PathBuf, Arc<FileData>>,
    dirs: HashSet<PathBuf>,
    pending_dir_ops: Vec<DirOp>,
    locked: HashSet<PathBuf>,
    fault: Option<(u64, Fault)>,
    fail_syncs: bool,
}

/// The simulated disk. Clones share it.
#[derive(Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    ops: Arc<AtomicU64>,
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
    /// An empty disk.
    pub fn new() -> SimFs {
        SimFs::default()
    }

    /// I/O operations performed so far.
    pub fn op_count(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Makes the operation `n` operations from now (and every later one) fail with `fault`.
    pub fn fail_after(&self, n: u64, fault: Fault) {
        self.state.lock().fault = Some((self.op_count() + n, fault));
    }

    /// Makes every data sync fail (or succeed again).
    pub fn fail_syncs(&self, fail: bool) {
        self.state.lock().fail_syncs = fail;
    }

    /// Clears injected faults.
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

    /// Flips one bit of a file's durable and volatile contents (bit rot).
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

    /// Paths of every file that exists now.
    pub fn files(&self) -> Vec<PathBuf> {
        self.state.lock().names.keys().cloned().collect()
    }

    /// The disk after a power loss now, damaged as `mode` says, chosen by `seed`. The running
    /// store must be stopped (`abandon`) first; its handles keep pointing at the old disk.
    pub fn crash(&self, mode: CrashMode, seed: u64) -> SimFs {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let st = self.state.lock();
        // Directory entries: unsynced operations are lost, except a prefix in the "persist"
        // modes (the file system may have committed some of them).
        let mut names = st.durable_names.clone();
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
            }
        }
        let mut out = State {
            dirs: st.dirs.clone(),
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
        }
    }
}

/// The durable image of one file after a crash.
fn damaged_image(f: &FileData, mode: CrashMode, rng: &mut Rng) -> Vec<u8> {
    let mut durable = f.durable.lock().clone();
    if let Some(m) = &*f.mapped.lock() {
        // Mapped: the unit is the 512-byte sector that differs from the durable image.
        let now = m.snapshot();
        durable.resize(now.len(), 0);
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
        let mut p = Some(path);
        while let Some(d) = p {
            st.dirs.insert(d.to_owned());
            p = d.parent();
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
        self.state.lock().dirs.remove(path);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.op()?;
        let mut st = self.state.lock();
        if st.fail_syncs {
            return Err(Fault::Eio.error());
        }
        // Apply, in order, the pending operations on entries of this directory.
        let ops = std::mem::take(&mut st.pending_dir_ops);
        let mut rest = Vec::new();
        for op in ops {
            let mine = match &op {
                DirOp::Create(p) | DirOp::Remove(p) => p.parent() == Some(path),
                DirOp::Rename(a, b) => a.parent() == Some(path) || b.parent() == Some(path),
            };
            if !mine {
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
            }
        }
        st.pending_dir_ops = rest;
        Ok(())
    }

    fn map_file(&self, path: &Path, len: u64, mode: MapMode) -> io::Result<Box<dyn MappedStorage>> {
        self.op()?;
        let data = match mode {
            MapMode::Create => self.create_file(path, vec![0u8; len as usize])?,
            MapMode::CreateGrowable { initial } => {
                self.create_file(path, vec![0u8; initial.min(len) as usize])?
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
