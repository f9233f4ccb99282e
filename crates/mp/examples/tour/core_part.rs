//! mp-core: shared memory written by a child process and read by the parent.

use std::error::Error;

use mp::{Process, SharedMemory, StartMethod};

/// Runs in a spawned child (a fresh copy of this program): attaches by name and writes.
fn write_greeting(name: String) -> usize {
    let shm = SharedMemory::attach(&name).expect("attach");
    let msg = format!("hello from child {}", std::process::id());
    shm.write_at(0, msg.as_bytes()).expect("write");
    msg.len()
}

pub(crate) fn run() -> Result<(), Box<dyn Error>> {
    println!("== shared memory (mp-core)");
    let name = format!("tour-{}", std::process::id());
    let block = SharedMemory::create(&name, 4096)?;
    println!(
        "parent {} created /dev/shm/mp-{name} (4096 bytes, mode 0600)",
        std::process::id()
    );
    let mut child = Process::new(write_greeting, name.clone())
        .start_method(StartMethod::Spawn)
        .start()?;
    let len = child.join()?;
    let mut buf = vec![0u8; len];
    block.read_at(0, &mut buf)?;
    println!(
        "a spawned child attached by name and wrote {len} bytes: {:?}",
        String::from_utf8_lossy(&buf)
    );
    block.unlink()?;
    println!("unlinked /dev/shm/mp-{name}\n");
    Ok(())
}
