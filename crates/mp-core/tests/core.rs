//! mp-core across real processes.
//!
//! Forked children here do only async-signal-safe work (atomic operations, futex calls,
//! `_exit`), which is what makes forking from libtest's threaded harness sound. Children that
//! need more are exec'd: the test binary re-runs itself with `--exact <entry test>` and a
//! marker variable, and the entry test plays the child role.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mp_core::futex::{self, Wake};
use mp_core::handle::{self, ENV_FDS};
use mp_core::message::{self, decode, encode};
use mp_core::region::{Layout, HEADER_SIZE};
use mp_core::{Error, Region, Shared, SharedMemory};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

const CHILD_ROLE: &str = "MP_CORE_TEST_CHILD";
const CHILD_ARG: &str = "MP_CORE_TEST_ARG";

/// Forks a child that runs `f` (which must be async-signal-safe) and `_exit`s with its result;
/// returns the child's exit code.
fn fork_run(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only runs `f`, which callers keep async-signal-safe (atomics, futex
    // syscalls, nanosleep), then `_exit`s without unwinding or running destructors.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = f();
            // SAFETY: _exit is async-signal-safe and ends the child at once.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None).expect("waitpid") {
            WaitStatus::Exited(_, code) => code,
            other => panic!("child ended abnormally: {other:?}"),
        },
    }
}

/// Re-runs this test binary as a child playing `role`, handing it `fds` the way the spawn
/// start method does, and returns its exit status.
fn exec_child(role: &str, arg: &[u8], fds: &[std::os::fd::OwnedFd]) -> std::process::ExitStatus {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, role)
        .env(CHILD_ARG, hex(arg))
        .env(ENV_FDS, handle::env_value(fds));
    // SAFETY: the closure only calls fcntl, which is async-signal-safe.
    unsafe { cmd.pre_exec(move || handle::keep_across_exec(&raw)) };
    cmd.status().expect("spawn the test binary")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The child side of the exec'd tests. Does nothing in a normal test run.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(CHILD_ROLE) else {
        return;
    };
    let arg = unhex(&std::env::var(CHILD_ARG).expect("arg"));
    handle::install_from_env().expect("install fds");
    assert!(std::env::var_os(ENV_FDS).is_none(), "MP_FDS is consumed");
    let code = match role.as_str() {
        "write-region" => {
            let region: Region = decode(&arg).expect("decode region");
            // SAFETY: the parent waits for us and does not touch the region meanwhile.
            unsafe { std::ptr::copy_nonoverlapping(b"from exec".as_ptr(), region.as_ptr(), 9) };
            0
        }
        "add-shared" => {
            let counter: Shared<AtomicU64> = decode(&arg).expect("decode shared");
            counter.fetch_add(1000, Ordering::SeqCst);
            0
        }
        "wrong-type" => match decode::<Shared<AtomicU32>>(&arg) {
            Err(Error::Decode(msg)) if msg.contains("kind") => 7,
            other => {
                eprintln!("unexpected: {other:?}");
                1
            }
        },
        _ => 2,
    };
    std::process::exit(code);
}

#[test]
fn forked_child_writes_region_parent_reads() {
    let region = Region::anonymous(1, 4096, 16).unwrap();
    let ptr = region.as_ptr() as usize;
    let code = fork_run(|| {
        // SAFETY: the mapping is inherited at the same address; the parent waits for us.
        unsafe { std::ptr::copy_nonoverlapping(b"from fork".as_ptr(), ptr as *mut u8, 9) };
        0
    });
    assert_eq!(code, 0);
    let mut buf = [0u8; 9];
    // SAFETY: the child has exited; nobody else writes the region.
    unsafe { std::ptr::copy_nonoverlapping(region.as_ptr(), buf.as_mut_ptr(), 9) };
    assert_eq!(&buf, b"from fork");
}

