//! Worker threads: one single-threaded runtime per worker, each accepting and serving its own
//! connections (thread per core).
//!
//! Why not tokio's multi-threaded scheduler: it lets idle workers steal tasks, which costs every
//! task shared run queues, atomics and cross-thread wake-ups, and moves a connection's task
//! between cores (and caches). A proxy's connections are independent and short of work each;
//! serving each one on the worker that accepted it, start to end, is what nginx and HAProxy do.
//! Every worker has a listening socket of its own on each proxy address (`SO_REUSEPORT`, see
//! `proxy::listener::bind_each`); the kernel spreads new connections over them by a hash, and
//! a worker that has more than its share hands new ones to the least busy (`proxy::balance`).
//!
//! The worker that starts rampart (the main thread) is worker 0 and also runs everything else:
//! the admin listener, reloads, health checks, exporters. Workers 1.. are threads spawned here.
//! Upstream connections stay with the worker that opened them (see `proxy::pool`), so a
//! request never waits on another worker's I/O driver.

use std::cell::Cell;
use std::sync::OnceLock;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// How many workers this process runs; set once when they start.
static COUNT: OnceLock<usize> = OnceLock::new();

/// The index of the worker running on this thread (0 on any thread that is not a worker).
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// How many workers this process runs (1 until [`Workers::start`] ran).
pub fn count() -> usize {
    COUNT.get().copied().unwrap_or(1)
}

/// The runtimes that serve connections.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    /// Dropping these ends the extra workers' runtimes.
    _stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Only the runtime of the calling task (in-process tests, one worker).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn here() -> Workers {
        Workers {
            handles: vec![Handle::current()],
            _stops: Vec::new(),
        }
    }

    /// The calling runtime as worker 0 and `n - 1` more threads, each running a
    /// single-threaded runtime named `rampart-wrk-I` (15 bytes at most: the kernel cuts longer thread names). Call once, from the main runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = n.max(1);
        let _ = COUNT.set(n);
        let mut handles = vec![Handle::current()];
        let mut stops = Vec::with_capacity(n - 1);
        for i in 1..n {
            let (stop, stopped) = oneshot::channel::<()>();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("rampart-wrk-{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(i));
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match rt {
                        Ok(rt) => {
                            let _ = tx.send(Ok(rt.handle().clone()));
                            rt.block_on(async move {
                                let _ = stopped.await;
                            });
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })?;
            let handle = rx
                .recv()
                .map_err(|_| std::io::Error::other("a worker thread ended at start"))??;
            handles.push(handle);
            stops.push(stop);
        }
        Ok(Workers {
            handles,
            _stops: stops,
        })
    }

    /// The runtimes, worker 0 first.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn extra_workers_run_tasks_on_their_own_threads() {
        let w = Workers::start(3).expect("workers");
        assert_eq!(w.handles().len(), 3);
        assert_eq!(count(), 3);
        for (i, h) in w.handles().iter().enumerate().skip(1) {
            let (idx, name) = h
                .spawn(async { (index(), std::thread::current().name().map(String::from)) })
                .await
                .expect("task");
            assert_eq!(idx, i);
            assert_eq!(name.as_deref(), Some(format!("rampart-wrk-{i}").as_str()));
        }
        assert_eq!(index(), 0);
    }
}
