//! [`RealFs`]: the storage interface on the operating system's file system.

use std::any::Any;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use memmap2::{MmapOptions, MmapRaw};
use parking_lot::Mutex;

use std::os::unix::fs::FileExt;

use super::{DirEntry, FileSystem, MapMode, MappedStorage, OpenMode, StorageFile};

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

/// A real file mapped shared, read-write. It holds no descriptor: the few operations that need
/// one open the path again (see [`FileSystem::map_file`]).
#[derive(Debug)]
struct RealMapped {
    path: PathBuf,
    map: MmapRaw,
    /// Bytes of the file backed by allocated blocks; only they may be touched.
    allocated: AtomicUsize,
    /// Serialises growers (the writer and a background allocator).
    grow_lock: Mutex<()>,
}

impl RealMapped {
    fn open(&self, write: bool) -> io::Result<File> {
        OpenOptions::new().read(true).write(write).open(&self.path)
    }

    /// `[offset, offset + len)` clipped to the allocated prefix.
    fn clip(&self, offset: usize, len: usize) -> usize {
        let allocated = self.allocated.load(Ordering::Acquire);
        offset
            .checked_add(len)
            .map_or(allocated, |end| end.min(allocated))
            .saturating_sub(offset)
    }
}

impl MappedStorage for RealMapped {
    fn len(&self) -> usize {
        self.map.len()
    }

    fn base_ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }

    fn allocated(&self) -> usize {
        self.allocated.load(Ordering::Acquire)
    }

    fn grow(&self, upto: usize) -> io::Result<()> {
        if upto <= self.allocated() {
            return Ok(());
        }
        if upto > self.map.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cannot grow past the mapping's {} bytes", self.map.len()),
            ));
        }
        let _one = self.grow_lock.lock();
        let from = self.allocated();
        if upto <= from {
            return Ok(());
        }
        let file = self.open(true)?;
        allocate(&file, from as u64, upto as u64)?;
        // Published only once the blocks exist: nobody touches a byte before this store.
        self.allocated.store(upto, Ordering::Release);
        Ok(())
    }

    fn flush_range(&self, offset: usize, len: usize) -> io::Result<()> {
        let len = self.clip(offset, len);
        if len == 0 {
            return Ok(());
        }
        // msync of a shared file mapping is fdatasync of the range on Linux: it also makes a
        // grown file's new length durable.
        self.map.flush_range(offset, len)
    }

    fn prefault(&self, offset: usize, len: usize) -> io::Result<()> {
        let len = self.clip(offset, len);
        if len == 0 {
            return Ok(());
        }
        // MADV_POPULATE_WRITE (Linux 5.14+) faults the pages in writable and leaves their bytes
        // as they are. The range is allocated, so this cannot hit a full disk.
        #[cfg(target_os = "linux")]
        return self
            .map
            .advise_range(memmap2::Advice::PopulateWrite, offset, len);
        #[cfg(not(target_os = "linux"))]
        return Ok(());
    }

    fn set_random_access(&self, offset: usize, len: usize, random: bool) -> io::Result<()> {
        let len = self.clip(offset, len);
        if len == 0 {
            return Ok(());
        }
        if !random {
            return self.map.advise_range(memmap2::Advice::Normal, offset, len);
        }
        // Large folios already cached around the range (from an earlier writer, readahead, or a
        // warm-up that faulted zero pages in ahead of it) would stay large: write back and drop
        // them from the 2 MiB boundary below `offset` on. Dirty pages cannot be dropped, hence
        // the flush first (a no-op where nothing is dirty); our page-table entries go next (a
        // cached page that is mapped is not dropped).
        let from = offset - offset % (2 << 20);
        let end = offset + len;
        self.map.flush_range(from, end - from)?;
        // On a shared file mapping MADV_DONTNEED only removes page-table entries: the next access
        // maps the same page-cache page (or reads the file) again; dirty pages stay dirty.
        // SAFETY: so no reader of the mapping can observe a change to its contents.
        unsafe {
            self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                from,
                end - from,
            )?;
        }
        let file = self.open(false)?;
        // SAFETY: posix_fadvise on an fd we own, within the file; it only drops clean cached
        // pages, which are re-read from the file on the next access.
        let rc = unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                from as libc::off_t,
                (end - from) as libc::off_t,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        self.map.advise_range(memmap2::Advice::Random, offset, len)
    }

    fn release(&self, offset: usize, len: usize) -> io::Result<()> {
        let len = self.clip(offset, len);
        if len == 0 {
            return Ok(());
        }
        // On a shared file mapping MADV_DONTNEED only removes page-table entries: the next
        // access maps the same page-cache page (or reads the file) again, and a page still
        // dirty stays dirty (the kernel moves the entry's dirty bit to the page), for the next
        // msync to write: the segmented engine's active log releases unflushed pages so.
        // SAFETY: no reader of the mapping can observe a change to its contents.
        unsafe {
            self.map
                .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
        }
    }

    fn zero_range(&self, offset: usize, len: usize) -> io::Result<()> {
        let len = self.clip(offset, len);
        if len == 0 {
            return Ok(());
        }
        let file = self.open(true)?;
        let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on an fd we own; offsets are within the file, whose length does not
        // change (KEEP_SIZE), so the mapping stays valid. Zeroing a mapped range is allowed.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            return file.sync_data();
        }
        // Without ZERO_RANGE: punch a hole, then allocate it again so the range is not sparse.
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: as above; the length of the file does not change.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                punch,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            // SAFETY: posix_fallocate on an fd we own, inside the file.
            let rc = unsafe {
                libc::posix_fallocate(file.as_raw_fd(), offset as libc::off_t, len as libc::off_t)
            };
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            return file.sync_data();
        }
        // File systems without ZERO_RANGE: write the zeros through the mapping.
        let end = offset + len;
        // The caller holds the file exclusively while erasing a tail: no reader sees these bytes.
        // SAFETY: [offset, end) lies inside the mapping's allocated prefix (clipped above).
        unsafe { std::ptr::write_bytes(self.map.as_mut_ptr().add(offset), 0, end - offset) };
        self.map.flush_range(offset, len)
    }
}

