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
use std::sync::atomic::{AtomicU64, Ordering};

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

/// A mapped file's memory.
struct MapBuf {
    ptr: *mut u8,
    len: usize,
    _owner: Box<[u8]>,
}

// SAFETY: the buffer is plain heap memory owned by `_owner`; concurrent access follows the same
// discipline as a real mapping (see `io::mapped`).
unsafe impl Send for MapBuf {}
// SAFETY: as above.
unsafe impl Sync for MapBuf {}

impl MapBuf {
    fn new(contents: &[u8], len: usize) -> MapBuf {
        let mut b = vec![0u8; len].into_boxed_slice();
        let n = contents.len().min(len);
        b[..n].copy_from_slice(&contents[..n]);
        let ptr = b.as_mut_ptr();
        MapBuf {
            ptr,
            len,
            _owner: b,
        }
    }

    fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        let end = (offset + len).min(self.len);
        let mut out = vec![0u8; end.saturating_sub(offset)];
        // Racing writers only touch unpublished bytes; a torn copy of those is what a crash keeps.
        // SAFETY: [offset, end) lies inside the buffer, which lives as long as `self`.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), out.as_mut_ptr(), out.len()) };
        out
    }

    fn snapshot(&self) -> Vec<u8> {
        self.read(0, self.len)
    }

    fn zero(&self, offset: usize, len: usize) {
        let end = (offset + len).min(self.len);
        // SAFETY: inside the buffer; the engine zeroes only a tail it owns exclusively.
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

    fn flush_range(&self, offset: usize, len: usize) -> io::Result<()> {
        self.fs.op()?;
        if self.fs.state.lock().fail_syncs {
            return Err(Fault::Eio.error());
        }
        let bytes = self.buf.read(offset, len);
        let mut d = self.data.durable.lock();
        if d.len() < self.buf.len {
            d.resize(self.buf.len, 0);
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
            Some(m) => m.len as u64,
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
            MapMode::Create => self.create_file(path, vec![0u8; len as usize])?,
            MapMode::Open => {
                let f = self
                    .state
                    .lock()
                    .names
                    .get(path)
                    .cloned()
                    .ok_or_else(|| not_found(path))?;
                let actual = match &*f.mapped.lock() {
                    Some(m) => m.len as u64,
                    None => f.volatile.lock().len() as u64,
                };
                if actual != len {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("file is {actual} bytes, expected {len}"),
                    ));
                }
                f
            }
        };
        let mut slot = data.mapped.lock();
        let buf = match &*slot {
            Some(b) => Arc::clone(b),
            None => {
                let b = Arc::new(MapBuf::new(&data.volatile.lock(), len as usize));
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
