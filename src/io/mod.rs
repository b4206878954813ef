//! The storage interface: every file, mapping, sync and directory operation of the engines goes
//! through [`FileSystem`], so a test can put a simulated disk behind the very same engine code.
//!
//! Sync points are explicit: [`MappedStorage::flush_range`] for data, [`FileSystem::sync_dir`]
//! for directory entries (a created, renamed or removed file is not durable until its directory
//! is synced). This module owns the real implementation ([`RealFs`]) and the safe wrapper around
//! mapped memory ([`MappedFile`]); it knows nothing of record formats.

mod mapped;
mod real;
pub mod sim;
mod warmer;

use std::any::Any;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

pub use mapped::{MAX_GROW_STEP, MappedFile, MappedWords, prefetch};
pub use real::RealFs;
pub use sim::{CrashMode, Fault, SimFs};
pub use warmer::Warmer;
pub(crate) use warmer::window_share;

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// File name (not the full path).
    pub name: String,
    /// Whether the entry is a directory.
    pub is_dir: bool,
}

/// How [`FileSystem::map_file`] treats the path.
///
/// The `Growable` modes give a grow-on-demand mapped file: the mapping covers the full `len`
/// bytes of address space from the start (so its address never changes), but the file only has
/// the blocks of its allocated prefix ([`MappedStorage::allocated`]). Nobody may touch a byte at
/// or past `allocated()` (on a real file that is a SIGBUS, or a store the file never keeps);
/// [`MappedStorage::grow`] allocates more with real blocks (`fallocate`), so a full disk is an
/// error at grow time, never a SIGBUS on a later store. Disk use then follows the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapMode {
    /// The file must not exist; it is created and preallocated to the full length, so a full
    /// disk is an error here rather than a SIGBUS on a later store into a sparse page.
    Create,
    /// The file must exist with exactly the given length.
    Open,
    /// The file must not exist; it is created with its first `initial` bytes allocated (capped
    /// at the full length) and grows with [`MappedStorage::grow`].
    CreateGrowable {
        /// Bytes allocated at creation.
        initial: u64,
    },
    /// The file must exist with at most the given length; its length is its allocated prefix
    /// (a file created by `Create` is simply fully allocated).
    OpenGrowable,
}

/// A file mapped into memory: a stable region of `len()` bytes at `base_ptr()`.
///
/// Implementations keep the region valid and at the same address for as long as the object
/// lives, and never shrink the underlying file while it is mapped.
pub trait MappedStorage: Send + Sync + fmt::Debug {
    /// Length of the region in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Start of the region. Valid for reads and writes of `allocated()` bytes while `self`
    /// lives; the rest of `len()` is reserved address space that must not be touched.
    fn base_ptr(&self) -> *mut u8;
    /// Bytes at the start of the region backed by allocated file blocks: the only ones that
    /// may be read or written. Never decreases. `len()` unless mapped with a `Growable` mode.
    /// No default: a wrapper that forgot to forward it would claim blocks the file does not
    /// have (a SIGBUS on a real file).
    fn allocated(&self) -> usize;
    /// Allocates the file up to at least `upto` bytes (at most `len()`) with real blocks, so
    /// a full disk is an error here. Safe to call from any thread; a no-op when `upto` is
    /// already allocated.
    fn grow(&self, upto: usize) -> io::Result<()>;
    /// Makes the bytes in `[offset, offset + len)` durable (msync / fdatasync).
    fn flush_range(&self, offset: usize, len: usize) -> io::Result<()>;
    /// Durably sets `[offset, offset + len)` to zero (used to erase a torn tail on recovery).
    fn zero_range(&self, offset: usize, len: usize) -> io::Result<()>;
    /// Faults `[offset, offset + len)` in writable ahead of the writer, without changing its
    /// contents, so the page-cache zero-fill of fresh pages happens on a background thread
    /// instead of inside an append (RocketMQ's mapped-file warm-up). Best effort: the default
    /// does nothing.
    fn prefault(&self, _offset: usize, _len: usize) -> io::Result<()> {
        Ok(())
    }
    /// Turns readahead off (`random`) or back on for `[offset, offset + len)`. With readahead
    /// on, the kernel backs a sequentially faulted file with large folios (up to 2 MiB), and a
    /// flush of a few bytes at the tail then writes the whole folio: measured 2 MiB and 560 µs
    /// per sync instead of 4.5 KiB and 125 µs. The region still to be written is kept random;
    /// full files go back to normal so cold reads get readahead. Best effort: the default does
    /// nothing.
    fn set_random_access(&self, _offset: usize, _len: usize, _random: bool) -> io::Result<()> {
        Ok(())
    }
    /// Unmaps the pages of `[offset, offset + len)` from the process (its page-table entries
    /// only), so flushed pages a writer has moved past stop counting in its resident set; the
    /// file and the page cache keep the bytes, and the next access maps them again. The range
    /// may hold pages not flushed yet: on a shared file mapping they stay dirty in the page
    /// cache and a later [`Self::flush_range`] writes them as usual. Callers pass only bytes
    /// nobody writes any more. Never changes the contents. Best effort: the default does
    /// nothing.
    fn release(&self, _offset: usize, _len: usize) -> io::Result<()> {
        Ok(())
    }
}

