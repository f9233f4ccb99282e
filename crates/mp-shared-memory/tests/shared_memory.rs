//! ShareableList and SharedMemoryManager across real processes, under fork and spawn:
//! CPython's test_shared_memory behaviours (get/set across processes, negative indices,
//! too-long values refused, count/index, format), attach by name from a child, a peer writing
//! garbage, and the manager's blocks gone after shutdown, drop, and a SIGKILL of its starter.
//!
//! Children here do only what a forked child of a threaded parent may (compute, allocate,
//! use shared memory, start a child of their own with fork or spawn, return).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mp_core::Shared;
use mp_process::{Child, Process, ProcessError, StartMethod};
use mp_shared_memory::{Item, ShareableList, SharedMemory, SharedMemoryManager};
use static_assertions::assert_impl_all;

mp_process::test_support!();

assert_impl_all!(ShareableList: Send, Sync, Clone);
assert_impl_all!(Item: Send, Sync, Clone);
assert_impl_all!(SharedMemoryManager: Send, Sync);
assert_impl_all!(mp_shared_memory::Error: Send, Sync, std::error::Error);

const METHODS: [StartMethod; 2] = [StartMethod::Fork, StartMethod::Spawn];
/// Watchdog for every join and every wait: a test that would hang fails instead.
const WATCHDOG: Duration = Duration::from_secs(30);

fn join<R: mp_core::Message + std::fmt::Debug>(c: &mut Child<R>) -> Result<R, ProcessError> {
    match c.join_timeout(WATCHDOG) {
        Ok(Some(v)) => Ok(v),
        Ok(None) => {
            let _ = c.kill();
            panic!("child {} still running after {WATCHDOG:?}", c.pid())
        }
        Err(e) => Err(e),
    }
}

fn method_code(m: StartMethod) -> u8 {
    match m {
        StartMethod::Fork => 0,
        StartMethod::Spawn => 1,
        _ => 2,
    }
}

fn method_of(code: u8) -> StartMethod {
    match code {
        0 => StartMethod::Fork,
        1 => StartMethod::Spawn,
        _ => StartMethod::ForkServer,
    }
}

fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "test-sl-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn python_example() -> Vec<Item> {
    vec![
        "howdy".into(),
        b"HoWdY".as_slice().into(),
        (-273.154).into(),
        100.into(),
        Item::None,
        true.into(),
        42.into(),
    ]
}

