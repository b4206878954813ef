//! The grow-on-demand mapped file (`MapMode::CreateGrowable` / `OpenGrowable`): the mapping
//! covers the full length, the file only what was allocated; growing allocates real blocks (a
//! full disk is an error then, never a fault later); reopening takes the length as the allocated
//! prefix; warming never touches past it; and no mapping keeps a descriptor open.
#![cfg(unix)]

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use duolog::io::{FileSystem, MapMode, MappedFile, MappedWords, RealFs, SimFs};

const LEN: u64 = 8 << 20;

fn both(f: impl Fn(&dyn FileSystem, &Path, Option<&SimFs>)) {
    let dir = tempfile::tempdir().unwrap();
    eprintln!("real");
    f(&RealFs, dir.path(), None);
    let sim = SimFs::new();
    sim.create_dir_all(Path::new("/d")).unwrap();
    eprintln!("sim");
    f(&sim, Path::new("/d"), Some(&sim));
}

/// Bytes of real blocks behind a file on the real disk.
fn blocks_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn a_growable_file_takes_only_the_blocks_it_grew_to() {
    both(|fs, dir, sim| {
        let path = dir.join("q");
        let f =
            MappedFile::map(fs, &path, 0, LEN, MapMode::CreateGrowable { initial: 4096 }).unwrap();
        assert_eq!(f.len(), LEN as usize);
        assert_eq!(f.allocated(), 4096);
        assert_eq!(fs.file_len(&path).unwrap(), 4096);
        if sim.is_none() {
            assert!(blocks_bytes(&path) <= 64 << 10, "{}", blocks_bytes(&path));
        }
        // A record past the allocated prefix is refused until the file grows.
        let rec = vec![7u8; 3000];
        assert_eq!(f.append(&[&rec]), Some(0));
        assert_eq!(f.append(&[&rec]), None);
        f.ensure_allocated(100_000).unwrap();
        let allocated = f.allocated();
        assert!((100_000..=LEN as usize).contains(&allocated), "{allocated}");
        assert_eq!(fs.file_len(&path).unwrap(), allocated as u64);
        if sim.is_none() {
            assert!(blocks_bytes(&path) >= allocated as u64, "not sparse");
            assert!(blocks_bytes(&path) < 1 << 20);
        }
        assert_eq!(f.append(&[&rec]), Some(3000));
        f.commit_all();
        f.flush(6000).unwrap();
        drop(f);
        // The exact-length open refuses a file shorter than its mapping; the growable one
        // takes the length as the allocated prefix.
        assert!(MappedFile::map(fs, &path, 0, LEN, MapMode::Open).is_err());
        let mut f = MappedFile::map(fs, &path, 0, LEN, MapMode::OpenGrowable).unwrap();
        assert_eq!(f.allocated(), allocated);
        assert_eq!(f.contents().len(), allocated);
        assert_eq!(&f.contents()[2990..3010], &[7u8; 20]);
        // Longer than the mapping: refused.
        assert!(MappedFile::map(fs, &path, 0, 4096, MapMode::OpenGrowable).is_err());
    });
}

#[test]
fn growing_on_a_full_disk_is_an_error_and_changes_nothing() {
    let sim = SimFs::new();
    sim.create_dir_all(Path::new("/d")).unwrap();
    let path = Path::new("/d/q");
    let f = MappedFile::map(
        &sim,
        path,
        0,
        LEN,
        MapMode::CreateGrowable { initial: 4096 },
    )
    .unwrap();
    sim.fail_after(0, duolog::io::Fault::NoSpace);
    let err = f.ensure_allocated(10_000).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(28), "{err}");
    sim.clear_faults();
    assert_eq!(f.allocated(), 4096);
    assert_eq!(sim.file_len(path).unwrap(), 4096);
    assert_eq!(f.append(&[&[1u8; 5000][..]]), None);
    f.ensure_allocated(10_000).unwrap();
    assert_eq!(f.append(&[&[1u8; 5000][..]]), Some(0));
}

