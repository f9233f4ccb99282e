//! Processes out of a resource other than descriptors: a small tmpfs over `/dev/shm` for the
//! named shared-memory blocks, and a process-count limit.

use std::ffi::CString;
use std::time::Duration;

use mp::process::{ClosureProcess, StartMethod};
use mp::{Pool, Process, ShareableList, SharedMemory, SharedMemoryManager};

use crate::common::fork;
use crate::harness::{Fault, Round};

/// Exit codes of the exhaustion children that are not findings but setup failures.
const NO_NAMESPACE: u32 = 20;
const NO_MOUNT: u32 = 21;
const NO_UID: u32 = 22;
const NO_RLIMIT: u32 = 23;

/// Named blocks and lists are made in a small tmpfs until it is full: each failure is a typed
/// error (never a panic, never a `SIGBUS` on a write into a block that `create` returned); after
/// dropping them, a new one works.
///
/// The child runs in a mount namespace of its own (`unshare(CLONE_NEWNS)`, mounts made
/// private) and mounts a tmpfs of 128 to 512 KiB over `/dev/shm` there: the campaign's own
/// `/dev/shm` is not touched, and the blocks go with the namespace when the child ends (each
/// owner also unlinks its block when dropped). It makes, in turn, a `SharedMemory` that it
/// fills to its last byte, a `ShareableList`, and a block and a list of a
/// `SharedMemoryManager` (whose cleaner process is started in the namespace too).
pub(crate) fn tmpfs_exhaustion(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let kib = 128 + 128 * r.rng.below(4);
    let block = 4096 * (1 + r.rng.below(12));
    let mut child = fork(move || tmpfs_child(kib, block))?;
    match crate::common::join_ok(r, &mut child, "process in a full tmpfs") {
        Some(0) => {}
        Some(NO_NAMESPACE) => return Err("unshare(CLONE_NEWNS) failed (needs root)".into()),
        Some(NO_MOUNT) => return Err("mounting a tmpfs over /dev/shm failed".into()),
        Some(1) => r.wrong("nothing failed in a tmpfs of a few hundred KiB"),
        Some(2) => r.wrong("a block could not be made after the others were dropped"),
        Some(3) => r.wrong("a failure was not the typed out-of-space error"),
        Some(4) => r.wrong("the SharedMemoryManager could not be started or shut down"),
        Some(c) => r.wrong(format!("exit code {c}")),
        None => {}
    }
    Ok(())
}

/// Mounts a private tmpfs of `kib` KiB over `/dev/shm` in a new mount namespace.
fn private_tmpfs(kib: u64) -> Result<(), u32> {
    // SAFETY: unshare changes only this (single-threaded, forked) process's namespaces.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(NO_NAMESPACE);
    }
    let root = CString::new("/").map_err(|_| NO_MOUNT)?;
    let shm = CString::new("/dev/shm").map_err(|_| NO_MOUNT)?;
    let fstype = CString::new("tmpfs").map_err(|_| NO_MOUNT)?;
    let opts = CString::new(format!("size={kib}k,mode=1777")).map_err(|_| NO_MOUNT)?;
    // SAFETY: mount reads the NUL-terminated strings passed, which live until it returns.
    // Making every mount private first keeps the tmpfs out of the campaign's namespace.
    let ok = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) == 0
            && libc::mount(
                fstype.as_ptr(),
                shm.as_ptr(),
                fstype.as_ptr(),
                0,
                opts.as_ptr().cast(),
            ) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(NO_MOUNT)
    }
}

/// True for the errors that say the tmpfs is full (or the system out of memory for it).
fn out_of_space(text: &str) -> bool {
    text.contains("No space left") || text.contains("Cannot allocate memory")
}

