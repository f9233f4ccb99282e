//! Who this process is, in Python's terms (name, `_identity`, daemon flag, parent): read by
//! [`current_process`](crate::current_process), set once by the child's bootstrap.

use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

/// Who this process is, in Python's terms.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) name: String,
    /// "" for the root, "1", "1:3", ... for children (Python's `_identity`).
    pub(crate) ident: String,
    pub(crate) daemon: bool,
    pub(crate) parent: Option<(u32, String)>,
}

/// This process's identity: null for the root process (`MainProcess`), set once by the child
/// bootstrap and never freed (so readers may keep the reference).
static CURRENT: AtomicPtr<Identity> = AtomicPtr::new(std::ptr::null_mut());

/// Sets this process's identity (once, in a new child).
pub(crate) fn set_identity(id: Box<Identity>) {
    // Pairs with the Acquire load in `identity`.
    CURRENT.store(Box::into_raw(id), Ordering::Release);
}

/// This process's identity; `None` in the root process.
pub(crate) fn identity() -> Option<&'static Identity> {
    // Pairs with the Release store in `set_identity`.
    let p = CURRENT.load(Ordering::Acquire);
    // SAFETY: a non-null pointer came from `Box::into_raw` in `set_identity` and is never
    // freed, so it is valid for 'static.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Counter for default child names ("Process-N"), reset in a forked child.
static CHILD_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The `_identity` of the next child this process starts ("3", or "1:3" in child 1).
pub(crate) fn next_ident() -> String {
    let n = CHILD_COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    match identity() {
        Some(me) if !me.ident.is_empty() => format!("{}:{n}", me.ident),
        _ => n.to_string(),
    }
}

/// In a forked child: its own identity, and a fresh count of its own children.
pub(crate) fn reset_after_fork(id: Box<Identity>) {
    set_identity(id);
    CHILD_COUNTER.store(0, Ordering::Relaxed);
}
