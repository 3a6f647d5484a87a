//! The waiting room: per-tenant FIFOs, served round robin over tenants, in two tiers.
//!
//! Pure data, no time and no locks: the shedder holds it under its mutex. Every request costs
//! one slot, so deficit round robin with a quantum of one is plain round robin over the tenants
//! that have waiters (`ring`); a tenant with 1,000 waiters gets one turn per round like a tenant
//! with one. Memory is bounded by `queue.size` (a tenant's FIFO exists only while it has a
//! waiter), so these FIFOs need no `max_tracked` accounting.
//!
//! Priorities come from a header the client sets, so they may only order a tenant's own
//! requests, or lower a request below other tenants', never raise it above them: `critical` and
//! `normal` share the upper tier, whose tenants are served round robin, a tenant's critical
//! waiters before its normal ones; `sheddable` waiters are the lower tier, served only when the
//! upper one is empty and displaced first. So a tenant that marks everything `critical` gets
//! its fair turn and no more (in Kubernetes API Priority and Fairness the levels are the
//! operator's to assign; a client header cannot be trusted with more than this).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{Priority, ShedReason};

/// Per-tenant FIFOs of `T` in two tiers; see the module doc.
pub(super) struct FairQueue<T> {
    /// `critical` and `normal` waiters.
    upper: Tier<T>,
    /// `sheddable` waiters.
    lower: Tier<T>,
    len: usize,
    next_seq: u64,
}

struct Tier<T> {
    flows: HashMap<Arc<str>, Flow<T>, foldhash::fast::RandomState>,
    /// Tenants with waiters, in serving order; each appears once.
    ring: VecDeque<Arc<str>>,
}

/// One tenant's waiters in a tier, each FIFO sorted by ticket. The lower tier uses `normal`
/// only.
struct Flow<T> {
    critical: VecDeque<(u64, T)>,
    normal: VecDeque<(u64, T)>,
}

// === impl FairQueue ===

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            upper: Tier::default(),
            lower: Tier::default(),
            len: 0,
            next_seq: 0,
        }
    }
}

impl<T> FairQueue<T> {
    /// Waiters in both tiers.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// True when nobody waits.
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn tier(&mut self, priority: Priority) -> &mut Tier<T> {
        match priority {
            Priority::Sheddable => &mut self.lower,
            Priority::Critical | Priority::Normal => &mut self.upper,
        }
    }