#[test]
fn warming_a_growable_file_stops_at_its_allocated_length() {
    both(|fs, dir, _| {
        let path = dir.join("w");
        let f = std::sync::Arc::new(
            MappedFile::map(fs, &path, 0, LEN, MapMode::CreateGrowable { initial: 8192 }).unwrap(),
        );
        f.append(&[b"abc"]).unwrap();
        f.commit_all();
        assert!(f.wants_prefault(3, 1 << 20));
        // Would fault 1 MiB in past a file of 8 KiB: a SIGBUS on the real disk without the cap.
        f.prefault_ahead(1 << 20).unwrap();
        assert!(!f.wants_prefault(3, 1 << 20), "nothing left to warm");
        assert_eq!(fs.file_len(&path).unwrap(), 8192);
        f.ensure_allocated(20_000).unwrap();
        assert!(f.wants_prefault(3, 1 << 20), "the grown part can be warmed");
    });
}

#[test]
fn growable_words_grow_on_store_and_read_zero_past_the_allocation() {
    both(|fs, dir, _| {
        let path = dir.join("idx");
        let words = 1 << 20;
        let w =
            MappedWords::map(fs, &path, words, MapMode::CreateGrowable { initial: 4096 }).unwrap();
        assert_eq!(w.allocated_words(), 1024);
        assert_eq!(w.get(500_000), 0);
        w.ensure_words(2000).unwrap();
        assert!(w.allocated_words() >= 2000);
        w.set(300_000, 42);
        assert_eq!(w.get(300_000), 42);
        assert!(w.allocated_words() > 300_000 && w.allocated_words() < words);
        w.flush().unwrap();
        let n = w.allocated_words();
        drop(w);
        assert_eq!(fs.file_len(&path).unwrap(), n as u64 * 4);
        let w = MappedWords::map(fs, &path, words, MapMode::OpenGrowable).unwrap();
        assert_eq!(w.get(300_000), 42);
    });
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[test]
fn mapped_files_hold_no_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let before = open_descriptors();
    let mut maps = Vec::new();
    for i in 0..200 {
        let mode = if i % 2 == 0 {
            MapMode::Create
        } else {
            MapMode::CreateGrowable { initial: 4096 }
        };
        maps.push(
            MappedFile::map(
                &RealFs,
                &dir.path().join(format!("f{i}")),
                0,
                64 << 10,
                mode,
            )
            .unwrap(),
        );
    }
    for i in 0..200 {
        let mode = if i % 2 == 0 {
            MapMode::Open
        } else {
            MapMode::OpenGrowable
        };
        maps.push(
            MappedFile::map(
                &RealFs,
                &dir.path().join(format!("f{i}")),
                0,
                64 << 10,
                mode,
            )
            .unwrap(),
        );
    }
    for m in maps.iter().skip(1).step_by(2) {
        m.ensure_allocated(50_000).unwrap();
    }
    let after = open_descriptors();
    // Other tests of this binary may open a few files meanwhile; 400 mappings used to hold 400.
    assert!(
        after < before + 50,
        "{before} descriptors before, {after} with 400 mappings"
    );
}

#[test]
fn an_append_at_a_position_other_than_the_cursor_writes_nothing() {
    both(|fs, dir, _| {
        let path = dir.join("a");
        let f =
            MappedFile::map(fs, &path, 0, LEN, MapMode::CreateGrowable { initial: 8192 }).unwrap();
        assert_eq!(f.append_at(0, &[b"first"]), Some(0));
        f.commit_all();
        // A writer that thinks the end is still 0 (a stale size) is refused, and the published
        // bytes stay as they were.
        assert_eq!(f.append_at(0, &[b"XXXXX"]), None);
        assert_eq!(f.append_at(9, &[b"XXXXX"]), None);
        assert_eq!(f.write_position(), 5);
        assert_eq!(f.read(0, 5), Some(&b"first"[..]));
        assert_eq!(f.append_at(5, &[b"next"]), Some(5));
    });
}

/// A file its writer sealed keeps its length: a grow asked ahead of the writer and run after
/// the seal (the allocation thread is behind) adds nothing.
#[test]
fn a_sealed_file_is_not_grown_ahead() {
    both(|fs, dir, _| {
        let path = dir.join("sealed");
        let f =
            MappedFile::map(fs, &path, 0, LEN, MapMode::CreateGrowable { initial: 4096 }).unwrap();
        f.append(&[&[7u8; 100]]);
        f.seal();
        f.grow_ahead().unwrap();
        assert_eq!(f.allocated(), 4096);
        assert_eq!(fs.file_len(&path).unwrap(), 4096);
    });
}
