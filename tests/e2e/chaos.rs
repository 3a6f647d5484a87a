//! Chaos scenarios: faults injected into a running proxy's surroundings (an endpoint stopped,
//! an upstream turned slow, an upstream refusing connections, a storm of reloads, SIGTERM, the
//! global store killed) while steady load runs, each judged by what the clients saw.
//!
//! Why here and not in the per-policy modules: those prove one policy on one request at a
//! time; these prove that the policies together keep a promise to clients while the fault
//! happens under load. Each scenario is bounded (a few hundred requests, ≤ ~15 s) and prints
//! a small table (`cargo test --test e2e chaos -- --nocapture` shows it).

mod endpoint_down;
mod injected;
mod redis_down;
mod refused;
mod reloads;
mod sigterm;
mod slow_upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::support::http;

/// Pause of each client between two requests.
const PACE: Duration = Duration::from_millis(2);

/// One finished request, as a client saw it.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// When it was sent, from the start of the load.
    pub sent: Duration,
    /// How long the answer took.
    pub took: Duration,
    /// The status, or the client error as text.
    pub result: Result<u16, String>,
}

/// Steady load: `tasks` clients, each with its own pooled keep-alive client, sending GETs
/// back to back until stopped. The path can be changed on the fly (to turn a fault on).
pub struct Load {
    start: Instant,
    stop: watch::Sender<bool>,
    path: watch::Sender<String>,
    log: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a finished load saw.
#[derive(Debug)]
pub struct Tally {
    pub outcomes: Vec<Outcome>,
}

// === impl Load ===

impl Load {
    /// Starts `tasks` clients sending `GET path` to `addr`.
    pub fn start(addr: SocketAddr, path: &str, tasks: usize) -> Load {
        let start = Instant::now();
        let (stop, stop_rx) = watch::channel(false);
        let (path_tx, path_rx) = watch::channel(path.to_owned());
        let log = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..tasks)
            .map(|_| {
                let (stop, path, log) = (stop_rx.clone(), path_rx.clone(), log.clone());
                tokio::spawn(client_loop(addr, start, stop, path, log))
            })
            .collect();
        Load {
            start,
            stop,
            path: path_tx,
            log,
            tasks,
        }
    }

    /// Time since the load began.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Requests finished so far.
    pub fn done(&self) -> usize {
        self.log.lock().len()
    }

    /// Sends every later request to `path`.
    pub fn set_path(&self, path: &str) {
        let _ = self.path.send(path.to_owned());
    }

    /// Waits until `n` more requests have finished (bounded by the test patience).
    pub async fn wait_more(&self, n: usize) {
        let want = self.done() + n;
        assert_eventually!(self.done() >= want, "{n} more requests must finish");
    }

    /// Stops the clients, lets their last requests finish, and returns what they saw.
    pub async fn finish(self) -> Tally {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.await.expect("a load client must not panic");
        }
        let outcomes = self.log.lock().clone();
        Tally { outcomes }
    }
}

async fn client_loop(
    addr: SocketAddr,
    start: Instant,
    stop: watch::Receiver<bool>,
    path: watch::Receiver<String>,
    log: Arc<Mutex<Vec<Outcome>>>,
) {
    let client = http::client();
    while !*stop.borrow() {
        let p = path.borrow().clone();
        let sent = start.elapsed();
        let rsp = http::send(&client, addr, ::http::Method::GET, &p, &[], http::empty()).await;
        let result = match rsp {
            Ok(r) => Ok(r.status.as_u16()),
            Err(e) => Err(e.to_string()),
        };
        let took = start.elapsed() - sent;
        log.lock().push(Outcome { sent, took, result });
        // Steady, not flat out: the machine is shared and the proxy must not starve the rest.
        tokio::time::sleep(PACE).await;
    }
}

// === impl Tally ===

impl Tally {
    /// Requests sent (and finished).
    pub fn sent(&self) -> usize {
        self.outcomes.len()
    }

    /// Requests that did not end in 200.
    pub fn errors(&self) -> Vec<&Outcome> {
        self.outcomes
            .iter()
            .filter(|o| o.result != Ok(200))
            .collect()
    }

    /// From `since` to the end of the last request that failed, or zero if none failed after.
    pub fn recovery(&self, since: Duration) -> Duration {
        self.outcomes
            .iter()
            .filter(|o| o.result != Ok(200) && o.sent + o.took >= since)
            .map(|o| o.sent + o.took - since)
            .max()
            .unwrap_or_default()
    }

    /// The `q` quantile (0..=1) of latency of requests sent in `[from, to)`.
    pub fn latency(&self, from: Duration, to: Duration, q: f64) -> Duration {
        let mut l: Vec<Duration> = self
            .outcomes
            .iter()
            .filter(|o| o.sent >= from && o.sent < to)
            .map(|o| o.took)
            .collect();
        if l.is_empty() {
            return Duration::ZERO;
        }
        l.sort();
        let i = ((l.len() - 1) as f64 * q).round() as usize;
        l[i]
    }
}

/// Prints a scenario's table: a title, then `| key | value |` rows.
pub fn table(title: &str, rows: &[(&str, String)]) {
    let mut out = format!("\n### chaos: {title}\n| measure | value |\n| --- | --- |\n");
    for (k, v) in rows {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    println!("{out}");
}

/// A duration in milliseconds, for tables.
pub fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
