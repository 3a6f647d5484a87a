//! Slots and waiters: the RAII pieces that make every taken slot come back exactly once.
//!
//! A [`ShedSlot`] owns a route slot and (with a per-tenant cap) a [`TenantHold`]. A waiter's
//! grant *is* a `ShedSlot` sent through a oneshot channel, so a grant whose waiter has gone is
//! either handed back to the dispatcher (send failed: it passes the route slot to the next
//! waiter) or dropped inside the channel (its `Drop` releases it and wakes the next waiter).
//! A waiting future that is dropped takes itself out of the queue at once ([`Waiting`]).

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{queue, LoadShedder, Priority, Shed, ShedReason};
use crate::policy::outcome::Outcome;
use crate::tenant::tracked::TenantState;

/// A held slot: the request may go upstream. Dropping it (when the response body ends or is
/// dropped) frees the route and tenant slots and hands the route slot to a waiter.
#[must_use = "dropping the slot frees it at once"]
pub struct ShedSlot {
    shedder: Arc<LoadShedder>,
    _tenant: Option<TenantHold>,
    /// False only for a grant that found its waiter gone: the dispatcher reuses the route slot.
    route: bool,
}

/// Requests of one tenant holding or waiting for a slot.
#[derive(Debug, Default)]
pub(super) struct TenantSlots {
    held: AtomicU32,
}

/// One unit of a tenant's count, given back on drop.
#[derive(Debug)]
pub(super) struct TenantHold(Arc<TenantSlots>);

/// A queue entry: where to send the grant, and the tenant slot it already holds.
pub(super) struct Waiter {
    tx: oneshot::Sender<Grant>,
    hold: Option<TenantHold>,
}

/// What a waiter is told.
pub(super) enum Grant {
    Slot(ShedSlot),
    Shed(ShedReason),
}

/// What an arrival to the slow path got.
enum Enqueued {
    Granted(ShedSlot),
    Refused(ShedReason),
    Waiting(u64),
}

/// A waiting request; leaves the queue when dropped before its answer.
struct Waiting {
    shedder: Arc<LoadShedder>,
    tenant: Box<str>,
    priority: Priority,
    seq: u64,
    rx: oneshot::Receiver<Grant>,
    done: bool,
}

// === impl ShedSlot ===

impl ShedSlot {
    pub(super) fn new(shedder: Arc<LoadShedder>, tenant: Option<TenantHold>) -> Self {
        ShedSlot {
            shedder,
            _tenant: tenant,
            route: true,
        }
    }

    /// Feeds the latency of the upstream exchange to the drain rate and, with its outcome, to
    /// the adaptive limit (`Cancelled` and `ClientFault` are skipped, they say nothing about the
    /// upstream).
    pub fn record(&self, outcome: Outcome, elapsed: Duration) {
        if outcome.is_verdict() {
            self.shedder.record(outcome, elapsed);
        }
    }
}

impl Drop for ShedSlot {
    fn drop(&mut self) {
        if self.route {
            self.shedder.release();
        }
    }
}

impl std::fmt::Debug for ShedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShedSlot")
            .field("tenant", &self._tenant.is_some())
            .finish()
    }
}

// === impl TenantSlots ===

impl TenantState for TenantSlots {
    fn is_idle(&self, _now_nanos: u64) -> bool {
        self.held.load(SeqCst) == 0
    }

    fn keep_score(&self, _now_nanos: u64) -> u64 {
        u64::from(self.held.load(SeqCst))
    }
}

// === impl TenantHold ===

impl TenantHold {
    /// One more unit of `slots` if under `cap`.
    pub(super) fn take(slots: Arc<TenantSlots>, cap: u32) -> Option<Self> {
        slots
            .held
            .fetch_update(SeqCst, SeqCst, |n| (n < cap).then_some(n + 1))
            .ok()
            .map(|_| TenantHold(slots))
    }
}

impl Drop for TenantHold {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, SeqCst);
    }
}

// === impl Waiter ===

impl Waiter {
    /// A waiter without a tenant slot, and where its answer arrives.
    #[cfg(test)]
    pub(super) fn channel() -> (Self, oneshot::Receiver<Grant>) {
        let (tx, rx) = oneshot::channel();
        (Waiter { tx, hold: None }, rx)
    }