#[test]
fn exec_child_writes_region_through_handle() {
    let region = Region::anonymous(2, 100, 16).unwrap();
    let (bytes, fds) = handle::collect(|| encode(&region));
    let bytes = bytes.unwrap();
    assert_eq!(fds.len(), 1);
    let status = exec_child("write-region", &bytes, &fds);
    assert!(status.success(), "child failed: {status:?}");
    let mut buf = [0u8; 9];
    // SAFETY: the child has exited.
    unsafe { std::ptr::copy_nonoverlapping(region.as_ptr(), buf.as_mut_ptr(), 9) };
    assert_eq!(&buf, b"from exec");
}

#[test]
fn exec_child_updates_shared_value_and_type_is_checked() {
    let counter = Shared::new(AtomicU64::new(1)).unwrap();
    let (bytes, fds) = handle::collect(|| encode(&counter));
    let bytes = bytes.unwrap();
    assert!(exec_child("add-shared", &bytes, &fds).success());
    assert!(exec_child("add-shared", &bytes, &fds).success());
    assert_eq!(counter.load(Ordering::SeqCst), 2001);
    // The same handle decoded as another type is refused in the child.
    assert_eq!(exec_child("wrong-type", &bytes, &fds).code(), Some(7));
}

#[test]
fn handle_outside_process_start_is_an_error() {
    let region = Region::anonymous(3, 8, 8).unwrap();
    match encode(&region) {
        Err(Error::Encode(msg)) => assert!(msg.contains("only be sent"), "{msg}"),
        other => panic!("expected an encode error, got {other:?}"),
    }
    // A slot this process was never given.
    let (bytes, _fds) = handle::collect(|| encode(&region));
    handle::install(Vec::new());
    match decode::<Region>(&bytes.unwrap()) {
        Err(Error::Decode(msg)) => assert!(msg.contains("slot"), "{msg}"),
        other => panic!("expected a decode error, got {other:?}"),
    }
}

fn header_ptr(region: &Region) -> *mut u8 {
    // SAFETY: the header sits just before the payload in the same mapping.
    unsafe { region.as_ptr().sub(HEADER_SIZE) }
}

#[test]
fn corrupted_header_is_refused() {
    let region = Region::anonymous(9, 64, 8).unwrap();
    let want = Some(region.layout());
    assert!(Region::from_fd(region.dup_fd().unwrap(), want).is_ok());
    // A flipped bit in the size field.
    // SAFETY: offset 16 is the `size` field of the header of our own region; no other process
    // maps it.
    unsafe { *header_ptr(&region).add(16) ^= 0x40 };
    match Region::from_fd(region.dup_fd().unwrap(), None) {
        Err(Error::BadHeader { reason }) => assert!(
            reason.contains("corrupted") || reason.contains("payload"),
            "{reason}"
        ),
        other => panic!("expected BadHeader, got {other:?}"),
    }
    // SAFETY: as above; restore, then break the magic.
    unsafe { *header_ptr(&region).add(16) ^= 0x40 };
    // SAFETY: as above.
    unsafe { *header_ptr(&region) = b'X' };
    match Region::from_fd(region.dup_fd().unwrap(), None) {
        Err(Error::BadHeader { reason }) => assert!(reason.contains("magic"), "{reason}"),
        other => panic!("expected BadHeader, got {other:?}"),
    }
}

#[test]
fn wrong_kind_and_foreign_files_are_refused() {
    let region = Region::anonymous(10, 64, 8).unwrap();
    let other = Layout {
        kind: 11,
        ..region.layout()
    };
    assert!(matches!(
        Region::from_fd(region.dup_fd().unwrap(), Some(other)),
        Err(Error::BadHeader { .. })
    ));
    // A zero-filled file of the right size: not an mp region.
    let fd = nix::sys::memfd::memfd_create(c"foreign", nix::sys::memfd::MemFdCreateFlag::empty())
        .unwrap();
    nix::unistd::ftruncate(&fd, 4096).unwrap();
    match Region::from_fd(fd, None) {
        Err(Error::BadHeader { reason }) => assert!(reason.contains("not initialised"), "{reason}"),
        other => panic!("expected BadHeader, got {other:?}"),
    }
    // A file too small to hold a header.
    let fd =
        nix::sys::memfd::memfd_create(c"tiny", nix::sys::memfd::MemFdCreateFlag::empty()).unwrap();
    nix::unistd::ftruncate(&fd, 10).unwrap();
    assert!(matches!(
        Region::from_fd(fd, None),
        Err(Error::BadHeader { .. })
    ));
}