/// A file accessed with positional reads and writes (Kafka-style logs and indexes).
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `data` at `offset`.
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Current length.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends (with zeros) to `len`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Extends the file to at least `len` bytes of zeros backed by real blocks (never sparse:
    /// a file that will be mapped must not fault on a full disk). The default is `set_len`,
    /// for implementations without sparse files.
    fn allocate(&self, len: u64) -> io::Result<()> {
        if len > self.len()? {
            self.set_len(len)?;
        }
        Ok(())
    }
    /// Makes the data (and the length) durable: fdatasync.
    fn sync_data(&self) -> io::Result<()>;
}

/// Reads exactly `buf.len()` bytes at `offset`, or fails with `UnexpectedEof`.
pub fn read_exact_at(
    file: &dyn StorageFile,
    mut buf: &mut [u8],
    mut offset: u64,
) -> io::Result<()> {
    while !buf.is_empty() {
        match file.read_at(buf, offset)? {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the file",
                ));
            }
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// How [`FileSystem::open_file`] treats the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file (it must not exist), empty.
    CreateNew,
    /// Open an existing file.
    Existing,
}

/// The file operations the engines need. Implemented by [`RealFs`] and by test doubles.
pub trait FileSystem: Send + Sync + fmt::Debug + 'static {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Lists a directory.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>>;
    /// Whether anything exists at `path`.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Length of a file.
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    /// Reads a whole (small) file.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates or truncates `path`, writes `data` and syncs the file (not its directory).
    fn write_file_synced(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Renames a file, replacing the target.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Maps a file of exactly `len` bytes (at most `len` in the `Growable` modes, see
    /// [`MapMode`]). The mapping holds no file descriptor once this returns: operations that
    /// need one (growing, zeroing, dropping cached pages) open the path again, so a store with
    /// many mapped files does not run into the descriptor limit.
    fn map_file(&self, path: &Path, len: u64, mode: MapMode) -> io::Result<Box<dyn MappedStorage>>;
    /// Opens a file for positional reads and writes.
    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>>;
    /// Takes an exclusive lock on `path` (creating it). `Ok(None)` when someone else holds it.
    /// The lock lasts as long as the returned guard.
    fn lock_file(&self, path: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>>;
}

/// Writes a small metadata file atomically: temp file, fsync, rename, directory fsync. After a
/// crash at any point the file holds either its old or its new contents.
pub fn write_atomic(fs: &dyn FileSystem, path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    fs.write_file_synced(&tmp, data)?;
    fs.rename(&tmp, path)?;
    fs.sync_dir(dir)
}

/// Creates `path` and any missing parents, and makes each directory it created durable by
/// syncing its parent (the parent of the topmost one too: a store root created in a fresh
/// directory tree survives a power cut with the whole tree). Directories that already exist
/// are left as they are and cost no sync, so reopening a store syncs nothing here.
///
/// If a sync fails, the directories it created are removed (best effort, deepest first) so a
/// retry creates and syncs them again instead of trusting entries that may not be durable.
pub fn create_dir_durable(fs: &dyn FileSystem, path: &Path) -> io::Result<()> {
    create_dirs_durable(fs, &[path])
}

/// [`create_dir_durable`] for many directories at once: each parent is synced once, however
/// many of the new directories it holds (a topic's partition directories cost one directory
/// fsync, not one per partition). Parents are synced topmost first.
pub fn create_dirs_durable<P: AsRef<Path>>(fs: &dyn FileSystem, paths: &[P]) -> io::Result<()> {
    create_dirs_durable_reporting(fs, paths).map(|_| ())
}

/// [`create_dirs_durable`], returning for each path whether this call created it (it did not
/// exist before): a caller that knows a directory is new and empty need not list it.
pub fn create_dirs_durable_reporting<P: AsRef<Path>>(
    fs: &dyn FileSystem,
    paths: &[P],
) -> io::Result<Vec<bool>> {
    let mut new = Vec::with_capacity(paths.len());
    // Every directory this call creates, each path's parents before its children.
    let mut created: Vec<PathBuf> = Vec::new();
    let undo = |created: &[PathBuf]| {
        for d in created.iter().rev() {
            let _ = fs.remove_dir(d);
        }
    };
    for path in paths {
        let path = path.as_ref();
        // Roots (`/`, and the empty path: the working directory a relative path hangs from)
        // have no entry in a parent to make durable.
        let mut missing = Vec::new();
        for d in path.ancestors() {
            if d.parent().is_none() || d.as_os_str().is_empty() || fs.exists(d)? {
                break;
            }
            missing.push(d.to_path_buf());
        }
        new.push(!missing.is_empty());
        if missing.is_empty() {
            continue;
        }
        if let Err(e) = fs.create_dir_all(path) {
            undo(&created);
            return Err(e);
        }
        created.extend(missing.into_iter().rev());
    }
    let mut parents: Vec<(usize, PathBuf)> = created
        .iter()
        .map(|d| {
            let p = d.parent().unwrap_or_else(|| Path::new(""));
            (p.components().count(), p.to_path_buf())
        })
        .collect();
    parents.sort();
    parents.dedup();
    for (_, parent) in &parents {
        if let Err(e) = fs.sync_dir(parent) {
            undo(&created);
            return Err(e);
        }
    }
    Ok(new)
}

/// Removes a file if it exists.
pub fn remove_if_exists(fs: &dyn FileSystem, path: &Path) -> io::Result<bool> {
    match fs.remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes a directory and everything under it, if it exists. Each directory is synced once
/// emptied, before it is removed, so no removal of its entries can be lost while the directory
/// is gone (a new directory of the same name must never show them); the removal of `path`
/// itself is durable once the caller syncs its parent.
pub fn remove_tree(fs: &dyn FileSystem, path: &Path) -> io::Result<()> {
    let entries = list_dir_or_empty(fs, path)?;
    for e in &entries {
        let child = path.join(&e.name);
        if e.is_dir {
            remove_tree(fs, &child)?;
        } else {
            remove_if_exists(fs, &child)?;
        }
    }
    if !entries.is_empty() {
        fs.sync_dir(path)?;
    }
    match fs.remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Lists a directory, treating a missing one as empty.
pub fn list_dir_or_empty(fs: &dyn FileSystem, path: &Path) -> io::Result<Vec<DirEntry>> {
    match fs.list_dir(path) {
        Ok(v) => Ok(v),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Parses a 20-digit zero-padded file name (RocketMQ/Kafka style) into its number.
pub fn parse_offset_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

/// The 20-digit zero-padded name of an offset.
pub fn offset_name(offset: u64) -> String {
    format!("{offset:020}")
}
