//! `isolate!` itself (issue 19): the marker by which an isolated copy says it ran lives in a
//! private directory, so a planted symlink at a predictable name cannot redirect its write.

use std::path::PathBuf;

/// An isolated test with nothing to do.
#[test]
fn isolated_noop() {
    mp_process::isolate!(isolated_noop);
}

/// Symlinks planted at the names the marker used to have (`$TMPDIR/mp-isolated-<pid>-<n>`)
/// are neither followed nor removed (before: the isolated copy wrote "ran" through one into
/// the file it pointed to, and the parent then removed the link).
#[test]
fn the_isolation_marker_follows_no_planted_symlink() {
    let tmp = std::env::temp_dir();
    let pid = std::process::id();
    let victim = tmp.join(format!("mp-isolate-victim-{pid}"));
    std::fs::write(&victim, b"").unwrap();
    let links: Vec<PathBuf> = (0..64)
        .map(|n| tmp.join(format!("mp-isolated-{pid}-{n}")))
        .collect();
    for l in &links {
        let _ = std::fs::remove_file(l);
        std::os::unix::fs::symlink(&victim, l).unwrap();
    }
    let ran = mp_process::testing::isolated(
        module_path!(),
        "isolated_noop",
        std::time::Duration::from_secs(60),
    );
    assert!(!ran, "this process is not the isolated copy");
    let written = std::fs::read(&victim).unwrap();
    let kept = links
        .iter()
        .filter(|l| l.symlink_metadata().is_ok())
        .count();
    for l in &links {
        let _ = std::fs::remove_file(l);
    }
    std::fs::remove_file(&victim).unwrap();
    assert!(
        written.is_empty(),
        "the marker was written through a symlink"
    );
    assert_eq!(kept, links.len(), "a planted symlink was removed");
}
