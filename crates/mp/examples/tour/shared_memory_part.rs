//! mp-shared-memory: a ShareableList edited by a child, and a SharedMemoryManager.

use std::error::Error;

use mp::shared_memory::Item;
use mp::{Process, ShareableList, SharedMemoryManager, StartMethod};

/// Runs in a spawned child: attaches to the list by name and edits it.
fn edit(name: String) -> String {
    let list = ShareableList::attach(&name).expect("attach");
    let n = list.get(0).expect("get").as_int().unwrap_or(0);
    list.set(0, n * 2).expect("set");
    list.set(-1, "child").expect("set");
    format!("{:?}", list.set(-1, "longer than eight"))
}

pub(crate) fn run() -> Result<(), Box<dyn Error>> {
    println!("== ShareableList and SharedMemoryManager (mp-shared-memory)");
    let smm = SharedMemoryManager::start()?;
    let list = smm.shareable_list([Item::from(21), 2.5.into(), Item::None, "parent".into()])?;
    let name = list.name().unwrap_or_default().to_string();
    println!(
        "a manager (cleaner pid {}) made {name}: {:?}, format {:?}",
        smm.cleaner_pid(),
        list.to_vec()?,
        list.format()?
    );
    let mut child = Process::new(edit, name.clone())
        .start_method(StartMethod::Spawn)
        .start()?;
    let refused = child.join()?;
    println!(
        "a spawned child doubled item 0 and set item -1: {:?}",
        list.to_vec()?
    );
    println!("its too-long value was refused: {refused}");
    smm.shutdown()?;
    println!(
        "shutdown unlinked the manager's blocks: attach is now {}\n",
        match ShareableList::attach(&name) {
            Ok(_) => "possible (unexpected)".to_string(),
            Err(e) => format!("an error ({e})"),
        }
    );
    Ok(())
}
