//! Review of branch `ap` (session 10): the atomic cursor of `io::MappedFile`, one warmer at a
//! time per mapped file. Each test here failed on the reviewed code.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duolog::io::{FileSystem, MapMode, MappedFile, SimFs};

fn sim_file(len: u64) -> Arc<MappedFile> {
    let fs = SimFs::new();
    fs.create_dir_all(Path::new("/d")).unwrap();
    Arc::new(MappedFile::map(&fs, Path::new("/d/f"), 0, len, MapMode::Create).unwrap())
}

/// The module docs keep concurrent writers sound ("publish their claims in order"). An empty
/// append claims `[c, c)`, the same start as the next non-empty claim; both wait for `written ==
/// c` and then store their ends unordered, so the empty one can move `written` back below the
/// other's end. That append's bytes are then never published (it returned `Some`), and every
/// later append or `seal` spins forever waiting for `written` to reach its start.
#[test]

fn an_empty_append_racing_another_never_moves_the_written_mark_back() {
    const BIG: usize = 8 << 20;
    for round in 0..100 {
        let file = sim_file(16 << 20);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let spawn = |job: Box<dyn FnOnce(&MappedFile) + Send>| {
            let (file, tx) = (Arc::clone(&file), tx.clone());
            // Detached: a writer that waits forever for `written` must not hang the test.
            std::thread::spawn(move || {
                job(&file);
                let _ = tx.send(());
            });
        };
        let wait_for_big = |f: &MappedFile| {
            while f.write_position() < BIG {
                std::thread::yield_now();
            }
        };
        // A long copy: the appends claimed after it wait for it to finish.
        spawn(Box::new(|f| {
            f.append(&[&vec![1u8; BIG]]).unwrap();
        }));
        // Empty appends, claimed right after the big one (at its end).
        for _ in 0..3 {
            spawn(Box::new(move |f| {
                wait_for_big(f);
                f.append(&[]).unwrap();
            }));
        }
        // A 16-byte append, claimed a little later (also at the big one's end).
        spawn(Box::new(move |f| {
            wait_for_big(f);
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(200) {
                std::hint::spin_loop();
            }
            f.append(&[&[2u8; 16]]).unwrap();
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        for _ in 0..5 {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                rx.recv_timeout(left).is_ok(),
                "round {round}: an append waits forever for `written` to reach its claim"
            );
        }
        file.commit_all();
        assert_eq!(
            file.committed(),
            file.write_position(),
            "round {round}: an acknowledged append is never published (`written` moved back)"
        );
    }
}
