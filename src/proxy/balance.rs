//! Spreading client connections evenly over the workers.
//!
//! Why: every worker accepts on a listening socket of its own (`SO_REUSEPORT`, see
//! `workers.rs`), and the kernel picks the socket by a hash of the client's address and port,
//! blind to how many connections each worker already serves. With keep-alive clients that
//! hash fixes each worker's share for the life of the connections: 16 connections over two
//! workers split 11/5 or worse about one time in five, and in 10 runs of `wrk -c16` here the
//! busier worker took 10 to 12 of them in 8. A worker with twice the connections runs out of core
//! while the other's core has room, and its clients wait longer for every answer.
//!
//! So the worker that accepts a connection asks [`Balance::choose`] who should serve it, and
//! hands it to a worker with clearly fewer open connections (see [`pick`]); that worker
//! serves it start to end. HAProxy does the same for every connection, to its least loaded
//! thread. A handed connection costs one cross-thread wake-up and moving its socket between
//! I/O drivers, once per connection, never per request.
//!
//! The counts are `rampart_open_connections{worker}`: one gauge per worker, raised when a
//! worker is chosen and lowered when the connection ends ([`Open`]).

use prometheus::IntGauge;

use crate::metrics::Metrics;

/// Open client connections per worker, and the choice of who serves the next one.
#[derive(Debug)]
pub struct Balance {
    /// `rampart_open_connections{worker}`, by worker index.
    open: Box<[IntGauge]>,
}

/// One open connection, counted for the worker serving it until dropped.
#[derive(Debug)]
pub struct Open(IntGauge);

impl Balance {
    /// The counts of `workers` workers, exported through `metrics`.
    pub fn new(metrics: &Metrics, workers: usize) -> Balance {
        let open = (0..workers.max(1))
            .map(|w| metrics.open_connections(w))
            .collect();
        Balance { open }
    }

    /// The worker that should serve a connection worker `me` has just accepted.
    pub fn choose(&self, me: usize) -> usize {
        if self.open.len() == 1 {
            return me;
        }
        pick(me, self.open.iter().map(IntGauge::get))
    }

    /// Counts a connection for `worker` until the result is dropped.
    pub fn open(&self, worker: usize) -> Open {
        let g = &self.open[worker.min(self.open.len() - 1)];
        g.inc();
        Open(g.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Who serves a new connection accepted by worker `me`, given every worker's open connections
/// (`open`, by index): `me`, unless another worker serves fewer, by more than a sixteenth of
/// its count; then the one serving fewest.
///
/// So up to 16 connections each, the workers stay within one of each other; the sixteenth
/// keeps workers with hundreds each from passing connections back and forth over a few.
/// Counts read while another worker decides may be a step old; that only lets an imbalance of
/// one more through now and then.
fn pick(me: usize, open: impl Iterator<Item = i64>) -> usize {
    let mut mine = 0;
    let (mut least, mut fewest) = (me, i64::MAX);
    for (w, n) in open.enumerate() {
        if w == me {
            mine = n;
        }
        if n < fewest {
            (least, fewest) = (w, n);
        }
    }
    if mine > fewest + fewest / 16 {
        least
    } else {
        me
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(me: usize, open: &[i64]) -> usize {
        pick(me, open.iter().copied())
    }

    #[test]
    fn a_worker_keeps_a_connection_unless_another_serves_fewer() {
        assert_eq!(chosen(0, &[0, 0]), 0);
        assert_eq!(chosen(1, &[0, 0]), 1);
        assert_eq!(chosen(0, &[1, 0]), 1);
        assert_eq!(chosen(1, &[3, 4]), 0);
        assert_eq!(chosen(0, &[8, 8]), 0);
        assert_eq!(chosen(0, &[9, 8]), 1);
        // The fewest of several.
        assert_eq!(chosen(2, &[5, 2, 6, 3]), 1);
    }

    #[test]
    fn large_counts_may_differ_by_a_sixteenth() {
        // Within a sixteenth of 320 (20): kept.
        assert_eq!(chosen(0, &[340, 320]), 0);
        assert_eq!(chosen(0, &[341, 320]), 1);
        // Below 16, strictly fewer is enough; from 16, one more is let through.
        assert_eq!(chosen(0, &[15, 15]), 0);
        assert_eq!(chosen(0, &[16, 15]), 1);
        assert_eq!(chosen(0, &[17, 16]), 0);
        assert_eq!(chosen(0, &[18, 16]), 1);
    }

    #[test]
    fn connections_accepted_by_one_worker_end_up_spread_evenly() {
        // Every connection hashed to worker 0, as the kernel may do: the choice spreads them.
        let mut open = [0i64; 3];
        for _ in 0..30 {
            let w = chosen(0, &open);
            open[w] += 1;
        }
        assert_eq!(open, [10, 10, 10]);
    }

    #[test]
    fn open_counts_until_dropped() {
        let metrics = Metrics::register();
        let b = Balance::new(&metrics, 2);
        let a = b.open(1);
        let c = b.open(1);
        assert_eq!(b.choose(1), 0, "worker 1 serves two, worker 0 none");
        assert_eq!(b.choose(0), 0);
        drop((a, c));
        assert_eq!(b.choose(1), 1);
        assert_eq!(metrics.open_connections(1).get(), 0);
    }

    #[test]
    fn one_worker_always_serves_its_own() {
        let metrics = Metrics::register();
        let b = Balance::new(&metrics, 1);
        let _held = (b.open(0), b.open(0));
        assert_eq!(b.choose(0), 0);
        assert_eq!(metrics.open_connections(0).get(), 2);
    }
}
