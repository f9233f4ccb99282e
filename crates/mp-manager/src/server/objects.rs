//! The objects a manager serves: one variant of [`Obj`] per kind, each a mutex (plus a
//! condition variable where something waits) around archived bytes or a small state.

use std::collections::{HashSet, VecDeque};
use std::sync::{Condvar, Mutex};

use indexmap::IndexMap;
use mp_core::message::decode;

use crate::custom::Erased;
use crate::wire::{Bytes, Kind, Refused, Reply};

/// One object held by the server; [`call`](super::call::call) answers the requests on it.
pub(super) enum Obj {
    Dict(Mutex<IndexMap<Bytes, Bytes>>),
    List(Mutex<Vec<Bytes>>),
    /// A list of fixed length.
    Array(Mutex<Vec<Bytes>>),
    Namespace(Mutex<IndexMap<String, Bytes>>),
    Value(Mutex<Bytes>),
    Queue {
        items: Mutex<VecDeque<Bytes>>,
        changed: Condvar,
        maxsize: usize,
    },
    Lock {
        /// The connection holding the lock.
        holder: Mutex<Option<u64>>,
        released: Condvar,
    },
    Event {
        set: Mutex<bool>,
        changed: Condvar,
    },
    RLock {
        state: Mutex<Owned>,
        released: Condvar,
    },
    Semaphore {
        value: Mutex<u64>,
        changed: Condvar,
        /// A `BoundedSemaphore`'s initial value.
        bound: Option<u64>,
    },
    Condition {
        state: Mutex<CondState>,
        changed: Condvar,
    },
    Barrier {
        state: Mutex<BarrierState>,
        changed: Condvar,
    },
    Custom {
        typeid: String,
        type_name: String,
        obj: Mutex<Box<dyn Erased>>,
    },
}

/// A re-entrant lock's state: the connection holding it, and how many times.
#[derive(Default)]
pub(super) struct Owned {
    pub(super) owner: Option<u64>,
    pub(super) count: u32,
}

impl Owned {
    pub(super) fn free_for(&self, conn: u64) -> bool {
        self.owner.is_none() || self.owner == Some(conn)
    }

    /// One more acquisition by `conn` (which `free_for` allowed); refused past `u32::MAX`
    /// re-entries rather than wrapping.
    pub(super) fn take(&mut self, conn: u64) -> Result<(), Refused> {
        self.count = self
            .count
            .checked_add(1)
            .ok_or(Refused::Overflow("a re-entrant lock's count".into()))?;
        self.owner = Some(conn);
        Ok(())
    }

    /// One release by `conn`; true when the lock became free.
    pub(super) fn release(&mut self, conn: u64) -> Result<bool, Refused> {
        if self.owner != Some(conn) {
            return Err(Refused::NotOwner);
        }
        self.count = self.count.saturating_sub(1);
        if self.count == 0 {
            self.owner = None;
        }
        Ok(self.owner.is_none())
    }
}

#[derive(Default)]
pub(super) struct CondState {
    /// The condition's own re-entrant lock.
    pub(super) lock: Owned,
    /// The ticket the next waiter draws.
    pub(super) next_ticket: u64,
    /// Waiters in arrival order, by ticket.
    pub(super) waiting: VecDeque<u64>,
    /// Waiters a notify has picked, not yet woken.
    pub(super) notified: HashSet<u64>,
}

impl AsRef<Owned> for Owned {
    fn as_ref(&self) -> &Owned {
        self
    }
}

impl AsMut<Owned> for Owned {
    fn as_mut(&mut self) -> &mut Owned {
        self
    }
}

/// A condition's lock is a re-entrant lock like an `RLock`'s.
impl AsRef<Owned> for CondState {
    fn as_ref(&self) -> &Owned {
        &self.lock
    }
}

impl AsMut<Owned> for CondState {
    fn as_mut(&mut self) -> &mut Owned {
        &mut self.lock
    }
}

pub(super) struct BarrierState {
    pub(super) parties: u64,
    pub(super) count: u64,
    pub(super) generation: u64,
    pub(super) broken: bool,
    /// Generations ended by `reset` while parties waited: those parties get BrokenBarrier.
    pub(super) reset_generations: HashSet<u64>,
}

fn init_u64(init: &[u8], default: u64) -> u64 {
    init.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(default)
}

impl Obj {
    /// A new object of a built-in kind (custom objects are made by `State::create_custom`).
    pub(super) fn new(kind: Kind, init: Bytes) -> Result<Obj, Refused> {
        Ok(match kind {
            Kind::Dict => Obj::Dict(Mutex::default()),
            Kind::List => Obj::List(Mutex::default()),
            Kind::Array => {
                Obj::Array(Mutex::new(decode::<Vec<Bytes>>(&init).map_err(|e| {
                    Refused::Malformed(format!("an array's items: {e}"))
                })?))
            }
            Kind::Namespace => Obj::Namespace(Mutex::default()),
            Kind::Value => Obj::Value(Mutex::new(init)),
            Kind::Queue => Obj::Queue {
                items: Mutex::default(),
                changed: Condvar::new(),
                maxsize: usize::try_from(init_u64(&init, 0)).unwrap_or(usize::MAX),
            },
            Kind::Lock => Obj::Lock {
                holder: Mutex::new(None),
                released: Condvar::new(),
            },
            Kind::Event => Obj::Event {
                set: Mutex::new(false),
                changed: Condvar::new(),
            },
            Kind::RLock => Obj::RLock {
                state: Mutex::default(),
                released: Condvar::new(),
            },
            Kind::Semaphore | Kind::BoundedSemaphore => {
                let value = init_u64(&init, 1);
                Obj::Semaphore {
                    value: Mutex::new(value),
                    changed: Condvar::new(),
                    bound: (kind == Kind::BoundedSemaphore).then_some(value),
                }
            }
            Kind::Condition => Obj::Condition {
                state: Mutex::default(),
                changed: Condvar::new(),
            },
            Kind::Custom => {
                return Err(Refused::Malformed(
                    "a custom object is made with its registered type".into(),
                ))
            }
            Kind::Barrier => Obj::Barrier {
                state: Mutex::new(BarrierState {
                    parties: init_u64(&init, 1).max(1),
                    count: 0,
                    generation: 0,
                    broken: false,
                    reset_generations: HashSet::new(),
                }),
                changed: Condvar::new(),
            },
        })
    }

    /// Puts an item taken by a queue `get` whose reply could not be sent back at the head
    /// of the queue, instead of losing it (nothing for any other reply or object).
    pub(super) fn give_back(&self, reply: Reply) {
        if let (Obj::Queue { items, changed, .. }, Reply::Bytes(item)) = (self, reply) {
            super::call::lock(items).push_front(item);
            changed.notify_all();
        }
    }

    pub(super) fn kind(&self) -> Kind {
        match self {
            Obj::Dict(_) => Kind::Dict,
            Obj::List(_) => Kind::List,
            Obj::Array(_) => Kind::Array,
            Obj::Namespace(_) => Kind::Namespace,
            Obj::Value(_) => Kind::Value,
            Obj::Queue { .. } => Kind::Queue,
            Obj::Lock { .. } => Kind::Lock,
            Obj::Event { .. } => Kind::Event,
            Obj::RLock { .. } => Kind::RLock,
            Obj::Semaphore { bound: None, .. } => Kind::Semaphore,
            Obj::Semaphore { bound: Some(_), .. } => Kind::BoundedSemaphore,
            Obj::Condition { .. } => Kind::Condition,
            Obj::Barrier { .. } => Kind::Barrier,
            Obj::Custom { .. } => Kind::Custom,
        }
    }
}