    /// Sends a granted slot (one route slot already counted); false if the waiter is gone, in
    /// which case the route slot is still counted and the caller passes it on.
    pub(super) fn grant(self, shedder: Arc<LoadShedder>) -> bool {
        let slot = ShedSlot::new(shedder, self.hold);
        match self.tx.send(Grant::Slot(slot)) {
            Ok(()) => true,
            Err(Grant::Slot(mut slot)) => {
                slot.route = false;
                false
            }
            Err(Grant::Shed(_)) => false,
        }
    }

    /// Tells the waiter it is shed (it was displaced).
    pub(super) fn refuse(self, reason: ShedReason) {
        let _gone = self.tx.send(Grant::Shed(reason));
    }
}

// === impl LoadShedder (slow path) ===

impl LoadShedder {
    /// The slow path of `acquire`: wait in the fair queue.
    pub(super) async fn wait(
        self: &Arc<Self>,
        tenant: &str,
        priority: Priority,
        hold: Option<TenantHold>,
    ) -> Result<ShedSlot, Shed> {
        let (tx, rx) = oneshot::channel();
        let seq = match self.enqueue(tenant, priority, Waiter { tx, hold }) {
            Enqueued::Granted(slot) => return Ok(slot),
            Enqueued::Refused(reason) => return Err(self.shed(reason)),
            Enqueued::Waiting(seq) => seq,
        };
        let timeout = Duration::from_nanos(self.queue_timeout_nanos.load(SeqCst));
        let mut w = Waiting {
            shedder: self.clone(),
            tenant: Box::from(tenant),
            priority,
            seq,
            rx,
            done: false,
        };
        let answer = tokio::time::timeout(timeout, &mut w.rx).await;
        w.done = true;
        match answer {
            Ok(Ok(grant)) => self.answer(grant),
            // A queued sender is always used before it is dropped; count it as a timeout.
            Ok(Err(_)) => Err(self.shed(ShedReason::QueueTimeout)),
            Err(_elapsed) => {
                let left = self.unqueue(&w);
                if left {
                    return Err(self.shed(ShedReason::QueueTimeout));
                }
                // Granted or displaced just before the timeout: the answer is in the channel.
                match w.rx.try_recv() {
                    Ok(grant) => self.answer(grant),
                    Err(_) => Err(self.shed(ShedReason::QueueTimeout)),
                }
            }
        }
    }

    fn answer(&self, grant: Grant) -> Result<ShedSlot, Shed> {
        match grant {
            Grant::Slot(slot) => Ok(slot),
            Grant::Shed(reason) => Err(self.shed(reason)),
        }
    }

    /// Joins the queue (or is granted or refused at once); see the module doc of `load_shed`.
    fn enqueue(self: &Arc<Self>, tenant: &str, priority: Priority, waiter: Waiter) -> Enqueued {
        let mut q = self.queue.lock();
        if q.is_empty() && self.try_take() {
            return Enqueued::Granted(ShedSlot::new(self.clone(), waiter.hold));
        }
        let size = self.queue_size.load(SeqCst);
        if size == 0 {
            return Enqueued::Refused(self.limit_reason());
        }
        if q.len() >= size as usize {
            match q.displace(priority, tenant) {
                Some((victim, reason)) => victim.refuse(reason),
                None => return Enqueued::Refused(ShedReason::QueueFull),
            }
        }
        Enqueued::Waiting(self.join(&mut q, priority, tenant, waiter))
    }

    /// Puts `waiter` in the queue and publishes it, then serves any slot freed meanwhile: a
    /// release that ran after our last look at `in_flight` but read `waiting` before this
    /// publication did not dispatch, so this dispatch is what keeps its slot from being lost.
    pub(super) fn join(
        &self,
        q: &mut queue::FairQueue<Waiter>,
        priority: Priority,
        tenant: &str,
        waiter: Waiter,
    ) -> u64 {
        let seq = q.push(priority, tenant, waiter);
        self.sync_waiting(q);
        self.dispatch(q);
        seq
    }

    /// Takes `w` out of the queue; false if it had already left (granted or displaced).
    fn unqueue(&self, w: &Waiting) -> bool {
        let mut q = self.queue.lock();
        let removed = q.remove(w.priority, &w.tenant, w.seq);
        self.sync_waiting(&q);
        drop(q);
        removed.is_some()
    }
}

// === impl Waiting ===

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.done {
            // The client went away: leave the queue now. A grant already in `rx` is dropped
            // with it, and the slot's own Drop passes it on.
            self.shedder.unqueue(self);
        }
    }
}