/// The child of [`tmpfs_exhaustion`]: its exit code says what it saw.
fn tmpfs_child(kib: u64, block: u64) -> u32 {
    if let Err(code) = private_tmpfs(kib) {
        return code;
    }
    let Ok(manager) = SharedMemoryManager::start() else {
        return 4;
    };
    let me = std::process::id();
    let mut blocks = Vec::new();
    let mut lists = Vec::new();
    let (mut failures, mut untyped) = (0u32, 0u32);
    let items: Vec<String> = (0..16)
        .map(|i| format!("item {i:04} {}", "x".repeat(200)))
        .collect();
    for i in 0..400u32 {
        let name = format!("faults-tmpfs-{me}-{i}");
        let made: Result<(), String> = match i % 4 {
            0 => SharedMemory::create(&name, block)
                .and_then(|b| {
                    // Every page written: a page the tmpfs cannot give would be a SIGBUS here.
                    b.write_at(0, &vec![0xa5; b.size()])?;
                    blocks.push(b);
                    Ok(())
                })
                .map_err(|e| e.to_string()),
            1 => ShareableList::create(&name, items.iter().map(String::as_str))
                .map(|l| lists.push(l))
                .map_err(|e| e.to_string()),
            2 => match manager.shared_memory(block) {
                Ok(b) => b
                    .write_at(0, &vec![0x5a; b.size()])
                    .map(|()| blocks.push(b))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            _ => manager
                .shareable_list(items.iter().map(String::as_str))
                .map(|l| lists.push(l))
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = made {
            failures += 1;
            if !out_of_space(&e) {
                eprintln!("tmpfs_exhaustion: an untyped failure: {e}");
                untyped += 1;
            }
        }
    }
    let code = if failures == 0 {
        1
    } else if untyped > 0 {
        3
    } else {
        drop(blocks);
        drop(lists);
        let name = format!("faults-tmpfs-{me}-after");
        match SharedMemory::create(&name, block) {
            Ok(b) if b.write_at(0, &vec![1; b.size()]).is_ok() => 0,
            _ => 2,
        }
    };
    if manager.shutdown().is_err() {
        return 4;
    }
    code
}

/// In a child running as an unprivileged user (`nobody`, uid 65534: root ignores the limit)
/// with `RLIMIT_NPROC` a few above the processes that user already has, processes and then a
/// pool are started until the limit: each refusal is a typed start error (`Error::Io` with
/// `EAGAIN` from the fork, `pool::Error::Start`), nothing hangs, and every child that
/// did start is joined (no orphan). After they are gone, a new process starts.
pub(crate) fn nproc_exhaustion(r: &mut Round<'_>, _f: Fault) -> Result<(), String> {
    let spare = 2 + r.rng.below(6);
    let mut child = fork(move || nproc_child(spare))?;
    match crate::common::join_ok(r, &mut child, "process out of its process count") {
        Some(0) => {}
        Some(NO_UID) => return Err("setuid(65534) failed (needs root)".into()),
        Some(NO_RLIMIT) => return Err("setrlimit(RLIMIT_NPROC) failed".into()),
        Some(1) => r.wrong("every start succeeded under a process limit of a few"),
        Some(2) => r.wrong("a start refused with an error other than EAGAIN"),
        Some(3) => r.wrong("a pool over the limit did not fail with a typed start error"),
        Some(4) => r.wrong("a started child did not return its value"),
        Some(5) => r.wrong("a process could not start after the others ended"),
        Some(7) => r.wrong("processes the round started outlived it (orphans)"),
        Some(c) => r.wrong(format!("exit code {c}")),
        None => {}
    }
    Ok(())
}

/// The unprivileged user the process-count child runs as.
const NOBODY: u32 = 65534;

/// The processes of real uid `uid` now, from `/proc`.
fn processes_of(uid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        e.file_name().to_str()?.parse::<u32>().ok()?;
        let status = std::fs::read_to_string(e.path().join("status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("Uid:"))?;
        (line.split_whitespace().nth(1)?.parse::<u32>().ok()? == uid).then_some(())
    })
    .count() as u64
}

/// Becomes `nobody` (gid and uid 65534, no supplementary groups) with at most `spare` more
/// processes than that user has; returns how many that user has (this one included).
fn become_limited_nobody(spare: u64) -> Result<u64, u32> {
    // SAFETY: plain system calls on this (single-threaded, forked) process's credentials.
    let ok = unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setgid(NOBODY) == 0
            && libc::setuid(NOBODY) == 0
    };
    if !ok {
        return Err(NO_UID);
    }
    // Counted after the switch: this process is one of nobody's now.
    let before = processes_of(NOBODY);
    let limit = before + spare;
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: setrlimit reads the struct; lowering our own limit is always allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &lim) } != 0 {
        return Err(NO_RLIMIT);
    }
    Ok(before)
}

