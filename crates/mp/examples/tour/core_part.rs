//! mp-core: shared memory written by a child process and read by the parent.

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};

use mp::SharedMemory;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};

pub(crate) fn run() -> Result<(), Box<dyn Error>> {
    println!("== shared memory (mp-core)");
    let counter = mp::Shared::new(AtomicU64::new(0))?;
    let name = format!("tour-{}", std::process::id());
    let block = SharedMemory::create(&name, 4096)?;
    println!(
        "parent {}: created an anonymous region and /dev/shm/mp-{name}",
        std::process::id()
    );

    // SAFETY: the tour is single-threaded at this point, so the child may do anything; it
    // touches the shared memory and leaves with _exit.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let code = match SharedMemory::attach(&name) {
                Ok(shm) => {
                    let msg = format!("hello from child {}", std::process::id());
                    let ok = shm.write_at(0, msg.as_bytes()).is_ok();
                    counter.fetch_add(msg.len() as u64, Ordering::SeqCst);
                    if ok {
                        0
                    } else {
                        1
                    }
                }
                Err(_) => 1,
            };
            // SAFETY: leaves the child at once, without running the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            let status = waitpid(child, None)?;
            if status != WaitStatus::Exited(child, 0) {
                return Err(format!("the child failed: {status:?}").into());
            }
        }
    }
    let len = counter.load(Ordering::SeqCst) as usize;
    let mut buf = vec![0u8; len];
    block.read_at(0, &mut buf)?;
    println!(
        "parent read {len} bytes the child wrote by name: {:?}",
        String::from_utf8_lossy(&buf)
    );
    block.unlink()?;
    println!("unlinked /dev/shm/mp-{name}");
    Ok(())
}