#[test]
fn anonymous_region_size_errors() {
    assert!(matches!(
        Region::anonymous(1, 0, 8),
        Err(Error::InvalidSize { size: 0, .. })
    ));
    assert!(matches!(
        Region::anonymous(1, u64::MAX, 8),
        Err(Error::InvalidSize { .. })
    ));
    assert!(Region::anonymous(1, 8, 3).is_err());
}

#[test]
fn anonymous_region_size_is_sealed() {
    let region = Region::anonymous(1, 64, 8).unwrap();
    let fd = region.dup_fd().unwrap();
    assert!(
        nix::unistd::ftruncate(&fd, 8).is_err(),
        "shrinking is sealed"
    );
    assert!(
        nix::unistd::ftruncate(&fd, 1 << 20).is_err(),
        "growing is sealed"
    );
    assert_no_more_seals(&fd);
}

/// The seals are sealed: a holder of the descriptor cannot add `F_SEAL_FUTURE_WRITE` (which
/// would make every later writable mapping, so every later `from_fd`, fail).
fn assert_no_more_seals(fd: &std::os::fd::OwnedFd) {
    use nix::fcntl::{fcntl, FcntlArg};
    // SAFETY: F_ADD_SEALS on our own descriptor with a plain flag word.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_FUTURE_WRITE) };
    assert_eq!(r, -1, "a seal could be added");
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM),
        "F_SEAL_SEAL is set"
    );
    let seals = fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS).unwrap();
    assert_ne!(seals & libc::F_SEAL_SEAL, 0);
}

/// A region made in one pid namespace is refused, with a typed error, by a process of another:
/// the pids its locks record mean other processes there.
#[test]
fn region_from_another_pid_namespace_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: unshare(CLONE_NEWPID) needs root");
        return;
    }
    let region = Region::anonymous(12, 64, 8).unwrap();
    let fd = region.dup_fd().unwrap();
    let layout = region.layout();
    // A child in the same namespace accepts it.
    let same = fork_run(
        || match Region::from_fd(fd.try_clone().unwrap(), Some(layout)) {
            Ok(_) => 0,
            Err(_) => 1,
        },
    );
    assert_eq!(same, 0);
    let code = fork_run(move || {
        // SAFETY: unshare and fork are system calls; the grandchild (pid 1 of the new
        // namespace) maps the region and `_exit`s.
        unsafe {
            if libc::unshare(libc::CLONE_NEWPID) != 0 {
                return 10;
            }
            let pid = libc::fork();
            if pid < 0 {
                return 11;
            }
            if pid == 0 {
                let code = match Region::from_fd(fd, Some(layout)) {
                    Err(Error::ForeignPidNamespace { region, ours }) if region != ours => 0,
                    Err(_) => 2,
                    Ok(_) => 3,
                };
                libc::_exit(code);
            }
            let mut status = 0;
            if libc::waitpid(pid, &mut status, 0) != pid || !libc::WIFEXITED(status) {
                return 12;
            }
            libc::WEXITSTATUS(status)
        }
    });
    assert_eq!(
        code, 0,
        "3: accepted across namespaces; 10-12: setup failed"
    );
}

