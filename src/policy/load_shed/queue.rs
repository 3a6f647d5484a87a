//! The waiting room: per-tenant FIFOs inside three priority classes, served round robin.
//!
//! Pure data, no time and no locks: the shedder holds it under its mutex. Every request costs
//! one slot, so deficit round robin with a quantum of one is plain round robin over the tenants
//! that have waiters (`ring`); a tenant with 1,000 waiters gets one turn per round like a tenant
//! with one. Memory is bounded by `queue.size` (a tenant's FIFO exists only while it has a
//! waiter), so these FIFOs need no `max_tracked` accounting.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{Priority, ShedReason};

/// Number of priority classes.
const CLASSES: usize = 3;

/// Per-tenant FIFOs of `T` in priority classes; see the module doc.
pub(super) struct FairQueue<T> {
    classes: [Class<T>; CLASSES],
    len: usize,
    next_seq: u64,
}

struct Class<T> {
    flows: HashMap<Arc<str>, VecDeque<(u64, T)>, foldhash::fast::RandomState>,
    /// Tenants with waiters, in serving order; each appears once.
    ring: VecDeque<Arc<str>>,
}

// === impl FairQueue ===

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            classes: [Class::default(), Class::default(), Class::default()],
            len: 0,
            next_seq: 0,
        }
    }
}

impl<T> FairQueue<T> {
    /// Waiters in all classes.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// True when nobody waits.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `item` to `tenant`'s FIFO in `priority`'s class; returns its ticket for
    /// [`remove`](Self::remove).
    pub(super) fn push(&mut self, priority: Priority, tenant: &str, item: T) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let class = &mut self.classes[priority.class()];
        match class.flows.get_mut(tenant) {
            Some(flow) => flow.push_back((seq, item)),
            None => {
                let key: Arc<str> = Arc::from(tenant);
                class
                    .flows
                    .insert(key.clone(), VecDeque::from([(seq, item)]));
                class.ring.push_back(key);
            }
        }
        self.len += 1;
        seq
    }

    /// The next waiter to serve: the highest class with waiters, its tenants round robin.
    pub(super) fn pop(&mut self) -> Option<T> {
        let class = self.classes.iter_mut().find(|c| !c.ring.is_empty())?;
        let key = class.ring.pop_front()?;
        let flow = class.flows.get_mut(&key)?;
        let (_, item) = flow.pop_front()?;
        if flow.is_empty() {
            class.flows.remove(&key);
        } else {
            class.ring.push_back(key);
        }
        self.len -= 1;
        Some(item)
    }

    /// Takes out the waiter with ticket `seq` (cancelled or timed out); `None` if it already
    /// left (granted or displaced).
    pub(super) fn remove(&mut self, priority: Priority, tenant: &str, seq: u64) -> Option<T> {
        let class = &mut self.classes[priority.class()];
        let flow = class.flows.get_mut(tenant)?;
        // Tickets grow, so each FIFO is sorted by ticket.
        let at = flow.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        let (_, item) = flow.remove(at)?;
        if flow.is_empty() {
            class.flows.remove(tenant);
            class.ring.retain(|k| &**k != tenant);
        }
        self.len -= 1;
        Some(item)
    }

    /// Makes room for an arrival of `tenant` at `priority` to a full queue: takes out the newest
    /// waiter of the longest tenant FIFO in the lowest class below `priority` (reason
    /// `Priority`), else in `priority`'s own class the newest waiter of a tenant whose FIFO is
    /// at least two longer than `tenant`'s (reason `QueueFull`). `None`: the arrival is refused.
    pub(super) fn displace(&mut self, priority: Priority, tenant: &str) -> Option<(T, ShedReason)> {
        let own = priority.class();
        for c in (own + 1..CLASSES).rev() {
            if let Some(item) = self.pop_longest(c, 0) {
                return Some((item, ShedReason::Priority));
            }
        }
        let mine = self.classes[own].flows.get(tenant).map_or(0, VecDeque::len);
        let item = self.pop_longest(own, mine + 2)?;
        Some((item, ShedReason::QueueFull))
    }

    /// Newest waiter of the longest FIFO in class `c`, if that FIFO has at least `at_least`.
    fn pop_longest(&mut self, c: usize, at_least: usize) -> Option<T> {
        let class = &mut self.classes[c];
        let (key, len) = class
            .flows
            .iter()
            .map(|(k, f)| (k.clone(), f.len()))
            .max_by_key(|(_, len)| *len)?;
        if len == 0 || len < at_least {
            return None;
        }
        let flow = class.flows.get_mut(&key)?;
        let (_, item) = flow.pop_back()?;
        if flow.is_empty() {
            class.flows.remove(&key);
            class.ring.retain(|k| *k != key);
        }
        self.len -= 1;
        Some(item)
    }
}

// === impl Class ===

impl<T> Default for Class<T> {
    fn default() -> Self {
        Class {
            flows: HashMap::default(),
            ring: VecDeque::new(),
        }
    }
}
