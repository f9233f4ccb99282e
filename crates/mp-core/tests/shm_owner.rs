//! `SharedMemory::attach` refuses a block this uid does not own alone (issue 19): another
//! user could have made it beforehand to read, change or truncate what the victim shares.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use mp_core::{Error, SharedMemory};

const ENV_CREATE: &str = "MP_CORE_TEST_CREATE_SHM";

fn unique(tag: &str) -> String {
    format!("owner-{tag}-{}", std::process::id())
}

/// Not a test of its own: run by `a_block_made_by_another_uid_is_refused` as a child of
/// another uid, it creates the block, opens it to everyone (mode 0666) and leaves it there.
#[test]
fn other_uid_creates_a_block() {
    let Ok(name) = std::env::var(ENV_CREATE) else {
        return;
    };
    let shm = SharedMemory::create(&name, 4096).unwrap();
    std::fs::set_permissions(
        format!("/dev/shm/mp-{name}"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    // Leave the name in place (the creator's drop would unlink it).
    std::mem::forget(shm);
}

/// A valid block pre-created by uid 65534 with mode 0666 is refused, and the error says why
/// (before: attached, so its maker could read and change it, or truncate it under us).
#[test]
fn a_block_made_by_another_uid_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run a child of another uid");
        return;
    }
    let name = unique("foreign-uid");
    let path = format!("/dev/shm/mp-{name}");
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "other_uid_creates_a_block", "--test-threads=1"])
        .env(ENV_CREATE, &name)
        .uid(65534)
        .gid(65534)
        .status()
        .unwrap();
    assert!(status.success(), "the child could not create the block");
    let r = SharedMemory::attach(&name);
    std::fs::remove_file(&path).unwrap();
    match r {
        Err(Error::BadHeader { reason }) => {
            assert!(reason.contains("uid 65534"), "{reason}");
        }
        other => panic!("a block of uid 65534 was attached: {:?}", other.map(|_| ())),
    }
}

/// A block of this uid that group or others may open is refused too; one of mode 0600 is
/// attached.
#[test]
fn a_block_others_may_open_is_refused() {
    let name = unique("open-mode");
    let path = format!("/dev/shm/mp-{name}");
    let shm = SharedMemory::create(&name, 64).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let r = SharedMemory::attach(&name);
    match r {
        Err(Error::BadHeader { reason }) => assert!(reason.contains("0640"), "{reason}"),
        other => panic!("a block of mode 0640 was attached: {:?}", other.map(|_| ())),
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let other = SharedMemory::attach(&name).unwrap();
    assert_eq!(other.size(), 64);
    drop(other);
    drop(shm);
    assert!(!std::path::Path::new(&path).exists());
}
