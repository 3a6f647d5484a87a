//! Where access log lines go: one bounded channel and one writer thread per destination.
//!
//! A thread, not a tokio task, because writing a file blocks; the thread owns the file and the
//! format buffer, so the request path only moves a record into the channel. Listeners that log
//! to the same destination share its sink ([`Sinks`] hands out one per destination and forgets
//! it when the last listener using it is gone: the channel closes and the thread ends after
//! writing what is queued). A file is opened for append, and opened again after every reload
//! (`reopen`), which is how log rotation by rename works: rename, then SIGHUP or POST /reload.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::line::write_line;
use super::Record;
use crate::config::file::LogTo;

/// Lines queued per destination before new ones are dropped.
const QUEUE: usize = 8192;
/// Bytes formatted before one write.
const BATCH: usize = 64 * 1024;
/// How long the writer sleeps when it finds the queue empty.
const PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// One destination: the channel into its writer thread.
#[derive(Debug)]
pub struct Sink {
    to: LogTo,
    tx: mpsc::Sender<Box<Record>>,
    reopen: Arc<AtomicU64>,
    dropped: IntCounter,
}

/// The sinks alive now, one per destination (shared across reloads).
#[derive(Debug)]
pub struct Sinks {
    open: Mutex<HashMap<LogTo, Weak<Sink>>>,
    dropped: IntCounter,
}

// === impl Sink ===

impl Sink {
    /// Where it writes.
    pub fn to(&self) -> &LogTo {
        &self.to
    }

    /// Queues `rec` without waiting; counts it as dropped if the queue is full.
    pub(super) fn send(&self, rec: Box<Record>) {
        if self.tx.try_send(rec).is_err() {
            self.dropped.inc();
        }
    }
}

// === impl Sinks ===

impl Sinks {
    /// No sinks yet; drops are counted in `dropped`.
    pub fn new(dropped: IntCounter) -> Self {
        Sinks {
            open: Mutex::new(HashMap::new()),
            dropped,
        }
    }

    /// The sink of `to`, starting its writer thread if none is alive. Called when a
    /// generation is built, never on the request path.
    pub fn get(&self, to: &LogTo) -> Option<Arc<Sink>> {
        let mut open = self.open.lock();
        open.retain(|_, s| s.strong_count() > 0);
        if let Some(s) = open.get(to).and_then(Weak::upgrade) {
            return Some(s);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let reopen = Arc::new(AtomicU64::new(0));
        let (dest, epoch) = (to.clone(), reopen.clone());
        let spawned = std::thread::Builder::new()
            .name("rampart-access-log".into())
            .spawn(move || write_loop(dest, rx, epoch));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer; lines are dropped");
            return None;
        }
        let sink = Arc::new(Sink {
            to: to.clone(),
            tx,
            reopen,
            dropped: self.dropped.clone(),
        });
        open.insert(to.clone(), Arc::downgrade(&sink));
        Some(sink)
    }

    /// Asks every file sink to open its file again before its next write (after a reload).
    pub fn reopen(&self) {
        for s in self.open.lock().values().filter_map(Weak::upgrade) {
            s.reopen.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer thread: drains the channel in batches until every sender is gone.
///
/// It never parks in the channel: it sleeps [`PAUSE`] whenever the channel is empty and looks
/// again. A parked receiver would make every request's send wake a thread (a futex call on
/// the request path, measured at a quarter of the throughput); polling costs a line up to
/// `PAUSE` of delay and the queue holds `QUEUE` lines, far more than a pause's worth.
fn write_loop(to: LogTo, mut rx: mpsc::Receiver<Box<Record>>, reopen: Arc<AtomicU64>) {
    let mut out = Out::new(to);
    let mut seen = reopen.load(Ordering::Relaxed);
    let mut buf = Vec::with_capacity(BATCH + 1024);
    loop {
        let rec = match rx.try_recv() {
            Ok(rec) => rec,
            Err(mpsc::error::TryRecvError::Empty) => {
                std::thread::sleep(PAUSE);
                continue;
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        buf.clear();
        write_line(&mut buf, &rec);
        drop(rec);
        while buf.len() < BATCH {
            let Ok(rec) = rx.try_recv() else { break };
            write_line(&mut buf, &rec);
        }
        let now = reopen.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            out.reopen();
        }
        out.write(&buf);
    }
}

/// The open destination of a writer thread.
enum Out {
    Stdout,
    File {
        path: std::path::PathBuf,
        file: Option<File>,
    },
}

// === impl Out ===

impl Out {
    fn new(to: LogTo) -> Self {
        match to {
            LogTo::Stdout => Out::Stdout,
            LogTo::File(path) => {
                let file = open(&path);
                Out::File { path, file }
            }
        }
    }

    fn reopen(&mut self) {
        if let Out::File { path, file } = self {
            *file = open(path);
        }
    }

    fn write(&mut self, buf: &[u8]) {
        let res = match self {
            Out::Stdout => {
                let mut lock = std::io::stdout().lock();
                lock.write_all(buf).and_then(|()| lock.flush())
            }
            Out::File { file: Some(f), .. } => f.write_all(buf),
            Out::File { file: None, .. } => Ok(()),
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "writing the access log failed");
        }
    }
}

fn open(path: &std::path::Path) -> Option<File> {
    match OpenOptions::new().create(true).append(true).open(path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the access log");
            None
        }
    }
}