    /// Appends `item` to `tenant`'s FIFO for `priority`; returns its ticket for
    /// [`remove`](Self::remove).
    pub(super) fn push(&mut self, priority: Priority, tenant: &str, item: T) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let tier = self.tier(priority);
        let flow = match tier.flows.get_mut(tenant) {
            Some(flow) => flow,
            None => {
                let key: Arc<str> = Arc::from(tenant);
                tier.ring.push_back(key.clone());
                tier.flows.entry(key).or_default()
            }
        };
        flow.fifo(priority).push_back((seq, item));
        self.len += 1;
        seq
    }

    /// The next waiter to serve: the upper tier if it has waiters, its tenants round robin (a
    /// tenant's critical waiters first), else the lower tier's next tenant.
    pub(super) fn pop(&mut self) -> Option<T> {
        let tier = match self.upper.ring.is_empty() {
            false => &mut self.upper,
            true => &mut self.lower,
        };
        let key = tier.ring.pop_front()?;
        let flow = tier.flows.get_mut(&key)?;
        let (_, item) = match flow.critical.pop_front() {
            Some(w) => w,
            None => flow.normal.pop_front()?,
        };
        if flow.is_empty() {
            tier.flows.remove(&key);
        } else {
            tier.ring.push_back(key);
        }
        self.len -= 1;
        Some(item)
    }

    /// Takes out the waiter with ticket `seq` (cancelled or timed out); `None` if it already
    /// left (granted or displaced).
    pub(super) fn remove(&mut self, priority: Priority, tenant: &str, seq: u64) -> Option<T> {
        let tier = self.tier(priority);
        let flow = tier.flows.get_mut(tenant)?;
        let fifo = flow.fifo(priority);
        // Tickets grow, so each FIFO is sorted by ticket.
        let at = fifo.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        let (_, item) = fifo.remove(at)?;
        tier.drop_if_empty(tenant);
        self.len -= 1;
        Some(item)
    }

    /// Makes room for an arrival of `tenant` at `priority` to a full queue, and says who goes:
    /// - an arrival above `sheddable`: the newest waiter of the longest sheddable FIFO
    ///   (reason `Priority`);
    /// - a `critical` arrival: else the newest `normal` waiter of its own tenant (`Priority`);
    /// - else, in the arrival's tier, the newest waiter (a normal one before a critical one) of
    ///   a tenant with at least two more waiters there than the arrival's (`QueueFull`, as fair
    ///   queueing drops from the fattest flow).
    ///
    /// `None`: the arrival is refused. No arrival displaces another tenant's waiter of the
    /// upper tier unless that tenant holds more of the room than the arrival's.
    pub(super) fn displace(&mut self, priority: Priority, tenant: &str) -> Option<(T, ShedReason)> {
        if priority != Priority::Sheddable {
            if let Some(item) = self.lower.pop_longest(0) {
                self.len -= 1;
                return Some((item, ShedReason::Priority));
            }
        }
        let tier = self.tier(priority);
        if priority == Priority::Critical {
            let own = tier.flows.get_mut(tenant).and_then(|f| f.normal.pop_back());
            if let Some((_, item)) = own {
                tier.drop_if_empty(tenant);
                self.len -= 1;
                return Some((item, ShedReason::Priority));
            }
        }
        let mine = tier.flows.get(tenant).map_or(0, Flow::len);
        let item = tier.pop_longest(mine + 2)?;
        self.len -= 1;
        Some((item, ShedReason::QueueFull))
    }
}

// === impl Tier ===

impl<T> Default for Tier<T> {
    fn default() -> Self {
        Tier {
            flows: HashMap::default(),
            ring: VecDeque::new(),
        }
    }
}

impl<T> Tier<T> {
    /// Newest waiter (normal before critical) of the longest flow, if that flow has at least
    /// `at_least` (and one); the caller counts it out of the queue's length.
    fn pop_longest(&mut self, at_least: usize) -> Option<T> {
        // One pass over the flows under the shedder's lock; only the winner's key is cloned.
        let (key, len) = self
            .flows
            .iter()
            .max_by_key(|(_, f)| f.len())
            .map(|(k, f)| (k.clone(), f.len()))?;
        if len == 0 || len < at_least {
            return None;
        }
        let flow = self.flows.get_mut(&key)?;
        let (_, item) = match flow.normal.pop_back() {
            Some(w) => w,
            None => flow.critical.pop_back()?,
        };
        self.drop_if_empty(&key);
        Some(item)
    }

    /// Forgets `tenant`'s flow once it has no waiter left.
    fn drop_if_empty(&mut self, tenant: &str) {
        if self.flows.get(tenant).is_some_and(Flow::is_empty) {
            self.flows.remove(tenant);
            // Each tenant appears once in the ring: stop at it.
            if let Some(at) = self.ring.iter().position(|k| &**k == tenant) {
                self.ring.remove(at);
            }
        }
    }
}

// === impl Flow ===

impl<T> Default for Flow<T> {
    fn default() -> Self {
        Flow {
            critical: VecDeque::new(),
            normal: VecDeque::new(),
        }
    }
}

impl<T> Flow<T> {
    fn len(&self) -> usize {
        self.critical.len() + self.normal.len()
    }

    fn is_empty(&self) -> bool {
        self.critical.is_empty() && self.normal.is_empty()
    }

    /// The FIFO a waiter of `priority` joins (the lower tier's flows use `normal`).
    fn fifo(&mut self, priority: Priority) -> &mut VecDeque<(u64, T)> {
        match priority {
            Priority::Critical => &mut self.critical,
            Priority::Normal | Priority::Sheddable => &mut self.normal,
        }
    }
}