/// CPython's test_shared_memory_ShareableList_basics, in one process.
#[test]
fn basics_as_in_cpython() {
    let sl = ShareableList::new(python_example()).unwrap();
    assert_eq!(sl.len(), 7);
    assert_eq!(sl.format().unwrap(), "8s8sdqxxxxxx?xxxxxxxx?q");
    assert_eq!(sl.to_vec().unwrap(), python_example());
    assert_eq!(sl.get(3).unwrap(), Item::Int(100));
    assert_eq!(sl.get(-1).unwrap(), Item::Int(42));
    assert_eq!(sl.get(-7).unwrap(), Item::Str("howdy".into()));
    // Out of range, both ways, for get and set.
    for i in [7, -8, isize::MAX, isize::MIN] {
        assert!(
            matches!(
                sl.get(i),
                Err(mp_core::Error::IndexOutOfRange { len: 7, .. })
            ),
            "{i}"
        );
        assert!(matches!(
            sl.set(i, 1),
            Err(mp_core::Error::IndexOutOfRange { .. })
        ));
    }
    // A kind may change within the slot's size.
    sl.set(2, "dry ice").unwrap();
    assert_eq!(sl.get(2).unwrap(), Item::Str("dry ice".into()));
    assert_eq!(sl.format().unwrap(), "8s8s8sqxxxxxx?xxxxxxxx?q");
    sl.set(0, 3.5).unwrap();
    assert_eq!(sl.get(0).unwrap(), Item::Float(3.5));
    sl.set(0, "howdy").unwrap();
    // Too long for the slot: refused, the slot keeps its value.
    match sl.set(2, "encyclopedia") {
        Err(mp_core::Error::ValueTooLong {
            index: 2,
            len: 12,
            capacity: 8,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(sl.get(2).unwrap(), Item::Str("dry ice".into()));
    assert!(matches!(
        sl.set(1, b"123456789".as_slice()),
        Err(mp_core::Error::ValueTooLong { .. })
    ));
    // count and index.
    assert_eq!(sl.count(&Item::None).unwrap(), 1);
    assert_eq!(sl.count(&Item::Str("howdy".into())).unwrap(), 1);
    sl.set(3, "howdy").unwrap();
    assert_eq!(sl.count(&Item::Str("howdy".into())).unwrap(), 2);
    assert_eq!(sl.index(&Item::Str("howdy".into())).unwrap(), 0);
    assert_eq!(sl.index(&Item::Bool(true)).unwrap(), 5);
    assert!(matches!(
        sl.index(&Item::Int(1_000)),
        Err(mp_core::Error::ValueNotInList)
    ));
    // Strings keep trailing NULs and the whole slot may be used.
    sl.set(0, "a\0\0b\0\0\0\0").unwrap();
    assert_eq!(sl.get(0).unwrap(), Item::Str("a\0\0b\0\0\0\0".into()));
    // Slot sizes: 8 * (len / 8 + 1), counted in UTF-8 bytes.
    let sizes = ShareableList::new(["", "1234567", "12345678", "ééé"]).unwrap();
    let got: Vec<usize> = (0..4).map(|i| sizes.slot_size(i).unwrap()).collect();
    assert_eq!(got, [8, 8, 16, 8]);
    // An empty list.
    let empty = ShareableList::new(Vec::<Item>::new()).unwrap();
    assert_eq!(empty.len(), 0);
    assert!(empty.get(0).is_err());
}

fn child_edits(sl: ShareableList) -> Result<Vec<String>, String> {
    let e = |e: mp_core::Error| e.to_string();
    let mut seen = Vec::new();
    for i in -7..0 {
        seen.push(format!("{:?}", sl.get(i).map_err(e)?));
    }
    sl.set(-1, -42).map_err(e)?;
    sl.set(0, "HOWDY").map_err(e)?;
    sl.set(4, 2.5).map_err(e)?;
    sl.set(5, false).map_err(e)?;
    // Too long, in the child too: a typed error it reports back.
    match sl.set(1, "far too long") {
        Err(mp_core::Error::ValueTooLong { .. }) => seen.push("too long".into()),
        other => return Err(format!("expected ValueTooLong, got {other:?}")),
    }
    seen.push(sl.index(&Item::Int(100)).map_err(e)?.to_string());
    Ok(seen)
}

/// Get and set across processes, negative indices, too-long values refused in the child.
#[test]
fn get_and_set_across_processes() {
    for m in METHODS {
        let sl = ShareableList::new(python_example()).unwrap();
        let mut c = Process::new(child_edits, sl.clone())
            .start_method(m)
            .start()
            .unwrap();
        let seen = join(&mut c).unwrap().unwrap();
        let want: Vec<String> = python_example()
            .iter()
            .map(|i| format!("{i:?}"))
            .chain(["too long".to_string(), "3".to_string()])
            .collect();
        assert_eq!(seen, want, "{m}");
        assert_eq!(
            sl.to_vec().unwrap(),
            vec![
                "HOWDY".into(),
                b"HoWdY".as_slice().into(),
                (-273.154).into(),
                100.into(),
                2.5.into(),
                false.into(),
                (-42).into(),
            ],
            "{m}"
        );
    }
}

fn attach_and_write(name: String) -> Result<(i64, String), String> {
    let sl = ShareableList::attach(&name).map_err(|e| e.to_string())?;
    let first = sl.get(0).map_err(|e| e.to_string())?.as_int().unwrap_or(-1);
    sl.set(1, "from child").map_err(|e| e.to_string())?;
    sl.set(0, first * 2).map_err(|e| e.to_string())?;
    Ok((first, sl.format().map_err(|e| e.to_string())?))
}

/// A named list attached by name from a fork and a spawn child; attaching a plain block of
/// bytes as a list, or a missing name, is refused.
#[test]
fn attach_by_name_from_a_child() {
    for m in METHODS {
        let name = unique("attach");
        let sl = ShareableList::create(&name, [Item::from(21), Item::from("0123456789")]).unwrap();
        let mut c = Process::new(attach_and_write, name.clone())
            .start_method(m)
            .start()
            .unwrap();
        let (first, format) = join(&mut c).unwrap().unwrap();
        assert_eq!(first, 21, "{m}");
        assert_eq!(format, "q16s");
        assert_eq!(sl.get(0).unwrap(), Item::Int(42));
        assert_eq!(sl.get(1).unwrap(), Item::Str("from child".into()));
        assert_eq!(sl.name(), Some(name.as_str()));
        // The owner unlinks on drop; then the name is gone.
        drop(sl);
        assert!(matches!(
            ShareableList::attach(&name),
            Err(mp_core::Error::NotFound { .. })
        ));
    }
    let bytes_name = unique("bytes");
    let block = SharedMemory::create(&bytes_name, 4096).unwrap();
    assert!(matches!(
        ShareableList::attach(&bytes_name),
        Err(mp_core::Error::BadHeader { .. })
    ));
    drop(block);
    let sl_name = unique("notbytes");
    let _sl = ShareableList::create(&sl_name, [1]).unwrap();
    assert!(matches!(
        SharedMemory::attach(&sl_name),
        Err(mp_core::Error::BadHeader { .. })
    ));
}

/// Offsets of the descriptor table and data area of a list of `count` items.
fn areas(count: usize) -> (usize, usize) {
    let descs = 64 + 8 * (count + 1);
    (descs, descs + 8 * count)
}

/// A hostile peer: attaches to the list's block as raw memory and writes `bytes` at `offset`.
fn scribble((name, offset, bytes): (String, u64, Vec<u8>)) -> Result<(), String> {
    let sl = ShareableList::attach(&name).map_err(|e| e.to_string())?;
    let region = sl.region();
    let offset = usize::try_from(offset).map_err(|e| e.to_string())?;
    if offset + bytes.len() > region.len() {
        return Err("out of range".into());
    }
    // SAFETY: the range is inside the payload (checked above); the copy is atomic.
    unsafe { mp_core::shared::copy_to_shared(&bytes, region.as_ptr().add(offset)) };
    Ok(())
}

/// A peer that writes garbage into descriptors, data, offsets and the header: every read gives
/// a typed error (never a panic), and the slots it did not touch still read correctly.
#[test]
fn garbage_from_a_peer_gives_typed_errors() {
    for m in METHODS {
        let name = unique("garbage");
        let items = vec![
            Item::from("ok"),
            Item::from("text"),
            Item::from(true),
            Item::from(7),
            Item::from("x"),
        ];
        let sl = ShareableList::create(&name, items.clone()).unwrap();
        let (descs, data) = areas(items.len());
        let desc = |tag: u64, len: u64| (tag | (len << 8)).to_le_bytes().to_vec();
        let attacks: Vec<(u64, Vec<u8>, usize)> = vec![
            // Slot 1: an unknown kind tag.
            ((descs + 8) as u64, desc(99, 0), 1),
            // Slot 4: a string longer than its 8-byte slot.
            ((descs + 32) as u64, desc(4, 9_999), 4),
            // Slot 2: a bool byte that is neither 0 nor 1.
            ((data + 16) as u64, vec![7], 2),
        ];
        for (offset, bytes, _) in &attacks {
            let mut c = Process::new(scribble, (name.clone(), *offset, bytes.clone()))
                .start_method(m)
                .start()
                .unwrap();
            join(&mut c).unwrap().unwrap();
        }
        for (_, _, slot) in &attacks {
            match sl.get(*slot as isize) {
                Err(mp_core::Error::Corrupt { what }) => assert!(what.contains("slot"), "{what}"),
                other => panic!("{m}: slot {slot}: expected Corrupt, got {other:?}"),
            }
        }
        assert!(sl.to_vec().is_err());
        assert_eq!(sl.get(0).unwrap(), Item::Str("ok".into()));
        assert_eq!(sl.get(3).unwrap(), Item::Int(7));
        // Invalid UTF-8 in a string slot, and stray high bits in a descriptor.
        let mut c = Process::new(scribble, (name.clone(), data as u64, vec![0xff, 0xfe]))
            .start_method(m)
            .start()
            .unwrap();
        join(&mut c).unwrap().unwrap();
        assert!(matches!(sl.get(0), Err(mp_core::Error::Corrupt { .. })));
        let mut c = Process::new(
            scribble,
            (
                name.clone(),
                (descs + 24) as u64,
                (1u64 << 50 | 1).to_le_bytes().to_vec(),
            ),
        )
        .start_method(m)
        .start()
        .unwrap();
        join(&mut c).unwrap().unwrap();
        assert!(matches!(sl.get(3), Err(mp_core::Error::Corrupt { .. })));
        // Writing a valid value repairs a slot.
        sl.set(0, "fixed").unwrap();
        assert_eq!(sl.get(0).unwrap(), Item::Str("fixed".into()));
        // Offsets table and list header: a new handle refuses the block (the old one never
        // reads them again and keeps working).
        let mut c = Process::new(
            scribble,
            (name.clone(), 64 + 8, 3u64.to_le_bytes().to_vec()),
        )
        .start_method(m)
        .start()
        .unwrap();
        join(&mut c).unwrap().unwrap();
        assert!(matches!(
            ShareableList::attach(&name),
            Err(mp_core::Error::BadHeader { .. })
        ));
        assert_eq!(sl.get(0).unwrap(), Item::Str("fixed".into()));
        let mut c = Process::new(scribble, (name.clone(), 0, vec![0; 8]))
            .start_method(m)
            .start()
            .unwrap();
        // The scribbler itself cannot attach any more (the offsets check fails): it reports
        // an error instead of writing.
        assert!(join(&mut c).unwrap().is_err());
    }
}

/// Opens a pidfd for `pid` (which must be alive now).
fn pidfd(pid: u32) -> OwnedFd {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(fd >= 0, "pidfd_open({pid}) failed");
    // SAFETY: a new descriptor nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// True when the process of `fd` ends within `timeout`.
fn ends_within(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) == 1 }
}

/// Names in /dev/shm starting with `mp-<prefix>`.
fn leftovers(prefix: &str) -> Vec<String> {
    let full = format!("mp-{prefix}");
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&full))
        .collect()
}

