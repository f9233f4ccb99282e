//! Python's `multiprocessing.shared_memory`, in Rust: [`SharedMemory`] (named blocks of
//! bytes), [`ShareableList`] (a fixed-length list of scalars and short strings in shared
//! memory) and [`SharedMemoryManager`] (blocks that never outlive the program).
//!
//! `SharedMemory` and `ShareableList` live in mp-core (named regions are mp-core's); this
//! crate re-exports them beside the manager, which needs a process of its own.
//!
//! # A ShareableList shared with a child
//!
//! ```
//! use mp_shared_memory::{Item, ShareableList};
//! use mp_process::Process;
//!
//! fn bump(list: ShareableList) -> Result<(), String> {
//!     let n = list.get(0).map_err(|e| e.to_string())?.as_int().unwrap_or(0);
//!     list.set(0, n + 1).map_err(|e| e.to_string())?;
//!     list.set(-1, "done").map_err(|e| e.to_string())
//! }
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     mp_process::init();
//!     let list = ShareableList::new([Item::from(41), Item::None, Item::from("pending")])?;
//!     Process::new(bump, list.clone()).start()?.join()??;
//!     assert_eq!(list.get(0)?, Item::Int(42));
//!     assert_eq!(list.get(-1)?.as_str(), Some("done"));
//!     assert!(list.set(-1, "far too long for its slot").is_err()); // as in Python
//!     Ok(())
//! }
//! ```
//!
//! # A manager
//!
//! Blocks made by a [`SharedMemoryManager`] are unlinked at [`shutdown`](SharedMemoryManager::shutdown),
//! when the manager is dropped, and when the process that started it dies, even by SIGKILL
//! (Python's manager leaks them then, with a resource-tracker warning).
//!
//! ```
//! use mp_shared_memory::{SharedMemory, SharedMemoryManager, ShareableList};
//!
//! let smm = SharedMemoryManager::start()?;
//! let block = smm.shared_memory(128)?;
//! block.write_at(0, b"hi")?;
//! let list = smm.shareable_list([1, 2, 3])?;
//! let name = list.name().expect("named").to_string();
//! // Any process of the same user attaches by name.
//! assert_eq!(ShareableList::attach(&name)?.get(-1)?.as_int(), Some(3));
//! assert_eq!(SharedMemory::attach(block.name())?.size(), 128);
//! smm.shutdown()?;
//! assert!(ShareableList::attach(&name).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How the manager cleans up
//!
//! Every block the manager makes is named `smm-<starter pid>-<64 random bits>-<creator
//! pid>-<n>`, so the set of its blocks is exactly the names in `/dev/shm` that start with
//! `mp-smm-<starter pid>-<random>-` (its *prefix*): nothing has to be told to the cleaner when a
//! block is made, and a block made an instant before a crash is cleaned like any other.
//!
//! [`start`](SharedMemoryManager::start) starts one small non-daemon child, the *cleaner*.
//! The cleaner moves to a session of its own and ignores SIGINT and SIGHUP (a Ctrl-C at the
//! terminal, or a `kill` of the starter's process group, must not take it down before it
//! cleans up), opens a pidfd of the starting process
//! (checking, with the starter's pid-and-start-time token, that the pid still names it) and
//! says it is ready: `start` returns only then, so no block exists before the cleaner watches.
//! It then lets go of every descriptor it inherited (stdio goes to /dev/null: a forked cleaner
//! must not keep the starter's pipes and sockets open) and sleeps in `poll` until the pidfd
//! says the starter ended, however it ended, SIGKILL included. Then it unlinks every name of
//! the prefix and exits at once: it is reparented to init (or the nearest subreaper) and
//! reaped there, never left running.
//!
//! [`shutdown`](SharedMemoryManager::shutdown) (also run on drop, in the starting process
//! only) unlinks the names itself, then stops the cleaner with SIGTERM and reaps it.
//!
//! Limits: a cleaner that is itself SIGKILLed (by hand, or by the OOM killer) cleans nothing;
//! the starter's own shutdown still does. Blocks are found by name in `/dev/shm`, so a block
//! renamed there by hand is not found.
//!
//! # Python names
//!
//! | Python | mp |
//! |---|---|
//! | `SharedMemory(name, create=True, size=n)`, `SharedMemory(name)` | [`SharedMemory::create`], [`SharedMemory::attach`] |
//! | `ShareableList(seq)`, `ShareableList(seq, name=n)`, `ShareableList(name=n)` | [`ShareableList::new`], [`ShareableList::create`], [`ShareableList::attach`] |
//! | `sl[i]`, `sl[i] = v`, `len(sl)`, `sl.count(v)`, `sl.index(v)`, `sl.format`, `sl.shm` | [`get`](ShareableList::get), [`set`](ShareableList::set), [`len`](ShareableList::len), [`count`](ShareableList::count), [`index`](ShareableList::index), [`format`](ShareableList::format), [`shm`](ShareableList::shm) |
//! | `SharedMemoryManager()`, `.start()`, `.shutdown()`, `.SharedMemory(n)`, `.ShareableList(seq)` | [`SharedMemoryManager::start`], [`shutdown`](SharedMemoryManager::shutdown), [`shared_memory`](SharedMemoryManager::shared_memory), [`shareable_list`](SharedMemoryManager::shareable_list) |

mod error;
mod manager;

pub use error::{Error, Result};
pub use manager::SharedMemoryManager;
pub use mp_core::shareable::{self, Item, ShareableList, KIND_SHAREABLE_LIST};
pub use mp_core::SharedMemory;
