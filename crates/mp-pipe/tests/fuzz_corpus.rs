//! Replays the fuzzing corpus of this crate's targets on stable: every file of
//! `fuzz/corpus/<target>/` (the seeds and what `cargo xtask fuzz` found) goes through the
//! same entry point the `cargo fuzz` target calls (`mp_pipe::__fuzz`), each under
//! `catch_unwind`, and the test names every file that panicked. The seeds are also run as
//! made now, so a change of format cannot leave the stored ones stale unnoticed.
//!
//! `MP_WRITE_FUZZ_SEEDS=1 cargo test -p mp-pipe --test fuzz_corpus -- --ignored` (re)writes the
//! seed files (`seed-NN`) of the corpus.

use mp_core::__fuzz::Harness;

const TARGETS: &[(&str, Harness)] = &[
    ("stream", mp_pipe::__fuzz::stream),
    ("pipe_ring", mp_pipe::__fuzz::pipe_ring),
    ("handshake_server", |b| {
        let _ = mp_pipe::__fuzz::handshake_server(b);
    }),
    ("handshake_client", |b| {
        let _ = mp_pipe::__fuzz::handshake_client(b);
    }),
    ("connection_handle", |b| {
        let _ = mp_pipe::__fuzz::connection_handle(b);
    }),
];

#[test]
fn corpus_replays_without_panics() {
    mp_core::__fuzz::replay_corpus(env!("CARGO_MANIFEST_DIR"), TARGETS);
}

#[test]
fn seeds_run_without_panics() {
    mp_core::__fuzz::replay_seeds(&mp_pipe::__fuzz::seeds(), TARGETS);
}

#[test]
#[ignore = "writes the seed files of fuzz/corpus; run with MP_WRITE_FUZZ_SEEDS=1"]
fn write_seeds() {
    mp_core::__fuzz::write_seeds(env!("CARGO_MANIFEST_DIR"), mp_pipe::__fuzz::seeds());
}

#[test]
fn handshake_seeds_reach_the_end() {
    // The seeds hold right answers to the harnesses' fixed challenge, so the fuzzer starts from
    // inputs that get through every step (a modern and a legacy challenge, each side).
    let seeds = mp_pipe::__fuzz::seeds();
    let of = |target: &str| -> Vec<&Vec<u8>> {
        seeds
            .iter()
            .filter(|(t, _)| *t == target)
            .map(|(_, b)| b)
            .collect()
    };
    let server = of("handshake_server");
    let client = of("handshake_client");
    assert!(mp_pipe::__fuzz::handshake_server(server[0]));
    assert!(mp_pipe::__fuzz::handshake_server(server[1]));
    assert!(!mp_pipe::__fuzz::handshake_server(server[2]));
    assert!(mp_pipe::__fuzz::handshake_client(client[0]));
    assert!(mp_pipe::__fuzz::handshake_client(client[1]));
    assert!(!mp_pipe::__fuzz::handshake_client(client[2]));
}

#[test]
fn connection_handle_seeds_decode() {
    // Real archives of a pipe end and a socket connection decode against the harness's table
    // (slot 0 a duplex pipe end's socket, slot 1 its region); a one-way reader's handle names
    // a region of one ring, so slot 1 (of two rings) is refused for its size.
    let seeds: Vec<Vec<u8>> = mp_pipe::__fuzz::seeds()
        .into_iter()
        .filter(|(t, _)| *t == "connection_handle")
        .map(|(_, b)| b)
        .collect();
    assert_eq!(seeds.len(), 3);
    let decoded: Vec<bool> = seeds
        .iter()
        .map(|s| mp_pipe::__fuzz::connection_handle(s))
        .collect();
    assert_eq!(decoded, [true, false, true]);
    assert!(!mp_pipe::__fuzz::connection_handle(
        &seeds[0][..seeds[0].len() - 1]
    ));
}

#[test]
fn a_connection_handle_whose_socket_slot_is_not_a_socket_is_refused() {
    // The `connection_handle` fuzzer's finding: a handle naming the pipe's region (slot 1) as
    // its socket decoded, and the first poll on it, even with a zero timeout, spun for ever (a
    // memfd is always readable, and never yields a token or an end-of-file). Now refused.
    let input = std::fs::read(
        mp_core::__fuzz::corpus_dir(env!("CARGO_MANIFEST_DIR"), "connection_handle")
            .join("regression-socket-slot-is-a-memfd"),
    )
    .expect("the regression input is in the corpus");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(mp_pipe::__fuzz::connection_handle(&input));
    });
    let decoded = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("decoding and polling the handle hung");
    assert!(!decoded, "a handle whose socket is a memfd must be refused");
}
