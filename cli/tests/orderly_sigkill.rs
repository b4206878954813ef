//! `duolog consume --orderly` killed with SIGKILL mid-stream, several times, then run to the
//! end: the orderly layer's durable state (offsets committed under leases) neither re-prints a
//! committed record nor skips one. `DUOLOG_KILL_ITERATIONS` raises the number of kills (default 3).

mod common;

use common::kill_group_consumer_and_check;

#[test]
fn orderly_consumer_killed_mid_stream_skips_nothing_and_repeats_nothing_committed_commitlog() {
    kill_orderly_and_check("commitlog");
}

#[test]
fn orderly_consumer_killed_mid_stream_skips_nothing_and_repeats_nothing_committed_segmented() {
    kill_orderly_and_check("segmented");
}

fn kill_orderly_and_check(engine: &str) {
    kill_group_consumer_and_check(engine, &[], &["--orderly"], true);
}
