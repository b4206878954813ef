//! Damaged files of every kind, both engines, on the simulated disk: truncated at every byte of
//! the last records, garbage appended, overwritten from a point on, one bit flipped, deleted.
//! Opening must give a consistent prefix or a clear error — never a panic — and whatever opens
//! must read back only records that were appended, with every failure a clear `Corrupted` error.
//! `SHOW_REFUSALS=1` prints why each refused store was refused.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use duolog::io::{CrashMode, FileSystem, SimFs};
use duolog::{EngineKind, Error, Message, ReadLimits, StoreOptions, TopicConfig};

fn options(engine: EngineKind, sim: &SimFs) -> StoreOptions {
    StoreOptions {
        fs: Arc::new(sim.clone()),
        ..common::small_options(engine)
    }
}

fn body(p: u32, n: u64) -> Vec<u8> {
    format!("p{p}-n{n}-{}", "z".repeat((n % 300) as usize)).into_bytes()
}

/// A store with a few hundred keyed records over two partitions, closed cleanly or not.
fn build(engine: EngineKind, clean: bool) -> SimFs {
    let sim = SimFs::new();
    let store = duolog::open("/store", options(engine, &sim)).unwrap();
    store
        .create_topic("t", TopicConfig::with_partitions(2))
        .unwrap();
    for n in 0..400u64 {
        let p = (n % 2) as u32;
        store
            .append(
                "t",
                p,
                &[Message::new(body(p, n / 2)).with_key(format!("k{}", n % 37))],
            )
            .unwrap();
    }
    store.sync().unwrap();
    if clean {
        store.close().unwrap();
    } else {
        store.abandon();
    }
    drop(store);
    sim.crash(CrashMode::DropUnsynced, 1)
}

/// Opens the damaged store; on success, everything readable must be what was appended.
fn open_and_check(engine: EngineKind, sim: &SimFs, what: &str) -> bool {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let store = match duolog::open("/store", options(engine, sim)) {
            Ok(s) => s,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                if std::env::var_os("SHOW_REFUSALS").is_some() {
                    eprintln!("REFUSED {what}: {e}");
                }
                return false;
            }
        };
        for p in 0..2u32 {
            let b = store.bounds("t", p).unwrap();
            let mut at = b.start;
            while at < b.end {
                match store.read("t", p, at, ReadLimits::messages(100)) {
                    Ok(recs) => {
                        assert!(!recs.is_empty());
                        for r in &recs {
                            assert_eq!(
                                r.body(),
                                &body(p, r.offset())[..],
                                "{what}: {p}/{}",
                                r.offset()
                            );
                        }
                        at = recs[recs.len() - 1].offset() + 1;
                    }
                    // Damage a clean open did not look at is reported when read.
                    Err(Error::Corrupted { .. }) => at += 1,
                    Err(e) => panic!("{what}: read {p}/{at}: unexpected error {e}"),
                }
            }
        }
        // Both report damage, as problems or as a `Corrupted` error, and never fail otherwise.
        match store.verify() {
            Ok(_) | Err(Error::Corrupted { .. }) => {}
            Err(e) => panic!("{what}: verify: {e}"),
        }
        match store.find_by_key("t", "k3", (0, i64::MAX / 2), 50) {
            Ok(found) => {
                for m in found {
                    assert_eq!(
                        m.record.body(),
                        &body(m.partition, m.record.offset())[..],
                        "{what}: key hit"
                    );
                }
            }
            Err(Error::Corrupted { .. }) => {}
            Err(e) => panic!("{what}: find_by_key: {e}"),
        }
        true
    }));
    match result {
        Ok(opened) => opened,
        Err(_) => panic!("{what}: panicked"),
    }
}

fn damage(sim: &SimFs, path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = sim.read_file(path).unwrap();
    f(&mut bytes);
    sim.write_file_synced(path, &bytes).unwrap();
}

/// One way of damaging a file's bytes.
type Damage = Box<dyn Fn(&mut Vec<u8>)>;

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn run(engine: EngineKind) {
    let mut cases = 0;
    let mut opened = 0;
    for clean in [true, false] {
        let template = build(engine, clean);
        // A fresh copy of the template's disk.
        let copy = || template.crash(CrashMode::DropUnsynced, 1);
        let files: Vec<PathBuf> = template.files();
        for file in &files {
            let name = file.display().to_string();
            let len = template.read_file(file).unwrap().len();
            let mut variants: Vec<(String, Damage)> = Vec::new();
            // Truncations: every byte of the last ~600 bytes of data (zeros after a mapped
            // file's data count as data here), plus a few far back.
            for cut in (len.saturating_sub(600)..len)
                .step_by(7)
                .chain([0, len / 3, len / 2])
            {
                variants.push((
                    format!("truncate at {cut}"),
                    Box::new(move |b: &mut Vec<u8>| b.truncate(cut)),
                ));
            }
            for n in [1usize, 17, 1024] {
                variants.push((
                    format!("append {n} garbage bytes"),
                    Box::new(move |b: &mut Vec<u8>| b.extend(noise(n as u64, n))),
                ));
            }
            for at in [len / 4, len / 2, len.saturating_sub(40)] {
                variants.push((
                    format!("garbage from {at}"),
                    Box::new(move |b: &mut Vec<u8>| {
                        let n = b.len() - at.min(b.len());
                        let start = at.min(b.len());
                        b[start..].copy_from_slice(&noise(at as u64 + 3, n));
                    }),
                ));
            }
            for bit in [len / 5, len / 2, len.saturating_sub(1)] {
                variants.push((
                    format!("flip a bit at {bit}"),
                    Box::new(move |b: &mut Vec<u8>| {
                        if let Some(x) = b.get_mut(bit) {
                            *x ^= 0x10;
                        }
                    }),
                ));
            }
            for (what, f) in variants {
                let sim = copy();
                damage(&sim, file, |b| f(b));
                cases += 1;
                opened += usize::from(open_and_check(
                    engine,
                    &sim,
                    &format!("{engine} clean={clean} {name}: {what}"),
                ));
            }
            // Deleted.
            let sim = copy();
            sim.remove_file(file).unwrap();
            sim.sync_dir(file.parent().unwrap()).unwrap();
            cases += 1;
            opened += usize::from(open_and_check(
                engine,
                &sim,
                &format!("{engine} clean={clean} {name}: deleted"),
            ));
        }
    }
    eprintln!(
        "{engine}: {cases} damaged stores, {opened} opened to a consistent prefix, the rest refused with a clear error"
    );
}

#[test]
fn every_file_kind_damaged_commitlog() {
    run(EngineKind::CommitLog);
}

#[test]
fn every_file_kind_damaged_segmented() {
    run(EngineKind::Segmented);
}

#[test]
fn permission_denied_and_locked_are_clear_errors() {
    for engine in common::engines() {
        let sim = SimFs::new();
        sim.fail_after(0, duolog::io::Fault::PermissionDenied);
        let err = duolog::open("/store", options(engine, &sim)).unwrap_err();
        assert!(err.to_string().contains("ermission denied"), "{err}");
        let sim = SimFs::new();
        let first = duolog::open("/store", options(engine, &sim)).unwrap();
        assert!(matches!(
            duolog::open("/store", options(engine, &sim)),
            Err(Error::Locked(_))
        ));
        drop(first);
    }
}
