//! What a server holds: the objects by id, the names, the registered types and who holds
//! what ([`Refs`]). An object lives while a connection or a ticket holds it, or while it has a
//! name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mp_core::util::panic_message;

use super::call::lock;
use super::objects::{Obj, Owned};
use super::refs::Refs;
use super::Types;
use crate::wire::{Bytes, Kind, Refused, Reply};

#[derive(Default)]
pub(super) struct State {
    objects: Mutex<HashMap<u64, Arc<Obj>>>,
    names: Mutex<HashMap<String, u64>>,
    refs: Mutex<Refs>,
    next_id: AtomicU64,
    pub(super) next_conn: AtomicU64,
    pub(super) types: Types,
}

impl State {
    /// A server with no object yet, serving `types`.
    pub(super) fn new(types: Types) -> State {
        State {
            types,
            ..State::default()
        }
    }

    /// A new object of a built-in kind held by `conn` (with a name: the object of that name,
    /// made on first use).
    pub(super) fn create(
        &self,
        conn: u64,
        kind: Kind,
        name: Option<String>,
        init: Bytes,
    ) -> Result<Reply, Refused> {
        let Some(name) = name else {
            let id = self.insert(Obj::new(kind, init)?);
            lock(&self.refs).hold(conn, id);
            return Ok(Reply::Created(id));
        };
        let mut names = lock(&self.names);
        if let Some(&id) = names.get(&name) {
            let found = self.get(id)?.kind();
            if found != kind {
                return Err(Refused::WrongKind {
                    expected: kind,
                    found,
                });
            }
            lock(&self.refs).hold(conn, id);
            return Ok(Reply::Created(id));
        }
        let id = self.insert(Obj::new(kind, init)?);
        names.insert(name, id);
        let mut refs = lock(&self.refs);
        refs.name(id);
        refs.hold(conn, id);
        Ok(Reply::Created(id))
    }

    /// A new object of the type registered as `typeid`, made by its constructor; a
    /// constructor that panics is [`Refused::Raised`] (and nothing is made).
    pub(super) fn create_custom(
        &self,
        conn: u64,
        typeid: String,
        type_name: String,
        name: Option<String>,
    ) -> Result<Reply, Refused> {
        let Some((registered, ctor)) = self.types.get(&typeid) else {
            return Err(Refused::UnknownType(typeid));
        };
        if *registered != type_name {
            return Err(Refused::WrongType {
                expected: type_name,
                found: registered.clone(),
            });
        }
        let make = || -> Result<Obj, Refused> {
            let obj = std::panic::catch_unwind(|| ctor.make())
                .map_err(|p| Refused::Raised(panic_message(&*p)))?;
            Ok(Obj::Custom {
                typeid: typeid.clone(),
                type_name: type_name.clone(),
                obj: Mutex::new(obj),
            })
        };
        let Some(name) = name else {
            let id = self.insert(make()?);
            lock(&self.refs).hold(conn, id);
            return Ok(Reply::Created(id));
        };
        let mut names = lock(&self.names);
        if let Some(&id) = names.get(&name) {
            match &*self.get(id)? {
                Obj::Custom { typeid: t, .. } if *t == typeid => {}
                Obj::Custom {
                    type_name: found, ..
                } => {
                    return Err(Refused::WrongType {
                        expected: type_name,
                        found: found.clone(),
                    })
                }
                other => {
                    return Err(Refused::WrongKind {
                        expected: Kind::Custom,
                        found: other.kind(),
                    })
                }
            }
            lock(&self.refs).hold(conn, id);
            return Ok(Reply::Created(id));
        }
        let id = self.insert(make()?);
        names.insert(name, id);
        let mut refs = lock(&self.refs);
        refs.name(id);
        refs.hold(conn, id);
        Ok(Reply::Created(id))
    }

