//! Who holds which object: Python's `id_to_refcount`, per connection.
//!
//! Every connection holds a *set* of object ids (a client process keeps one connection, its
//! session, for these: `crate::refs`), and every ticket (a reference in flight to another
//! process: a proxy serialized and not yet decoded, or the proxies a forked child copied) holds
//! its ids too. An object's count is the number of connections and tickets that hold it; at
//! zero it is freed, unless it has a name. When a connection closes (its process exited or was
//! killed) its holds and the tickets it issued go with it.
//!
//! Lock order: the server's `names` before this table, this table before `objects`; nothing
//! takes this table while it holds `objects`.

use std::collections::{HashMap, HashSet};

/// A reference in flight: the connection that issued it and the ids it holds.
struct Ticket {
    owner: u64,
    ids: Vec<u64>,
}

/// The reference table of a server.
#[derive(Default)]
pub(super) struct Refs {
    /// Holds per object (connections plus tickets); an object with none is not in the map.
    count: HashMap<u64, u64>,
    /// The ids each connection holds.
    by_conn: HashMap<u64, HashSet<u64>>,
    tickets: HashMap<u64, Ticket>,
    next_ticket: u64,
    /// Objects that have a name: never freed at a count of zero.
    named: HashSet<u64>,
}

impl Refs {
    /// `conn` holds `id` (once, however often it asks).
    pub(super) fn hold(&mut self, conn: u64, id: u64) {
        if self.by_conn.entry(conn).or_default().insert(id) {
            *self.count.entry(id).or_default() += 1;
        }
    }

    /// Whether `conn` holds `id`.
    pub(super) fn holds(&self, conn: u64, id: u64) -> bool {
        self.by_conn.get(&conn).is_some_and(|s| s.contains(&id))
    }

    /// `conn` lets go of `id`; returns the id when it is to be freed now.
    pub(super) fn release(&mut self, conn: u64, id: u64) -> Option<u64> {
        let held = self.by_conn.get_mut(&conn).is_some_and(|s| s.remove(&id));
        if held {
            self.dec(id)
        } else {
            None
        }
    }

    /// One hold less on `id`; the id when it is to be freed now.
    fn dec(&mut self, id: u64) -> Option<u64> {
        let c = self.count.get_mut(&id)?;
        *c = c.saturating_sub(1);
        if *c > 0 {
            return None;
        }
        self.count.remove(&id);
        (!self.named.contains(&id)).then_some(id)
    }

    /// A ticket issued by `conn` holding `ids` (each must be alive: the caller checked).
    pub(super) fn issue(&mut self, conn: u64, ids: Vec<u64>) -> u64 {
        for id in &ids {
            *self.count.entry(*id).or_default() += 1;
        }
        self.next_ticket = self.next_ticket.wrapping_add(1);
        let t = self.next_ticket;
        self.tickets.insert(t, Ticket { owner: conn, ids });
        t
    }

    /// `conn` takes over what ticket `t` holds (if it is still there); returns the ids to
    /// free (those `conn` held already lose the ticket's hold, which frees none of them, but
    /// the signature stays honest).
    pub(super) fn redeem(&mut self, conn: u64, t: u64) -> Vec<u64> {
        let Some(ticket) = self.tickets.remove(&t) else {
            return Vec::new();
        };
        let mut free = Vec::new();
        for id in ticket.ids {
            if !self.by_conn.entry(conn).or_default().insert(id) {
                free.extend(self.dec(id));
            }
        }
        free
    }

    /// Everything `conn` held and the tickets it issued go; returns the ids to free.
    pub(super) fn drop_conn(&mut self, conn: u64) -> Vec<u64> {
        let mut free = Vec::new();
        for id in self.by_conn.remove(&conn).unwrap_or_default() {
            free.extend(self.dec(id));
        }
        let mine: Vec<u64> = self
            .tickets
            .iter()
            .filter(|(_, t)| t.owner == conn)
            .map(|(k, _)| *k)
            .collect();
        for k in mine {
            if let Some(t) = self.tickets.remove(&k) {
                for id in t.ids {
                    free.extend(self.dec(id));
                }
            }
        }
        free
    }

    /// `id` has a name (it outlives its proxies).
    pub(super) fn name(&mut self, id: u64) {
        self.named.insert(id);
    }

    /// `id` lost its name; the id when it is to be freed now (nothing holds it).
    pub(super) fn unname(&mut self, id: u64) -> Option<u64> {
        self.named.remove(&id);
        (!self.count.contains_key(&id)).then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::Refs;

    #[test]
    fn counts_connections_and_tickets() {
        let mut r = Refs::default();
        r.hold(1, 10);
        r.hold(1, 10);
        r.hold(2, 10);
        assert_eq!(r.release(1, 10), None, "conn 2 still holds it");
        assert_eq!(r.release(1, 10), None, "conn 1 let go already");
        let t = r.issue(2, vec![10]);
        assert_eq!(r.release(2, 10), None, "the ticket holds it");
        assert_eq!(r.redeem(3, t), Vec::<u64>::new());
        assert!(r.holds(3, 10));
        assert_eq!(
            r.redeem(3, t),
            Vec::<u64>::new(),
            "a ticket is redeemed once"
        );
        assert_eq!(r.drop_conn(3), vec![10]);
    }

    #[test]
    fn a_dead_issuer_takes_its_tickets_and_names_keep_objects() {
        let mut r = Refs::default();
        r.hold(1, 5);
        r.name(6);
        r.hold(1, 6);
        let _t = r.issue(1, vec![5]);
        let mut free = r.drop_conn(1);
        free.sort();
        assert_eq!(free, vec![5], "6 has a name");
        assert_eq!(r.unname(6), Some(6));
        r.hold(2, 7);
        r.name(7);
        assert_eq!(r.unname(7), None, "conn 2 holds it");
        assert_eq!(r.release(2, 7), Some(7));
    }
}
