//! The boot of a spawn child trusts nothing it did not get from its parent (issue 19): under
//! a secure exec (setuid) the child role is ignored, and the channel must be a socket made by
//! the parent.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

mp_process::test_support!();

const ROLE: &str = "MP_PROCESS_ROLE";
const CHAN: &str = "MP_PROCESS_CHAN";

fn child_entry(cmd: &mut Command) -> &mut Command {
    cmd.args(["--exact", "__mp_process_child", "--test-threads=1"])
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A set-user-ID copy of this program run by uid 65534 with the spawn role in its environment
/// runs as itself (the hidden entry test passes), not as a child reading a boot frame (before:
/// it set off to boot, and refused only because no channel was named).
#[test]
fn a_setuid_program_ignores_the_child_role() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to make a set-user-ID program");
        return;
    }
    let dir = std::env::temp_dir().join(format!("mp-setuid-test-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("setuid-copy");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let out = child_entry(&mut Command::new(&exe))
        .env(ROLE, "spawn")
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output();
    std::fs::remove_file(&exe).unwrap();
    std::fs::remove_dir(&dir).unwrap();
    let out = out.unwrap();
    assert!(
        out.status.success() && !stderr(&out).contains("mp spawn child"),
        "the set-user-ID program acted as a spawn child: {} {}",
        out.status,
        stderr(&out)
    );
}

/// A channel that is not a socket (here: stdin) is refused before anything is read from it
/// (before: the child read its boot frame from stdin).
#[test]
fn a_channel_that_is_not_a_socket_is_refused() {
    let out = child_entry(&mut Command::new(std::env::current_exe().unwrap()))
        .env(ROLE, "spawn")
        .env(CHAN, "0")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a socket"), "{}", stderr(&out));
}

/// A socket made by another process than the child's parent is refused (here the socket is
/// this process's, and the child's parent a shell in between; before: the child booted from
/// whatever that socket said).
#[test]
fn a_channel_made_by_another_process_is_refused() {
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let raw = theirs.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    cmd.args([
        "-c",
        r#""$0" --exact __mp_process_child --test-threads=1 & wait"#,
    ])
    .arg(std::env::current_exe().unwrap())
    .env(ROLE, "spawn")
    .env(CHAN, "3")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    // SAFETY: dup2 is async-signal-safe; it runs between fork and exec, in the child only.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(theirs);
    drop(mine);
    let out = child.wait_with_output().unwrap();
    assert!(
        stderr(&out).contains("not by this process's parent"),
        "{}",
        stderr(&out)
    );
}

/// The channel listed among the shared objects' descriptors too (`MP_FDS`) is refused: two
/// owners of one descriptor (before: both took it, and it would have been closed twice).
#[test]
fn a_channel_listed_among_the_shared_descriptors_is_refused() {
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let raw = theirs.as_raw_fd();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    child_entry(&mut cmd)
        .env(ROLE, "spawn")
        .env(CHAN, "3")
        .env("MP_FDS", "3")
        .stdin(Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it runs between fork and exec, in the child only.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    drop(theirs);
    drop(mine);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("lists too"), "{}", stderr(&out));
}