    fn insert(&self, obj: Obj) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&self.objects).insert(id, Arc::new(obj));
        id
    }

    /// The object `id`, or [`Refused::NoSuchObject`] (never made, or freed).
    pub(super) fn get(&self, id: u64) -> Result<Arc<Obj>, Refused> {
        lock(&self.objects)
            .get(&id)
            .cloned()
            .ok_or(Refused::NoSuchObject(id))
    }

    /// Frees the objects `ids` (nothing holds them). A request already running on one keeps
    /// its `Arc` until it answers; later ones get [`Refused::NoSuchObject`].
    fn free(&self, ids: Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        let gone: Vec<Arc<Obj>> = {
            let mut objects = lock(&self.objects);
            ids.iter().filter_map(|id| objects.remove(id)).collect()
        };
        // Dropped outside the lock (a custom object's own `Drop` may take its time), and a
        // `Drop` that panics must not take the server's thread with it.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(gone)));
    }

    /// `conn` lets go of `id`.
    pub(super) fn release(&self, conn: u64, id: u64) {
        let free = lock(&self.refs).release(conn, id);
        self.free(free.into_iter().collect());
    }

    /// A ticket issued by `conn` for the objects `ids`, each of which `conn` must hold (a
    /// process hands on only what it holds).
    pub(super) fn ticket(&self, conn: u64, ids: Vec<u64>) -> Result<Reply, Refused> {
        let mut refs = lock(&self.refs);
        if let Some(&id) = ids.iter().find(|&&id| !refs.holds(conn, id)) {
            return Err(Refused::NoSuchObject(id));
        }
        Ok(Reply::Ticket(refs.issue(conn, ids)))
    }

    /// `conn` takes over ticket `t` (if it is still there) and holds each of `ids` that is
    /// still alive; replies with the ids it holds.
    pub(super) fn redeem(&self, conn: u64, t: u64, ids: Vec<u64>) -> Reply {
        let mut refs = lock(&self.refs);
        let free = refs.redeem(conn, t);
        let mut held = Vec::with_capacity(ids.len());
        for id in ids {
            // Checked under the table's lock: nothing is freed meanwhile.
            if refs.holds(conn, id) || lock(&self.objects).contains_key(&id) {
                refs.hold(conn, id);
                held.push(id);
            }
        }
        drop(refs);
        self.free(free);
        Reply::Ids(held)
    }

    /// How many objects the server holds.
    pub(super) fn count(&self) -> u64 {
        lock(&self.objects).len() as u64
    }

    /// Forgets the name `name`; true when there was one.
    pub(super) fn unname(&self, name: &str) -> bool {
        let mut names = lock(&self.names);
        let Some(id) = names.remove(name) else {
            return false;
        };
        let free = lock(&self.refs).unname(id);
        drop(names);
        self.free(free.into_iter().collect());
        true
    }

    /// Everything `conn` held goes: its locks are released, its references and its tickets
    /// dropped (its client went away).
    pub(super) fn drop_conn(&self, conn: u64) {
        self.release_all(conn);
        let free = lock(&self.refs).drop_conn(conn);
        self.free(free);
    }

    /// Releases the locks `conn` holds.
    fn release_all(&self, conn: u64) {
        let objects: Vec<Arc<Obj>> = lock(&self.objects).values().cloned().collect();
        for o in objects {
            match &*o {
                Obj::Lock { holder, released } => {
                    let mut h = lock(holder);
                    if *h == Some(conn) {
                        *h = None;
                        released.notify_one();
                    }
                }
                Obj::RLock { state, released } => {
                    let mut st = lock(state);
                    if st.owner == Some(conn) {
                        *st = Owned::default();
                        released.notify_one();
                    }
                }
                Obj::Condition { state, changed } => {
                    let mut st = lock(state);
                    if st.lock.owner == Some(conn) {
                        st.lock = Owned::default();
                        changed.notify_all();
                    }
                }
                _ => {}
            }
        }
    }
}