/// Waits (bounded) until no name of `prefix` is left in /dev/shm.
fn gone_within(prefix: &str, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if leftovers(prefix).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    leftovers(prefix).is_empty()
}

fn read_block(name: String) -> Result<Vec<u8>, String> {
    let b = SharedMemory::attach(&name).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 5];
    b.read_at(0, &mut buf).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// shutdown unlinks every block (made by the starter or by a forked child) and ends the
/// cleaner; the handles stay usable; no more blocks afterwards. Drop does the same.
#[test]
fn manager_blocks_gone_after_shutdown_and_drop() {
    for m in METHODS {
        let smm = SharedMemoryManager::start_with(m).unwrap();
        let cleaner = pidfd(smm.cleaner_pid());
        let block = smm.shared_memory(64).unwrap();
        block.write_at(0, b"hello").unwrap();
        let list = smm.shareable_list([1, 2, 3]).unwrap();
        let mut c = Process::new(read_block, block.name().to_string())
            .start_method(m)
            .start()
            .unwrap();
        assert_eq!(join(&mut c).unwrap().unwrap(), b"hello");
        assert_eq!(smm.block_names().unwrap().len(), 2, "{m}");
        // Dropping the handles unlinks nothing: the manager owns the names.
        let list_name = list.name().unwrap().to_string();
        drop(list);
        assert_eq!(
            ShareableList::attach(&list_name).unwrap().get(-1).unwrap(),
            Item::Int(3)
        );
        smm.shutdown().unwrap();
        assert!(leftovers(smm.prefix()).is_empty(), "{m}");
        assert!(
            ends_within(&cleaner, WATCHDOG),
            "{m}: the cleaner still runs"
        );
        assert!(matches!(
            smm.shared_memory(8),
            Err(mp_shared_memory::Error::ShutDown)
        ));
        // A second shutdown does nothing; the mapping stays valid after the unlink.
        smm.shutdown().unwrap();
        let mut buf = [0u8; 5];
        block.read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");

        let smm = SharedMemoryManager::start_with(m).unwrap();
        let cleaner = pidfd(smm.cleaner_pid());
        let prefix = smm.prefix().to_string();
        let _a = smm.shared_memory(1).unwrap();
        let _b = smm.shareable_list(["x"]).unwrap();
        assert_eq!(leftovers(&prefix).len(), 2);
        drop(smm);
        assert!(leftovers(&prefix).is_empty(), "{m}: drop leaves blocks");
        assert!(
            ends_within(&cleaner, WATCHDOG),
            "{m}: the cleaner still runs"
        );
    }
}