#[test]
fn growable_region_grows_but_never_shrinks() {
    let region = Region::anonymous_growable(1, 64, 8).unwrap();
    region.grow_file(1 << 20).unwrap();
    let fd = region.dup_fd().unwrap();
    assert_eq!(
        nix::sys::stat::fstat(fd.as_raw_fd()).unwrap().st_size,
        1 << 20
    );
    assert!(
        nix::unistd::ftruncate(&fd, 8).is_err(),
        "shrinking is sealed"
    );
    // The header still validates on a file longer than the region.
    assert!(Region::from_fd(region.dup_fd().unwrap(), Some(region.layout())).is_ok());
    let sealed = Region::anonymous(1, 64, 8).unwrap();
    assert!(sealed.grow_file(1 << 20).is_err());
    assert_no_more_seals(&fd);
}

#[test]
fn futex_wake_crosses_processes() {
    let word = Shared::new(AtomicU32::new(0)).unwrap();
    let addr = (&*word) as *const AtomicU32 as usize;
    // SAFETY: the child only touches the inherited shared atomic and calls futex/nanosleep.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            // SAFETY: the mapping is inherited at the same address and outlives the child.
            let w = unsafe { &*(addr as *const AtomicU32) };
            std::thread::sleep(Duration::from_millis(50));
            w.store(1, Ordering::Release);
            futex::wake_all(w);
            // SAFETY: ends the child without unwinding.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            let got = futex::wait_until(
                &word,
                |v| v == 1,
                mp_core::Deadline::after(Some(Duration::from_secs(10))),
            );
            assert_eq!(got, Ok(1));
            assert!(matches!(waitpid(child, None), Ok(WaitStatus::Exited(_, 0))));
        }
    }
}

#[test]
fn futex_timed_wait_returns_after_timeout() {
    let word = AtomicU32::new(5);
    let t0 = Instant::now();
    let r = futex::wait(&word, 5, Some(Duration::from_millis(100)));
    let dt = t0.elapsed();
    assert_eq!(r, Wake::TimedOut);
    assert!(dt >= Duration::from_millis(100), "{dt:?}");
    assert!(dt < Duration::from_secs(2), "{dt:?}");
    assert_eq!(futex::wait(&word, 6, None), Wake::Changed);
    let t0 = Instant::now();
    let r = futex::wait_until(
        &word,
        |v| v == 0,
        mp_core::Deadline::after(Some(Duration::from_millis(100))),
    );
    assert_eq!(r, Err(5));
    assert!(t0.elapsed() >= Duration::from_millis(100));
}

fn shm_entry_exists(name: &str) -> bool {
    std::path::Path::new(&format!("/dev/shm/mp-{name}")).exists()
}

fn unique(tag: &str) -> String {
    format!("coretest-{tag}-{}", std::process::id())
}

#[test]
fn named_region_errors() {
    let name = unique("errors");
    assert!(matches!(
        SharedMemory::create(&name, 0),
        Err(Error::InvalidSize { size: 0, .. })
    ));
    assert!(matches!(
        SharedMemory::attach(&name),
        Err(Error::NotFound { .. })
    ));
    let owner = SharedMemory::create(&name, 512).unwrap();
    assert_eq!(owner.size(), 512);
    assert!(shm_entry_exists(&name));
    let meta = std::fs::metadata(format!("/dev/shm/mp-{name}")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(matches!(
        SharedMemory::create(&name, 512),
        Err(Error::Exists { .. })
    ));
    let other = SharedMemory::attach(&name).unwrap();
    assert_eq!(other.size(), 512);
    owner.write_at(510, b"ab").unwrap();
    assert!(matches!(
        owner.write_at(511, b"ab"),
        Err(Error::OutOfRange {
            offset: 511,
            len: 2,
            size: 512
        })
    ));
    // An offset near usize::MAX: offset + len overflows. The error reports the request as
    // given (it used to add the two: a panic in debug builds, a wrapped size in release).
    let mut buf = [0u8; 2];
    assert!(matches!(
        other.read_at(usize::MAX, &mut buf),
        Err(Error::OutOfRange {
            offset: u64::MAX,
            len: 2,
            size: 512
        })
    ));
    assert!(matches!(
        owner.write_at(usize::MAX - 1, b"abc"),
        Err(Error::OutOfRange { .. })
    ));
    let mut two = [0u8; 2];
    other.read_at(510, &mut two).unwrap();
    assert_eq!(&two, b"ab");
    owner.unlink().unwrap();
    assert!(matches!(owner.unlink(), Err(Error::NotFound { .. })));
    assert!(!shm_entry_exists(&name));
    for bad in ["", "a/b", ".."] {
        assert!(matches!(
            SharedMemory::create(bad, 1),
            Err(Error::InvalidName { .. })
        ));
    }
}

#[test]
fn named_region_written_by_child_seen_by_parent_and_owner_drop_unlinks() {
    let name = unique("child");
    let owner = SharedMemory::create(&name, 64).unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "named_child_entry", "--nocapture"])
        .env("MP_CORE_NAMED", &name)
        .status()
        .unwrap();
    assert!(status.success());
    let mut buf = [0u8; 5];
    owner.read_at(0, &mut buf).unwrap();
    assert_eq!(&buf, b"child");
    drop(owner);
    assert!(!shm_entry_exists(&name), "the owner unlinks on drop");
}

