//! Where the listeners a reload moved went, what those it removed were, and for how long that
//! is remembered.
//!
//! A listener a reload moves (same name, new address: `127.0.0.1:P` to `0.0.0.0:P`) keeps
//! serving, as configured now, the connections its old socket accepted, still open or still
//! queued while it drains: they look up their old address, which [`Generation::moved`] maps
//! to the new one. Once the old socket's drain is over, no connection asks for that address
//! again, so a reload carries a move over only while the drain from that address runs. Without
//! that, every address a listener ever moved from stayed in every later generation. A listener
//! a reload removes (its address and its name gone from the file) serves those connections as
//! it was last configured, remembered the same way ([`removed`]).
//!
//! [`Generation::moved`]: super::Generation::moved

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use super::ListenerRt;
use crate::config::file;

/// From each address a moved listener had to its address now.
pub type Moved = HashMap<SocketAddr, SocketAddr>;

/// The moves of a reload to the listeners `now`, from the generation before: `live`, its
/// listeners (address and name), and `moved`, its own moves. An address of `live` that `now`
/// has no listener on, whose listener `now` names at another address, is a move; so is one of
/// `moved` whose listener moves on (or stays), while `draining` says its drain still runs.
pub(crate) fn moves<'a, L>(
    live: L,
    moved: &Moved,
    now: &[file::Listener],
    draining: impl Fn(&SocketAddr) -> bool,
) -> Moved
where
    L: Iterator<Item = (SocketAddr, &'a str)> + Clone,
{
    let name_at = |addr: &SocketAddr| live.clone().find(|(a, _)| a == addr).map(|(_, n)| n);
    let still = moved
        .iter()
        .filter(|(from, _)| draining(from))
        .filter_map(|(from, to)| Some((*from, name_at(to)?)));
    live.clone()
        .chain(still)
        .filter(|(from, _)| !now.iter().any(|l| l.listen == *from))
        .filter_map(|(from, name)| {
            let to = now.iter().find(|l| l.name == name)?.listen;
            Some((from, to))
        })
        .collect()
}

/// The listeners of a reload's generation before (`live`, by address) that it removes: no
/// listener of `now` at their address, nor one they moved to (`moved`, this reload's moves).
/// Their old sockets drain, and what they accepted is served by them as they were (the
/// connections still open and those still queued: `Generation::listener`). Those `before`
/// kept (removed by a reload before) are kept while `draining` says their drain still runs;
/// so is the old address of a move of the generation before (`was_moved`) that still drains
/// while this reload takes its listener away (removed, or renamed), kept as that listener
/// was last.
pub(crate) fn removed<V: Clone>(
    live: impl Iterator<Item = (SocketAddr, V)>,
    before: &HashMap<SocketAddr, V>,
    was_moved: &Moved,
    moved: &Moved,
    now: &[file::Listener],
    draining: impl Fn(&SocketAddr) -> bool,
) -> HashMap<SocketAddr, V> {
    let live: Vec<(SocketAddr, V)> = live.collect();
    let still = before
        .iter()
        .filter(|(from, _)| draining(from))
        .map(|(from, v)| (*from, v.clone()));
    let left = was_moved
        .iter()
        .filter(|(from, _)| draining(from))
        .filter_map(|(from, to)| {
            let (_, v) = live.iter().find(|(a, _)| a == to)?;
            Some((*from, v.clone()))
        });
    // Last the listeners removed now: one put back at an address and removed again while its
    // first drain there runs is served as it was last.
    still
        .chain(left)
        .chain(live.iter().cloned())
        .filter(|(from, _)| !now.iter().any(|l| l.listen == *from) && !moved.contains_key(from))
        .collect()
}

/// The addresses whose listener a reload took away and that still drain, counted (a listener
/// put back at an address and taken away again may drain there twice at once), each with the
/// listener removed there that the generation in force serves its connections by
/// ([`Drains::hold`]).
#[derive(Debug, Default, Clone)]
pub struct Drains(Arc<parking_lot::Mutex<HashMap<SocketAddr, AtAddr>>>);

/// The drains under way at one address.
#[derive(Debug, Default)]
struct AtAddr {
    /// How many.
    count: u32,
    /// The listener removed there as the generation in force has it (`Generation::removed`):
    /// held while a drain runs there, so that the connections its old socket still serves,
    /// and those still queued there, are served by it until that drain is over.
    held: Option<Arc<ListenerRt>>,
}

/// One drain under way at an address, until dropped.
#[derive(Debug)]
#[must_use = "the drain counts as over when this is dropped"]
pub struct Draining {
    drains: Drains,
    addr: SocketAddr,
}

// === impl Drains ===

impl Drains {
    /// Counts a drain at `addr` until the result is dropped.
    pub fn begin(&self, addr: SocketAddr) -> Draining {
        self.0.lock().entry(addr).or_default().count += 1;
        Draining {
            drains: self.clone(),
            addr,
        }
    }

    /// Whether a drain at `addr` runs now.
    pub fn at(&self, addr: &SocketAddr) -> bool {
        self.0.lock().contains_key(addr)
    }

    /// Holds, at each address that drains, the listener `removed` (the generation just put in
    /// force's `Generation::removed`) has there, until the last drain there is over; lets go
    /// of any other it held there. The generations only point to a removed listener: without
    /// this, one the generation before held strongly (a listener moved, then renamed or
    /// removed where it went while its first address drains) was let go with that generation,
    /// and the connections at its first address found no listener (closed unanswered, or
    /// answered 404), not at that drain's end.
    pub fn hold(&self, removed: &HashMap<SocketAddr, Weak<ListenerRt>>) {
        let mut let_go = Vec::new();
        {
            let mut by = self.0.lock();
            for (addr, at) in by.iter_mut() {
                let now = removed.get(addr).and_then(Weak::upgrade);
                let_go.extend(std::mem::replace(&mut at.held, now));
            }
        }
        // Out of the lock: the last reference to a listener lets go of what only it held.
        drop(let_go);
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        let over = {
            let mut by = self.drains.0.lock();
            match by.get_mut(&self.addr) {
                Some(at) if at.count > 1 => {
                    at.count -= 1;
                    None
                }
                Some(_) => by.remove(&self.addr),
                None => None,
            }
        };
        // Out of the lock, as in `hold`.
        drop(over);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("an address")
    }

    fn listener(name: &str, listen: &str) -> file::Listener {
        file::Listener {
            name: name.to_owned(),
            direction: file::Direction::Inbound,
            listen: addr(listen),
            tls: None,
            access_log: None,
            trust_plan_header: false,
            merge_slashes: None,
            routes: Vec::new(),
        }
    }

    /// One reload from a generation with `live` listeners and `moved` to `now`.
    fn reload(
        live: &[(&str, &str)],
        moved: &Moved,
        now: &[file::Listener],
        drains: &Drains,
    ) -> Moved {
        let live: Vec<(SocketAddr, &str)> = live.iter().map(|(n, a)| (addr(a), *n)).collect();
        moves(live.iter().copied(), moved, now, |a| drains.at(a))
    }

    #[test]
    fn a_move_is_remembered_while_its_old_address_drains_then_forgotten() {
        let drains = Drains::default();
        let now = [listener("in", "0.0.0.0:8080")];
        let first = reload(&[("in", "127.0.0.1:8080")], &Moved::new(), &now, &drains);
        assert_eq!(
            first,
            Moved::from([(addr("127.0.0.1:8080"), addr("0.0.0.0:8080"))])
        );
        // The old socket drains (reload::apply begins it): a reload meanwhile keeps the move.
        let draining = drains.begin(addr("127.0.0.1:8080"));
        let live = [("in", "0.0.0.0:8080")];
        assert_eq!(reload(&live, &first, &now, &drains), first);
        // Its drain over, the next reload forgets it.
        drop(draining);
        assert!(!drains.at(&addr("127.0.0.1:8080")));
        assert_eq!(reload(&live, &first, &now, &drains), Moved::new());
    }

    #[test]
    fn a_move_still_draining_follows_its_listener_to_its_next_address() {
        let drains = Drains::default();
        let _a = drains.begin(addr("127.0.0.1:1"));
        let moved = Moved::from([(addr("127.0.0.1:1"), addr("127.0.0.1:2"))]);
        let now = [listener("in", "127.0.0.1:3")];
        let next = reload(&[("in", "127.0.0.1:2")], &moved, &now, &drains);
        assert_eq!(
            next,
            Moved::from([
                (addr("127.0.0.1:1"), addr("127.0.0.1:3")),
                (addr("127.0.0.1:2"), addr("127.0.0.1:3")),
            ])
        );
        // A listener taken out entirely takes its moves with it.
        assert_eq!(
            reload(&[("in", "127.0.0.1:3")], &next, &[], &drains),
            Moved::new()
        );
    }

    /// A listener removed is remembered, as it was, while its address drains; one moved is
    /// not (its connections are served where it moved), nor one put back at its address.
    #[test]
    fn a_removed_listener_is_remembered_while_its_address_drains() {
        let drains = Drains::default();
        let live = [(addr("127.0.0.1:1"), "a"), (addr("127.0.0.1:2"), "b")];
        let moved = Moved::from([(addr("127.0.0.1:2"), addr("127.0.0.1:3"))]);
        let now = [listener("b", "127.0.0.1:3")];
        let first = removed(
            live.into_iter(),
            &HashMap::new(),
            &Moved::new(),
            &moved,
            &now,
            |a| drains.at(a),
        );
        assert_eq!(first, HashMap::from([(addr("127.0.0.1:1"), "a")]));
        let draining = drains.begin(addr("127.0.0.1:1"));
        let live = [(addr("127.0.0.1:3"), "b")];
        let next = |now: &[file::Listener]| {
            removed(
                live.into_iter(),
                &first,
                &Moved::new(),
                &Moved::new(),
                now,
                |a| drains.at(a),
            )
        };
        assert_eq!(next(&now), first);
        let back = [listener("a", "127.0.0.1:1"), listener("b", "127.0.0.1:3")];
        assert!(next(&back).is_empty(), "put back");
        drop(draining);
        assert!(next(&now).is_empty(), "its drain over");
    }

    /// A listener moved from `:1` to `:2`, then removed while `:1` still drains: the
    /// connections at `:1` are served by it as it was last (as those at `:2`), not by none.
    /// So when it is renamed instead, and its drain over, it is forgotten.
    #[test]
    fn a_listener_moved_then_removed_is_remembered_at_its_first_address_too() {
        let drains = Drains::default();
        let first = drains.begin(addr("127.0.0.1:1"));
        let was_moved = Moved::from([(addr("127.0.0.1:1"), addr("127.0.0.1:2"))]);
        let live = [(addr("127.0.0.1:2"), "a")];
        let next = |now: &[file::Listener]| {
            let moved = moves(live.iter().map(|(a, n)| (*a, *n)), &was_moved, now, |a| {
                drains.at(a)
            });
            removed(
                live.into_iter(),
                &HashMap::new(),
                &was_moved,
                &moved,
                now,
                |a| drains.at(a),
            )
        };
        assert_eq!(
            next(&[]),
            HashMap::from([(addr("127.0.0.1:1"), "a"), (addr("127.0.0.1:2"), "a")])
        );
        let renamed = [listener("b", "127.0.0.1:2")];
        assert_eq!(next(&renamed), HashMap::from([(addr("127.0.0.1:1"), "a")]));
        drop(first);
        assert!(
            !next(&[]).contains_key(&addr("127.0.0.1:1")),
            "its drain over"
        );
    }

    /// A listener moved to a new port at every reload, each drain over before the next: the
    /// map holds the last move only, not one entry per port it ever had.
    #[test]
    fn moves_stay_bounded_by_the_drains_under_way() {
        let drains = Drains::default();
        let mut moved = Moved::new();
        for port in 1..50u16 {
            let (was, now) = (
                format!("127.0.0.1:{port}"),
                format!("127.0.0.1:{}", port + 1),
            );
            moved = reload(&[("in", &was)], &moved, &[listener("in", &now)], &drains);
            assert_eq!(moved.len(), 1, "after the move to {now}: {moved:?}");
            drop(drains.begin(addr(&was)));
        }
        // Two drains at one address: it drains until both are over.
        let (one, two) = (
            drains.begin(addr("127.0.0.1:9")),
            drains.begin(addr("127.0.0.1:9")),
        );
        drop(one);
        assert!(drains.at(&addr("127.0.0.1:9")));
        drop(two);
        assert!(!drains.at(&addr("127.0.0.1:9")));
    }
}