/// A real file for positional I/O.
#[derive(Debug)]
struct RealFile {
    file: File,
}

impl StorageFile for RealFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            match self.file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let from = self.file.metadata()?.len();
        allocate(&self.file, from, len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Gives `file` real blocks for `[from, to)`, extending it to at least `to` bytes. Never
/// sparse: where the file system has no `fallocate`, zeros are written (which allocates).
fn allocate(file: &File, from: u64, to: u64) -> io::Result<()> {
    if to <= from {
        return Ok(());
    }
    // SAFETY: posix_fallocate on an fd we own, with a non-negative range.
    let rc = unsafe {
        libc::posix_fallocate(
            file.as_raw_fd(),
            from as libc::off_t,
            (to - from) as libc::off_t,
        )
    };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => {
            let zeros = vec![0u8; 64 << 10];
            let mut at = from;
            while at < to {
                let n = (to - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
        code => Err(io::Error::from_raw_os_error(code)),
    }
}

/// Creates `path` (it must not exist) with its first `len` bytes allocated; removes it again
/// if that fails, so a failed create leaves nothing behind.
fn create_allocated(path: &Path, len: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    if let Err(e) = allocate(&file, 0, len) {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(e);
    }
    Ok(file)
}

impl FileSystem for RealFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            let is_dir = entry.file_type()?.is_dir();
            if let Ok(name) = entry.file_name().into_string() {
                out.push(DirEntry { name, is_dir });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(fs::metadata(path)?.len())
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn write_file_synced(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        f.write_all(data)?;
        f.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        // The empty path is the parent of a relative path's first component: the working
        // directory. (Opening a directory read-only and fsyncing it is how Linux makes its
        // entries durable.)
        let path = if path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            path
        };
        File::open(path)?.sync_all()
    }

    fn map_file(&self, path: &Path, len: u64, mode: MapMode) -> io::Result<Box<dyn MappedStorage>> {
        let created = matches!(mode, MapMode::Create | MapMode::CreateGrowable { .. });
        let (file, allocated) = match mode {
            MapMode::Create => (create_allocated(path, len)?, len),
            MapMode::CreateGrowable { initial } => {
                let initial = initial.min(len);
                (create_allocated(path, initial)?, initial)
            }
            MapMode::Open | MapMode::OpenGrowable => {
                let file = OpenOptions::new().read(true).write(true).open(path)?;
                let actual = file.metadata()?.len();
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
                (file, actual)
            }
        };
        let mapped = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mapping too large"))
            .and_then(|n| MmapOptions::new().len(n).map_raw(&file));
        let map = match mapped {
            Ok(m) => m,
            Err(e) => {
                // A created file that cannot be mapped must not stay behind either.
                if created {
                    drop(file);
                    let _ = fs::remove_file(path);
                }
                return Err(e);
            }
        };
        // The mapping keeps the file's pages; the descriptor is closed here.
        drop(file);
        Ok(Box::new(RealMapped {
            path: path.to_owned(),
            map,
            allocated: AtomicUsize::new(allocated as usize),
            grow_lock: Mutex::new(()),
        }))
    }

    fn open_file(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn StorageFile>> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        if mode == OpenMode::CreateNew {
            o.create_new(true);
        }
        Ok(Box::new(RealFile {
            file: o.open(path)?,
        }))
    }

    fn lock_file(&self, path: &Path) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(file))),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MappedFile;

    /// Drops the clean page-cache pages of `path`, so the next read comes from the disk.
    fn drop_cached(path: &Path) {
        let file = File::open(path).unwrap();
        // SAFETY: posix_fadvise on an fd we own; it only drops clean cached pages.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    }

    /// Pages of `path`'s first `len` bytes in the page cache (mincore over a fresh mapping).
    fn cached_pages(path: &Path, len: usize) -> usize {
        let file = File::open(path).unwrap();
        // SAFETY: a read-only shared mapping of `len` bytes of a file at least that long, used
        // only for mincore and unmapped below; nothing reads through it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: `addr` is the page-aligned mapping of `len` bytes made above and `vec` has one
        // byte per page of it.
        let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
        // SAFETY: unmaps exactly the mapping made above.
        unsafe { libc::munmap(addr, len) };
        assert_eq!(rc, 0);
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn released_pages_keep_their_bytes_before_and_after_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let len = 4 << 20;
        let file = MappedFile::map(&RealFs, &path, 0, len as u64, MapMode::Create).unwrap();
        let pattern: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        let half = len / 2;
        file.append(&[&pattern[..half]]).unwrap();
        file.commit_all();
        // Released dirty, never flushed: the page cache keeps the dirty pages.
        file.release_written_behind(0, 1 << 20);
        file.release_behind();
        assert_eq!(file.released(), half);
        // The flush of released dirty pages writes them: clean, they leave the page cache
        // (a dirty page would stay), and read from the disk they are there.
        file.flush(half).unwrap();
        drop_cached(&path);
        assert_eq!(
            cached_pages(&path, half),
            0,
            "released pages still cached after the flush: not written (dirty) or not evicted"
        );
        assert_eq!(&std::fs::read(&path).unwrap()[..half], &pattern[..half]);
        assert_eq!(file.read(0, half), Some(&pattern[..half]));
        // Flushed, then released: mapped again from the file on the next access.
        file.append(&[&pattern[half..]]).unwrap();
        file.commit_all();
        file.flush(len).unwrap();
        file.release_behind();
        assert_eq!(file.released(), len);
        drop_cached(&path);
        assert_eq!(file.read(0, len), Some(&pattern[..]));
        assert_eq!(std::fs::read(&path).unwrap(), pattern);
    }
}
