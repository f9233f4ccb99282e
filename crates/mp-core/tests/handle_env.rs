//! The handle table of an exec'd child, and `collect`, under bad input (issues 19 and 13):
//! a descriptor listed twice in `MP_FDS` is refused (two owners would close it twice), and a
//! panic inside `collect` does not leave the thread collecting.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;

use mp_core::handle::{self, ENV_FDS};
use mp_core::Error;

const ENV_ROLE: &str = "MP_CORE_TEST_FDS_CHILD";

/// Not a test of its own: the child of `a_descriptor_listed_twice_is_refused`. Exits 0 when
/// its `MP_FDS` is refused, 1 when it was installed.
#[test]
fn fds_child() {
    if std::env::var_os(ENV_ROLE).is_none() {
        return;
    }
    match handle::install_from_env() {
        Err(Error::Handle(m)) if m.contains("twice") => std::process::exit(0),
        other => {
            eprintln!("install_from_env: {other:?}");
            std::process::exit(1)
        }
    }
}

/// `MP_FDS=10,10` is refused before either copy is owned (before: two owners of descriptor
/// 10, and a double close).
#[test]
fn a_descriptor_listed_twice_is_refused() {
    let file = std::fs::File::open("/dev/null").unwrap();
    let raw = file.as_raw_fd();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "fds_child", "--test-threads=1"])
        .env(ENV_ROLE, "1")
        .env(ENV_FDS, "10,10");
    // SAFETY: dup2 is async-signal-safe; it runs between fork and exec in the child only.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 10) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "MP_FDS=10,10 was accepted: {status}");
}

/// A panic in the closure of `collect` leaves the thread as it was: exporting afterwards is
/// refused as outside a collect (before: the thread stayed collecting, and later exports
/// went into a table nobody would read).
#[test]
fn a_panic_inside_collect_resets_it() {
    let file = std::fs::File::open("/dev/null").unwrap();
    let r = std::panic::catch_unwind(|| {
        handle::collect(|| {
            handle::export_fd(file.as_fd()).unwrap();
            panic!("a serializer that panics");
        })
    });
    assert!(r.is_err());
    assert!(matches!(
        handle::export_fd(file.as_fd()),
        Err(Error::Handle(_))
    ));
    // Nested collects still restore the outer one.
    let ((inner, outer_slot), outer) = handle::collect(|| {
        let (_, inner) = handle::collect(|| handle::export_fd(file.as_fd()).unwrap());
        (inner, handle::export_fd(file.as_fd()).unwrap())
    });
    assert_eq!((inner.len(), outer.len(), outer_slot), (1, 1, 0));
}