/// The typed refusal of a start over the process limit: `fork` (or the thread the start
/// runs it on) failed with `EAGAIN`.
fn is_eagain(e: &mp::process::Error) -> bool {
    match e {
        mp::process::Error::Io { source, .. } => source.raw_os_error() == Some(libc::EAGAIN),
        _ => false,
    }
}

fn triple(x: u64) -> u64 {
    x * 3
}

/// The child of [`nproc_exhaustion`]: its exit code says what it saw.
fn nproc_child(spare: u64) -> u32 {
    let before = match become_limited_nobody(spare) {
        Ok(n) => n,
        Err(code) => return code,
    };
    // Each child sleeps until told to go, so that they all count at once.
    let Ok(go) = mp::Event::new() else {
        return 6;
    };
    let mut started = Vec::new();
    let (mut refused, mut untyped) = (0u32, 0u32);
    for i in 0..(spare + 8) {
        let go = go.clone();
        let p = ClosureProcess::new(move || {
            go.wait_timeout(Duration::from_secs(10));
            triple(i)
        })
        .daemon(true)
        .start();
        match p {
            Ok(c) => started.push((i, c)),
            Err(e) => {
                refused += 1;
                if !is_eagain(&e) {
                    eprintln!("nproc_exhaustion: a start refused with {e}");
                    untyped += 1;
                }
            }
        }
    }
    // A pool of more workers than the limit leaves: a typed start error, at once.
    let pool = Pool::builder()
        .processes(spare as usize + 4)
        .start_method(StartMethod::Fork)
        .build();
    let pool_ok = match pool {
        Err(mp::pool::Error::Start(_)) => true,
        Err(mp::pool::Error::Process(e)) if is_eagain(&e) => true,
        Err(e) => {
            eprintln!("nproc_exhaustion: the pool failed with {e:?}");
            false
        }
        Ok(p) => {
            // It started (fewer of nobody's processes than counted were alive): it must work.
            let ok = p.apply(triple, 2).ok() == Some(6);
            p.terminate();
            ok
        }
    };
    go.set();
    let mut wrong_value = false;
    for (i, mut c) in started {
        match c.join_timeout(Duration::from_secs(10)) {
            Ok(Some(v)) if v == triple(i) => {}
            _ => {
                wrong_value = true;
                let _ = c.kill();
                let _ = c.join();
            }
        }
    }
    let after = Process::new(triple, 7u64)
        .start_method(StartMethod::Fork)
        .start()
        .map_err(|e| e.to_string())
        .and_then(|mut c| c.join().map_err(|e| e.to_string()));
    // Every child, worker and launcher that did start is gone (none outlives the calls that
    // made it): the user's process count is back where it was (after a moment for the
    // kernel to reap what the pool's failure ended).
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while processes_of(NOBODY) > before && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let orphans = processes_of(NOBODY).saturating_sub(before);
    if refused == 0 {
        1
    } else if untyped > 0 {
        2
    } else if !pool_ok {
        3
    } else if wrong_value {
        4
    } else if !matches!(after, Ok(21)) {
        5
    } else if orphans > 0 {
        eprintln!("nproc_exhaustion: {orphans} processes of nobody outlived the round");
        7
    } else {
        0
    }
}
