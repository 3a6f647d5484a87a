//! rampart's own log (SPEC §1: tracing-subscriber to stdout, text or JSON), written by a thread
//! of its own, so that no runtime thread ever waits on stdout.
//!
//! Why: stdout is a pipe to whatever collects the container's logs, and a pipe fills when its
//! reader stalls. A line written in place then blocks the thread that logs it (a worker, the
//! main thread that also runs the admin listener, reloads and signals) until the reader reads
//! again: requests, `/healthz` and SIGTERM hang with it (SPEC §12: writing never blocks a
//! request). So a line is handed to a bounded queue that one thread writes to stdout
//! (tracing-appender's non-blocking writer, lossy): a full queue drops the line instead of
//! waiting, and counts it (`rampart_log_lines_dropped_total`, see [`dropped_lines`]). At exit
//! the queued lines are written, for at most [`FLUSH_WITHIN`]: a stdout nobody reads must not
//! keep the process from exiting.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

use crate::cli::LogFormat;

/// Lines queued for stdout before new ones are dropped (a few MiB at most).
pub const QUEUE_LINES: usize = 16 * 1024;
/// The longest exit waits for the queued lines to be written.
pub const FLUSH_WITHIN: Duration = Duration::from_secs(2);

/// The count of lines the queue dropped, once [`init`] has run (the log is the process's).
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// The process's log, from [`init`]: keep it for the life of the program; dropping it writes
/// the lines still queued, waiting [`FLUSH_WITHIN`] at most.
#[derive(Debug)]
pub struct Logging {
    guard: Option<WorkerGuard>,
}

/// Sets the process's log up: to stdout through the writer thread, the level from `RUST_LOG`
/// (default `info`), JSON unless `format` says text or stdout is a terminal.
pub fn init(format: Option<LogFormat>) -> Logging {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("rampart-log")
        .finish(std::io::stdout());
    let _ = DROPPED.set(writer.error_counter());
    let (filter, bad) = filter_from(std::env::var_os("RUST_LOG"));
    if let Some(why) = bad {
        eprintln!("rampart: {why}; logging at the default level, info");
    }
    let terminal = std::io::stdout().is_terminal();
    let json = match format {
        Some(f) => f == LogFormat::Json,
        None => !terminal,
    };
    // Colour codes are for people at a terminal; in a pipe or a file they are noise that
    // log collectors store verbatim.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal)
        .with_writer(writer);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Logging { guard: Some(guard) }
}

/// The filter `RUST_LOG` (`value`) asks for: `info` when it is unset or empty (as an env file's
/// `RUST_LOG=` sets it; taken as it is, it would silence every line), and also, with a reason
/// to warn about naming it, when it is not a filter.
fn filter_from(
    value: Option<std::ffi::OsString>,
) -> (tracing_subscriber::EnvFilter, Option<String>) {
    let default = || tracing_subscriber::EnvFilter::new("info");
    let Some(value) = value else {
        return (default(), None);
    };
    let Some(text) = value.to_str() else {
        let why = format!("RUST_LOG={:?} is not UTF-8", value.to_string_lossy());
        return (default(), Some(why));
    };
    if text.trim().is_empty() {
        return (default(), None);
    }
    match tracing_subscriber::EnvFilter::try_new(text) {
        Ok(f) => (f, None),
        Err(e) => (
            default(),
            Some(format!("RUST_LOG={text:?} is not a log filter ({e})")),
        ),
    }
}

/// Lines of the process's log dropped so far because the queue to stdout was full (0 before
/// [`init`], and in-process uses that never call it).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

// === impl Logging ===

impl Drop for Logging {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            flush_within(guard, FLUSH_WITHIN);
        }
    }
}

/// Drops `guard` (which writes what is queued) on a thread of its own, and waits for it at
/// most `within`: tracing-appender bounds its own wait, but not a message it prints to stdout
/// when its queue is full, which a stdout nobody reads would block for ever.
fn flush_within<G: Send + 'static>(guard: G, within: Duration) -> bool {
    let (done, wait) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("rampart-log-flush".into())
        .spawn(move || {
            drop(guard);
            let _ = done.send(());
        });
    spawned.is_ok() && wait.recv_timeout(within).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guard whose drop never returns (a flush stuck on a full stdout) holds the caller for
    /// `within`, no longer.
    #[test]
    fn an_empty_or_bad_rust_log_means_info() {
        let level = |v: Option<&str>| {
            let (f, bad) = filter_from(v.map(Into::into));
            (f.max_level_hint(), bad.is_some())
        };
        let info = Some(tracing::level_filters::LevelFilter::INFO);
        assert_eq!(level(None), (info, false));
        assert_eq!(level(Some("")), (info, false));
        assert_eq!(level(Some("  ")), (info, false));
        assert_eq!(level(Some("bogus=[")), (info, true));
        assert_eq!(
            level(Some("debug")),
            (Some(tracing::level_filters::LevelFilter::DEBUG), false)
        );
    }

    #[test]
    fn a_flush_stuck_on_stdout_is_given_up_after_its_bound() {
        struct Stuck;
        impl Drop for Stuck {
            fn drop(&mut self) {
                std::thread::park();
            }
        }
        let began = std::time::SystemTime::now();
        assert!(!flush_within(Stuck, Duration::from_millis(200)));
        let took = began.elapsed().unwrap_or_default();
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(
            flush_within((), Duration::from_secs(5)),
            "a flush that ends is waited for"
        );
    }
}