/// The victim: starts a manager, makes blocks, reports the cleaner's pid, and sleeps until it
/// is killed (bounded).
fn victim((code, out, own_group): (u8, Shared<AtomicU64>, bool)) -> Result<(), String> {
    if own_group {
        // SAFETY: setpgid(0, 0) makes this process the leader of a new group.
        if unsafe { libc::setpgid(0, 0) } != 0 {
            return Err("setpgid failed".into());
        }
    }
    let smm = SharedMemoryManager::start_with(method_of(code)).map_err(|e| e.to_string())?;
    let _a = smm.shared_memory(4096).map_err(|e| e.to_string())?;
    let _b = smm
        .shareable_list([Item::from(1), "two".into()])
        .map_err(|e| e.to_string())?;
    let _c = smm.shared_memory(1).map_err(|e| e.to_string())?;
    out.store(u64::from(smm.cleaner_pid()), Ordering::SeqCst);
    std::thread::sleep(WATCHDOG);
    // Not reached in the test: the victim is killed first. Leak nothing if it is.
    std::mem::forget(smm);
    Ok(())
}

/// SIGKILL of the process that started the manager: the cleaner unlinks every block within
/// a bound, then exits (no orphan left).
#[test]
fn manager_blocks_gone_after_starter_is_sigkilled() {
    let mut cases = Vec::new();
    for victim_method in METHODS {
        for cleaner_method in [
            StartMethod::Fork,
            StartMethod::Spawn,
            StartMethod::ForkServer,
        ] {
            cases.push((victim_method, cleaner_method, false));
        }
    }
    // SIGKILL of the victim's whole process group: the cleaner is in a session of its own.
    cases.push((StartMethod::Fork, StartMethod::Fork, true));
    cases.push((StartMethod::Fork, StartMethod::Spawn, true));
    for (victim_method, cleaner_method, group) in cases {
        {
            let out = Shared::new(AtomicU64::new(0)).unwrap();
            let mut v = Process::new(victim, (method_code(cleaner_method), out.clone(), group))
                .start_method(victim_method)
                .start()
                .unwrap();
            let t0 = Instant::now();
            while out.load(Ordering::SeqCst) == 0 {
                assert!(v.is_alive(), "the victim ended early: {:?}", v.join());
                assert!(t0.elapsed() < WATCHDOG, "the victim never reported");
                std::thread::sleep(Duration::from_millis(10));
            }
            let cleaner_pid = out.load(Ordering::SeqCst) as u32;
            let cleaner = pidfd(cleaner_pid);
            let prefix = format!("smm-{}-", v.pid());
            assert_eq!(
                leftovers(&prefix).len(),
                3,
                "{victim_method}/{cleaner_method}"
            );
            if group {
                // SAFETY: kill of the victim's own group (it made it, and it is our child).
                assert_eq!(unsafe { libc::kill(-(v.pid() as i32), libc::SIGKILL) }, 0);
            } else {
                v.kill().unwrap();
            }
            match v.join_timeout(WATCHDOG) {
                Err(ProcessError::Signaled { signal, .. }) => assert_eq!(signal, libc::SIGKILL),
                other => panic!("{other:?}"),
            }
            assert!(
                gone_within(&prefix, WATCHDOG),
                "{victim_method}/{cleaner_method}: blocks left: {:?}",
                leftovers(&prefix)
            );
            assert!(
                ends_within(&cleaner, WATCHDOG),
                "{victim_method}/{cleaner_method}: the cleaner {cleaner_pid} lingers"
            );
        }
    }
}