/// Child side of the test above: attaches by name (an unrelated process), writes, exits.
#[test]
fn named_child_entry() {
    let Ok(name) = std::env::var("MP_CORE_NAMED") else {
        return;
    };
    let shm = SharedMemory::attach(&name).unwrap();
    shm.write_at(0, b"child").unwrap();
    drop(shm);
    assert!(
        shm_entry_exists(&name),
        "an attached handle does not unlink"
    );
}

#[test]
fn attaching_a_foreign_shm_file_is_refused() {
    let name = unique("foreign");
    let path = format!("/dev/shm/mp-{name}");
    std::fs::write(&path, vec![0xAB; 4096]).unwrap();
    let r = SharedMemory::attach(&name);
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(r, Err(Error::BadHeader { .. })), "{r:?}");
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct Sample {
    id: u64,
    name: String,
    values: Vec<i32>,
    maybe: Option<Inner>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct Inner {
    id: u64,
    tags: Vec<String>,
}

#[test]
fn messages_round_trip_and_access_in_place() {
    let s = Sample {
        id: 7,
        name: "seven".into(),
        values: vec![-1, 2, 3],
        maybe: Some(Inner {
            id: 8,
            tags: vec!["a".into(), String::new()],
        }),
    };
    let bytes = encode(&s).unwrap();
    let archived = message::access::<Sample>(&bytes).unwrap();
    assert_eq!(archived.id, 7);
    assert_eq!(archived.name.as_str(), "seven");
    assert_eq!(decode::<Sample>(&bytes).unwrap(), s);
    // Zero-byte payloads: the unit type and an empty vector.
    let unit = encode(&()).unwrap();
    decode::<()>(&unit).unwrap();
    assert_eq!(
        decode::<Vec<u8>>(&encode(&Vec::<u8>::new()).unwrap()).unwrap(),
        Vec::<u8>::new()
    );
    // Truncations of a valid archive are errors, never panics.
    for cut in 0..bytes.len() {
        assert!(decode::<Sample>(&bytes[..cut]).is_err() || cut == bytes.len());
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut aligned = rkyv::util::AlignedVec::<16>::new();
            aligned.extend_from_slice(&bytes);
            let _ = decode::<Sample>(&aligned);
            let _ = decode::<String>(&aligned);
            let _ = decode::<Vec<u64>>(&aligned);
            let _ = decode::<(u8, Option<String>)>(&aligned);
            let _ = message::access::<Sample>(&aligned);
            let _ = decode::<mp_core::Serde<Vec<String>>>(&aligned);
        }

        #[test]
        fn valid_messages_round_trip(id in any::<u64>(), name in ".{0,40}", values in proptest::collection::vec(any::<i32>(), 0..64)) {
            let s = Sample { id, name, values, maybe: None };
            let bytes = encode(&s).unwrap();
            prop_assert_eq!(decode::<Sample>(&bytes).unwrap(), s);
        }
    }
}
