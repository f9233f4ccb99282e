//! Replays the fuzzing corpus of this crate's targets on stable: every file of
//! `fuzz/corpus/<target>/` (the seeds and what `cargo xtask fuzz` found) goes through the
//! same entry point the `cargo fuzz` target calls (`mp_core::__fuzz`), each under
//! `catch_unwind`, and the test names every file that panicked. The seeds are also run as
//! made now, so a change of format cannot leave the stored ones stale unnoticed.
//!
//! `MP_WRITE_FUZZ_SEEDS=1 cargo test -p mp-core --test fuzz_corpus -- --ignored` (re)writes the
//! seed files (`seed-NN`) of the corpus.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// A harness: runs one input.
type Harness = fn(&[u8]);

const TARGETS: &[(&str, Harness)] = &[
    ("region_header", |b| {
        let _ = mp_core::__fuzz::region_header(b);
    }),
    ("message", mp_core::__fuzz::message),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Runs `run` on every input and returns the names of those that panicked.
fn panics<'a>(run: Harness, inputs: impl Iterator<Item = (String, &'a [u8])>) -> Vec<String> {
    let mut failed = Vec::new();
    for (name, bytes) in inputs {
        if catch_unwind(AssertUnwindSafe(|| run(bytes))).is_err() {
            failed.push(name);
        }
    }
    failed
}

#[test]
fn corpus_replays_without_panics() {
    for &(target, run) in TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (the corpus lives in the repository)",
                    dir.display()
                )
            })
            .map(|e| e.expect("read_dir entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{}: no corpus files", dir.display());
        let inputs: Vec<(String, Vec<u8>)> = files
            .iter()
            .map(|p| {
                (
                    p.display().to_string(),
                    std::fs::read(p).expect("read a corpus file"),
                )
            })
            .collect();
        let failed = panics(run, inputs.iter().map(|(n, b)| (n.clone(), b.as_slice())));
        assert!(failed.is_empty(), "{target}: panicked on {failed:#?}");
        eprintln!("{target}: {} corpus files replayed", files.len());
    }
}

#[test]
fn seeds_run_without_panics() {
    let seeds = mp_core::__fuzz::seeds();
    for &(target, run) in TARGETS {
        let mine: Vec<(String, &[u8])> = seeds
            .iter()
            .enumerate()
            .filter(|(_, (t, _))| *t == target)
            .map(|(i, (_, b))| (format!("{target} seed {i}"), b.as_slice()))
            .collect();
        assert!(!mine.is_empty(), "{target} has no seeds");
        let failed = panics(run, mine.into_iter());
        assert!(failed.is_empty(), "panicked on {failed:?}");
    }
}

#[test]
#[ignore = "writes the seed files of fuzz/corpus; run with MP_WRITE_FUZZ_SEEDS=1"]
fn write_seeds() {
    if std::env::var_os("MP_WRITE_FUZZ_SEEDS").is_none() {
        return;
    }
    let mut n = std::collections::HashMap::<&str, usize>::new();
    for (target, bytes) in mp_core::__fuzz::seeds() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("create the corpus directory");
        let i = n.entry(target).or_default();
        std::fs::write(dir.join(format!("seed-{i:02}")), bytes).expect("write a seed");
        *i += 1;
    }
}

#[test]
fn region_seeds_are_accepted() {
    // Real headers, read back from real regions: the harness accepts them, with and without
    // its repairs.
    let seeds: Vec<Vec<u8>> = mp_core::__fuzz::seeds()
        .into_iter()
        .filter(|(t, _)| *t == "region_header")
        .map(|(_, b)| b)
        .collect();
    assert_eq!(seeds.len(), 6);
    for s in &seeds {
        assert!(mp_core::__fuzz::region_header(s), "{:?}", &s[..8]);
    }
    let mut corrupt = seeds[0].clone();
    corrupt[20] ^= 1; // a bit of the size: the check catches it
    assert!(!mp_core::__fuzz::region_header(&corrupt));
    corrupt[0] = 8; // ... unless the check is recomputed (then the size is out of the file)
    assert!(!mp_core::__fuzz::region_header(&corrupt));
}