const INCREMENTS: i64 = 500;

fn add_under_lock((sl, lock): (ShareableList, mp_sync::Lock)) -> Result<(), String> {
    for _ in 0..INCREMENTS {
        let _g = lock.lock().map_err(|e| format!("{e:?}"))?;
        let n = sl
            .get(0)
            .map_err(|e| e.to_string())?
            .as_int()
            .unwrap_or(-1_000_000);
        sl.set(0, n + 1).map_err(|e| e.to_string())?;
        // A string slot rewritten in the same critical section always reads back whole.
        let s = if n % 2 == 0 { "even-even-even" } else { "odd" };
        sl.set(1, s).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Two children (fork and spawn) and the parent write one list at once under a Lock: no
/// update is lost, and every read under the lock is a valid value.
#[test]
fn written_by_several_processes_under_a_lock() {
    let sl = ShareableList::new([Item::from(0), Item::from("0123456789abcdef")]).unwrap();
    let lock = mp_sync::Lock::new().unwrap();
    let mut children: Vec<_> = METHODS
        .iter()
        .map(|m| {
            Process::new(add_under_lock, (sl.clone(), lock.clone()))
                .start_method(*m)
                .start()
                .unwrap()
        })
        .collect();
    add_under_lock((sl.clone(), lock.clone())).unwrap();
    for c in &mut children {
        join(c).unwrap().unwrap();
    }
    assert_eq!(sl.get(0).unwrap(), Item::Int(3 * INCREMENTS));
    assert!(matches!(
        sl.get(1).unwrap().as_str(),
        Some("odd" | "even-even-even")
    ));
}

/// A forked cleaner keeps none of the starter's descriptors: the read end of a pipe whose
/// write end the starter closes sees end-of-file although the cleaner was forked while the
/// write end was open.
#[test]
fn the_cleaner_holds_no_inherited_descriptor() {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let smm = SharedMemoryManager::start_with(StartMethod::Fork).unwrap();
    drop(w);
    let mut p = libc::pollfd {
        fd: r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // Other tests' forked children may hold the write end for a moment; the cleaner would
    // hold it until the end of the test.
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, WATCHDOG.as_millis() as i32) };
    assert_eq!(n, 1, "the write end is still open somewhere");
    assert!(p.revents & libc::POLLHUP != 0);
    smm.shutdown().unwrap();
}

/// A forked child holding a copy of the manager: its blocks are the manager's (swept at the
/// starter's shutdown), it may not shut the manager down, and dropping its copy unlinks
/// nothing and leaves the cleaner running.
#[test]
fn a_forked_copy_of_the_manager() {
    let smm = std::sync::Arc::new(SharedMemoryManager::start_with(StartMethod::Fork).unwrap());
    let cleaner = pidfd(smm.cleaner_pid());
    let copy = smm.clone();
    let mut c = Process::fork(move || -> Result<String, String> {
        let block = copy.shared_memory(16).map_err(|e| e.to_string())?;
        let refused = matches!(
            copy.shutdown(),
            Err(mp_shared_memory::Error::NotStarter { .. })
        );
        let name = block.name().to_string();
        drop(block);
        drop(copy);
        if refused {
            Ok(name)
        } else {
            Err("a forked copy could shut the manager down".into())
        }
    })
    .unwrap();
    let name = join(&mut c).unwrap().unwrap();
    assert!(name.starts_with(smm.prefix()));
    assert_eq!(SharedMemory::attach(&name).unwrap().size(), 16);
    assert!(!ends_within(&cleaner, Duration::ZERO), "the cleaner ended");
    smm.shutdown().unwrap();
    assert!(matches!(
        SharedMemory::attach(&name),
        Err(mp_core::Error::NotFound { .. })
    ));
    assert!(ends_within(&cleaner, WATCHDOG));
}

/// A hostile peer rewrites the descriptors and data of a list with random bytes in a loop
/// while this process reads it: every read is a value or `Corrupt`, never a panic or another
/// error.
fn hammer((sl, rounds, seed): (ShareableList, u32, u64)) {
    let region = sl.region();
    let start = 64 + 8 * (sl.len() + 1);
    let len = region.len() - start;
    let mut x = seed | 1;
    let mut buf = vec![0u8; len];
    for _ in 0..rounds {
        for b in buf.iter_mut() {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        // Keep some descriptors plausible, so that reads get past the tag check.
        for i in 0..sl.len() {
            if x % 3 == 0 {
                let tag = [1u8, 2, 3, 4, 5, 6][(x as usize >> 8) % 6];
                buf[8 * i] = tag;
                buf[8 * i + 1] = (x >> 16) as u8 % 24;
                buf[8 * i + 2..8 * i + 8].fill(0);
            }
            x = x.rotate_left(7);
        }
        // SAFETY: `start + len` is the end of the payload; the copy is atomic.
        unsafe { mp_core::shared::copy_to_shared(&buf, region.as_ptr().add(start)) };
    }
}

#[test]
fn reads_racing_a_hostile_writer_never_panic() {
    for m in METHODS {
        let sl = ShareableList::new([
            Item::from("0123456789abcdef"),
            1.into(),
            true.into(),
            b"bytes".as_slice().into(),
            Item::None,
        ])
        .unwrap();
        let mut c = Process::new(hammer, (sl.clone(), 20_000, 0x9e37_79b9_7f4a_7c15))
            .start_method(m)
            .start()
            .unwrap();
        let mut values = 0u64;
        let mut refused = 0u64;
        let t0 = Instant::now();
        while c.is_alive() && t0.elapsed() < WATCHDOG {
            for i in 0..sl.len() as isize {
                match sl.get(i) {
                    Ok(_) => values += 1,
                    Err(mp_core::Error::Corrupt { .. }) => refused += 1,
                    Err(e) => panic!("{m}: slot {i}: {e:?}"),
                }
            }
        }
        join(&mut c).unwrap();
        assert!(values + refused > 0);
        // The writer is gone: a valid value written now reads back.
        sl.set(0, "repaired").unwrap();
        assert_eq!(sl.get(0).unwrap(), Item::Str("repaired".into()));
    }
}
