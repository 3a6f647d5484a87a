//! Where access log lines go: per-thread lanes of finished lines, and one writer thread per
//! destination that empties them.
//!
//! The request path appends its finished line to a byte buffer, its thread's *lane*: a mutex
//! that only that thread and, every [`PAUSE`], the writer take, so it is almost never
//! contended and its cache line stays with the request thread. Handing over a batch of lines
//! is one swap of buffers under that lock; nothing is allocated or freed per line, and no line
//! crosses threads on its own. (A channel of boxed records cost an allocation freed on another
//! thread and several shared atomics per request, and formatting on the writer thread doubled
//! the work of touching each field.)
//!
//! Lines keep the order in which requests finished, across lanes: each line is marked, under
//! its lane's lock, with the monotonic instant it was finished, and the writer merges the
//! lanes by those marks. A round writes the lines finished before the round began; the few
//! finished while it takes the lanes wait for the next round, so a line can never be
//! overtaken by one finished after it on another thread.
//!
//! The writer never waits on the lanes, and while lines come the request path never wakes it:
//! a woken thread is a futex call per request. The writer sleeps [`PAUSE`], takes every lane's
//! lines and writes them; so a line is written at most one pause (plus the write) after its
//! answer ended. After a round that found nothing it sleeps up to [`IDLE_PAUSE`] instead, and
//! says so (`asleep`): the first line pushed then wakes it, so an idle rampart is not woken 200
//! times a second, and a line is still written within one pause. A lane holding its share of
//! [`QUEUE_BYTES`] drops new lines and counts them. So does the writer with every line that does
//! not reach the destination (a failed write, no file open), warning at most every
//! [`WARN_EVERY`]; a file that could not be opened is tried again [`REOPEN_AFTER`] later.
//!
//! Listeners that log to the same destination share its sink ([`Sinks`] hands out one per
//! destination and forgets it when the last listener using it is gone; the writer then writes
//! what is queued and ends). At exit, [`Sinks::close`] has every writer write what is queued.
//! A file is opened for append, and opened again after every reload (`reopen`), which is how
//! log rotation by rename works: rename, then SIGHUP or POST /reload. It is opened without
//! waiting, and only if it is a regular file (`crate::logfile`): the open runs where the
//! generation is built, on a runtime thread, and a FIFO nobody reads would hold it there.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::IntCounter;
use tokio::sync::watch;
use tokio::time::Instant;

use super::line::Wall;
use crate::config::file::LogTo;
use crate::throttle::{Throttle, WARN_EVERY};

/// Bytes of lines (about 25,000 lines) queued per destination, over all its lanes, before new
/// ones are dropped.
const QUEUE_BYTES: usize = 8 << 20;
/// The least a lane holds, however many lanes there are: a round's lines of a thread logging
/// 50,000 lines a second, with room to spare.
const LANE_MIN: usize = 512 << 10;
/// How long the writer sleeps between two rounds of taking the lanes' lines.
///
/// Why 25 ms: the writer's cost is much per round (a wake-up, and a `write` that updates the
/// file's times and takes ext4's locks and journal) besides the per-byte copy. Against 5 ms,
/// its CPU time halved (about 24 clock ticks to 11 over 8 s at 50,000 lines a second), and
/// that time is taken from the cores serving requests. A line still reaches the file within
/// 25 ms of its answer's end (Envoy's file log flushes every second by default).
const PAUSE: Duration = Duration::from_millis(25);
/// How long it sleeps, unless woken by a line, after a round that found none (it re-anchors
/// the lanes' wall time when it wakes).
const IDLE_PAUSE: Duration = Duration::from_secs(1);
/// A buffer grown beyond this by a burst is freed once written, so the memory goes back. Above
/// a usual round's lines (50,000 lines a second of about 350 bytes: 430 KiB a round).
const KEEP: usize = 2 << 20;
/// Most lanes per destination (threads beyond share them).
const MAX_LANES: usize = 64;
/// How long after a failed open the writer tries to open its file again (at its next round
/// with lines after that): logging resumes by itself once the cause is fixed.
const REOPEN_AFTER: Duration = Duration::from_secs(1);
/// Bytes a log file grows by between two requests to the kernel to drop its written pages
/// from the page cache ([`Dropping`]): at 50,000 lines a second, about four a second.
const DROP_EVERY: u64 = 4 << 20;

/// One destination: its lanes, and the writer thread that empties them.
#[derive(Debug)]
pub struct Sink {
    to: LogTo,
    lanes: Arc<Lanes>,
    writer: std::thread::Thread,
    dropped: IntCounter,
}

/// The sinks alive now, one per destination (shared across reloads).
#[derive(Debug)]
pub struct Sinks {
    open: Mutex<HashMap<LogTo, Weak<Sink>>>,
    dropped: IntCounter,
    lanes: usize,
    pause: Duration,
}

/// What a sink and its writer share.
#[derive(Debug)]
struct Lanes {
    lanes: Box<[Padded]>,
    /// Bytes a lane may hold.
    cap: usize,
    /// Bumped by every reload: the writer opens its file again.
    reopen: AtomicU64,
    /// The writer is to write what is queued and end.
    closing: AtomicBool,
    /// The writer sleeps until a line comes (or [`IDLE_PAUSE`]); the first push wakes it.
    asleep: AtomicBool,
    /// Set to `true` by the writer when it has ended.
    done: watch::Sender<bool>,
}

/// A lane on its own cache lines, so two threads' lanes never share one.
#[derive(Debug)]
#[repr(align(128))]
struct Padded(Mutex<Lane>);

/// The lines of the threads that use one lane, not yet taken by the writer.
#[derive(Debug)]
struct Lane {
    lines: Lines,
    /// The anchor for the lines' times; moved by the writer every round.
    wall: Wall,
    /// The writer has ended: lines are dropped.
    closed: bool,
}

/// Lines one after another in `buf`, each with its mark.
#[derive(Debug, Default)]
struct Lines {
    buf: Vec<u8>,
    marks: Vec<Mark>,
}

/// When a line was finished and where in its buffer it ends.
#[derive(Debug, Clone, Copy)]
struct Mark {
    at: Instant,
    end: usize,
}

/// The writer thread's side: the lanes, the destination, the lines taken from each lane and
/// not written yet, and the buffers it swaps in and merges into.
pub(super) struct Writer {
    lanes: Arc<Lanes>,
    out: Out,
    held: Vec<Lines>,
    spare: Lines,
    merged: Vec<u8>,
    /// Where each line of `merged` ends.
    merged_ends: Vec<usize>,
    seen: u64,
    lost: Lost,
}

/// Lines that did not reach the destination: counted, and warned about at most every
/// [`WARN_EVERY`].
struct Lost {
    dropped: IntCounter,
    warn: Throttle,
}

/// The destination of a writer thread.
enum Out {
    Stdout,
    Stderr,
    File {
        path: std::path::PathBuf,
        /// The open file, or why it could not be opened and when to try again.
        file: Result<(File, Dropping), Closed>,
        /// The last write stopped inside a line: the next one starts on a new line, so the torn
        /// line does not swallow the next.
        torn: bool,
    },
}

/// A log file that could not be opened.
#[derive(Debug)]
struct Closed {
    why: std::io::Error,
    /// When to try opening it again.
    retry: Instant,
}

/// A write that did not reach the destination whole: the bytes it did write, and why not
/// the rest.
#[derive(Debug)]
struct Failed {
    written: usize,
    error: std::io::Error,
}

/// What of an open log file the writer has asked the kernel to drop from its page cache.
///
/// rampart never reads its log back, and a page it wrote and left in the page cache stays
/// there until memory runs short, pushing out pages the service beside rampart reads. It also
/// costs the writer: new pages are taken from free memory, and on a virtual machine whose host
/// backs a guest's memory on first touch each of them is a fault on the host (here, writes to
/// a new file ran at 327 MB/s while writes into freed pages ran at 2.7 GB/s, `dd`). So every
/// [`DROP_EVERY`] bytes the writer calls `posix_fadvise(DONTNEED)`: on a range of dirty pages
/// the kernel starts their writeback, on clean ones it drops them. Each range is asked twice,
/// [`DROP_EVERY`] apart: the first call writes it back, the second drops it, so the pages are
/// freed and the next rounds' lines reuse them. The page holding the file's end is left in
/// place, so the next append does not read it back from disk. Measured with writes of 400 KiB
/// every 25 ms: half the CPU time per byte written, writeback included.
#[derive(Debug)]
struct Dropping {
    /// The file's length as the writer knows it: its length when opened plus what it wrote.
    len: u64,
    /// Where the next request starts: the end of the range asked the time before last.
    from: u64,
    /// The end of the range asked last time.
    asked: u64,
    /// A destination that is not a regular file (a pipe, a device) refused the advice once:
    /// no more requests.
    off: bool,
}

impl Dropping {
    /// The state of a file that is `len` bytes long when opened: its pages from before are
    /// not the writer's to drop.
    fn opened(len: u64) -> Self {
        Dropping {
            len,
            from: len,
            asked: len,
            off: false,
        }
    }

    /// Counts `wrote` more bytes; returns the range `(offset, length)` to advise now, if the
    /// file grew [`DROP_EVERY`] since the last request. `page`: the page size.
    fn wrote(&mut self, wrote: usize, page: u64) -> Option<(u64, u64)> {
        self.len += wrote as u64;
        if self.off || self.len - self.asked < DROP_EVERY {
            return None;
        }
        let end = self.len / page * page;
        let range = (self.from, end - self.from);
        self.from = self.asked;
        self.asked = end;
        Some(range)
    }

    /// Counts `wrote` more bytes written to `file`, and gives the kernel the advice that is
    /// due ([`Dropping::wrote`]); a refusal turns the advice off for this file.
    fn advise(&mut self, file: &File, wrote: usize) {
        let page = rustix::param::page_size() as u64;
        let Some((at, len)) = self.wrote(wrote, page) else {
            return;
        };
        let len = std::num::NonZeroU64::new(len);
        if len.is_some()
            && rustix::fs::fadvise(file, at, len, rustix::fs::Advice::DontNeed).is_err()
        {
            self.off = true;
        }
    }
}

thread_local! {
    /// This thread's lane number (`usize::MAX`: not chosen yet).
    static LANE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Lane numbers handed to threads, in the order they first log.
static NEXT_LANE: AtomicUsize = AtomicUsize::new(0);

/// The calling thread's lane number; every destination uses it modulo its lane count.
pub(super) fn lane_number() -> usize {
    LANE.try_with(|l| {
        let mut n = l.get();
        if n == usize::MAX {
            n = NEXT_LANE.fetch_add(1, Ordering::Relaxed);
            l.set(n);
        }
        n
    })
    .unwrap_or(0)
}

// === impl Sink ===

impl Sink {
    /// Where it writes.
    pub fn to(&self) -> &LogTo {
        &self.to
    }

    /// How many lanes it has (a power of two).
    pub(super) fn lanes(&self) -> usize {
        self.lanes.lanes.len()
    }

    /// Appends one line with `line` to lane `lane` (the one of the thread that started it;
    /// taken modulo the lane count), unless the lane is full (or the writer has ended): then
    /// the line is dropped and counted. Never waits for the writer beyond its swap of the
    /// lane's buffer.
    ///
    /// `line` is given the instant the line is finished, read under the lane's lock: that is
    /// what orders it among the other lanes' lines.
    pub(super) fn push(&self, lane: usize, line: impl FnOnce(&mut Vec<u8>, &mut Wall, Instant)) {
        let lanes = &self.lanes;
        // A power of two lanes: a mask, not a division.
        let mut lane = lanes.lanes[lane & (lanes.lanes.len() - 1)].0.lock();
        if lane.closed || lane.lines.buf.len() >= lanes.cap {
            drop(lane);
            self.dropped.inc();
            return;
        }
        let at = Instant::now();
        let Lane { lines, wall, .. } = &mut *lane;
        line(&mut lines.buf, wall, at);
        lines.marks.push(Mark {
            at,
            end: lines.buf.len(),
        });
        drop(lane);
        // A plain load while lines come; the writer set `asleep` before it last looked at this
        // lane (under its lock), so a line it did not see finds the flag set here.
        if lanes.asleep.load(Ordering::Relaxed) && lanes.asleep.swap(false, Ordering::Relaxed) {
            self.writer.unpark();
        }
    }

    /// A sink of `lanes` lanes of `cap` bytes whose writer is not running: the caller drives
    /// it (tests).
    #[cfg(test)]
    pub(super) fn detached(
        to: LogTo,
        lanes: usize,
        cap: usize,
        dropped: IntCounter,
    ) -> (Arc<Sink>, Writer) {
        let lanes = Arc::new(Lanes::new(lanes, cap));
        let writer = Writer::new(lanes.clone(), Out::new(to.clone()), dropped.clone());
        let sink = Sink {
            to,
            lanes,
            writer: std::thread::current(),
            dropped,
        };
        (Arc::new(sink), writer)
    }

    /// Whether the writer sleeps until a line comes.
    #[cfg(test)]
    pub(super) fn asleep(&self) -> bool {
        self.lanes.asleep.load(Ordering::SeqCst)
    }

    /// Tells the writer to write what is queued and end; `true` on the returned channel once
    /// it has.
    pub(super) fn close(&self) -> watch::Receiver<bool> {
        let done = self.lanes.done.subscribe();
        self.lanes.closing.store(true, Ordering::Release);
        self.writer.unpark();
        done
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        // The last listener using it is gone (and so is every request's entry): write what is
        // queued and end.
        drop(self.close());
    }
}

// === impl Sinks ===

impl Sinks {
    /// No sinks yet; drops are counted in `dropped`. One lane per core.
    pub fn new(dropped: IntCounter) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with(dropped, cores, PAUSE)
    }

    /// `lanes` lanes per destination, writers that sleep `pause` between rounds.
    pub(super) fn with(dropped: IntCounter, lanes: usize, pause: Duration) -> Self {
        Sinks {
            open: Mutex::new(HashMap::new()),
            dropped,
            lanes: lanes.clamp(1, MAX_LANES),
            pause,
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
        let lanes = Arc::new(Lanes::new(
            self.lanes,
            (QUEUE_BYTES / self.lanes).max(LANE_MIN),
        ));
        let writer = Writer::new(lanes.clone(), Out::new(to.clone()), self.dropped.clone());
        let pause = self.pause;
        let spawned = std::thread::Builder::new()
            .name("rampart-access-log".into())
            .spawn(move || {
                writer.run(|idle| std::thread::park_timeout(if idle { IDLE_PAUSE } else { pause }));
            });
        let thread = match spawned {
            Ok(h) => h.thread().clone(),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the access log writer; lines are dropped");
                return None;
            }
        };
        let sink = Arc::new(Sink {
            to: to.clone(),
            lanes,
            writer: thread,
            dropped: self.dropped.clone(),
        });
        open.insert(to.clone(), Arc::downgrade(&sink));
        Some(sink)
    }

    /// Asks every file sink to open its file again before its next write (after a reload).
    pub fn reopen(&self) {
        for s in self.open.lock().values().filter_map(Weak::upgrade) {
            s.lanes.reopen.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// At exit: has every writer write what is queued and end, waiting up to `within` for
    /// them. Lines finished after this are dropped (and counted).
    pub async fn close(&self, within: Duration) {
        let waits: Vec<_> = {
            let open = self.open.lock();
            open.values()
                .filter_map(Weak::upgrade)
                .map(|s| s.close())
                .collect()
        };
        let all = async {
            for mut done in waits {
                // An error: the writer is gone already.
                let _ = done.wait_for(|d| *d).await;
            }
        };
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!(waited = ?within, "the access log was not fully written before exit");
        }
    }
}

// === impl Lanes ===

impl Lanes {
    /// `n` lanes, rounded up to a power of two (see [`Sink::push`]).
    fn new(n: usize, cap: usize) -> Self {
        let n = n.max(1).next_power_of_two();
        let wall = Wall::now();
        let lanes = (0..n)
            .map(|_| {
                Padded(Mutex::new(Lane {
                    lines: Lines::default(),
                    wall: wall.clone(),
                    closed: false,
                }))
            })
            .collect();
        Lanes {
            lanes,
            cap,
            reopen: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            asleep: AtomicBool::new(false),
            done: watch::Sender::new(false),
        }
    }

    /// Whether any lane holds a line.
    fn any_lines(&self) -> bool {
        self.lanes
            .iter()
            .any(|l| !l.0.lock().lines.marks.is_empty())
    }
}

// === impl Lines ===

impl Lines {
    /// Appends `other`'s lines.
    fn append(&mut self, other: &Lines) {
        let base = self.buf.len();
        self.buf.extend_from_slice(&other.buf);
        self.marks.extend(other.marks.iter().map(|m| Mark {
            at: m.at,
            end: base + m.end,
        }));
    }

    /// Forgets the first `n` lines (written).
    fn consume(&mut self, n: usize) {
        if n == self.marks.len() {
            self.buf.clear();
            self.marks.clear();
            if self.buf.capacity() > KEEP {
                *self = Lines::default();
            }
        } else if n > 0 {
            let cut = self.marks[n - 1].end;
            self.buf.drain(..cut);
            self.marks.drain(..n);
            for m in &mut self.marks {
                m.end -= cut;
            }
        }
    }

    /// Where line `i` starts.
    fn start(&self, i: usize) -> usize {
        i.checked_sub(1).map_or(0, |p| self.marks[p].end)
    }
}

// === impl Writer ===

impl Writer {
    fn new(lanes: Arc<Lanes>, out: Out, dropped: IntCounter) -> Self {
        let seen = lanes.reopen.load(Ordering::Relaxed);
        Writer {
            held: lanes.lanes.iter().map(|_| Lines::default()).collect(),
            lanes,
            out,
            spare: Lines::default(),
            merged: Vec::new(),
            merged_ends: Vec::new(),
            seen,
            lost: Lost {
                dropped,
                warn: Throttle::new(WARN_EVERY),
            },
        }
    }

    /// `wait`s (at most [`PAUSE`] in production, less when woken to close), takes every
    /// lane's lines and writes them, and goes again, until told to close: then the lanes are
    /// closed as they are emptied, so no line is left behind, and `done` is set.
    ///
    /// `wait` is told whether the writer is idle (the last round found no line and holds
    /// none): then `asleep` is set for the duration, and a pushed line ends the wait by
    /// unparking this thread.
    pub(super) fn run(mut self, mut wait: impl FnMut(bool)) {
        let mut idle = false;
        loop {
            if idle {
                self.lanes.asleep.store(true, Ordering::SeqCst);
                // A line pushed before the flag was set did not wake us: look once more.
                if self.lanes.any_lines() {
                    self.lanes.asleep.store(false, Ordering::Relaxed);
                    idle = false;
                }
            }
            wait(idle);
            if idle {
                self.lanes.asleep.store(false, Ordering::Relaxed);
            }
            let last = self.lanes.closing.load(Ordering::Acquire);
            let found = self.round(&Wall::now(), Instant::now(), last);
            if last {
                break;
            }
            idle = !found;
        }
        self.lanes.done.send_replace(true);
    }

    /// One round, begun at `now`: takes each lane's lines under its lock (moving its time
    /// anchor to `wall`), then, outside every lock, writes the lines finished before `now` in
    /// the order they were finished. Lines finished since wait for the next round. `last`:
    /// the lanes are closed and everything is written. Returns whether it found lines (taken
    /// now, or held from before).
    pub(super) fn round(&mut self, wall: &Wall, now: Instant, last: bool) -> bool {
        let epoch = self.lanes.reopen.load(Ordering::Relaxed);
        if epoch != self.seen {
            self.seen = epoch;
            self.out.reopen(now);
        }
        let cut = (!last).then_some(now);
        let mut found = self.held.iter().any(|h| !h.marks.is_empty());
        for (lane, held) in self.lanes.lanes.iter().zip(&mut self.held) {
            let mut l = lane.0.lock();
            l.wall.rebase(wall);
            l.closed = last;
            if l.lines.marks.is_empty() {
                continue;
            }
            found = true;
            if held.marks.is_empty() {
                std::mem::swap(&mut l.lines, held);
            } else {
                std::mem::swap(&mut l.lines, &mut self.spare);
                drop(l);
                held.append(&self.spare);
                self.spare.consume(self.spare.marks.len());
            }
        }
        self.write_before(cut, now);
        found
    }

    /// Writes the held lines marked before `cut` (all of them: `None`), merged across lanes
    /// by their marks. The usual case, one lane with lines, is written straight from its
    /// buffer. Lines that do not reach the destination are counted lost.
    fn write_before(&mut self, cut: Option<Instant>, now: Instant) {
        let due: Vec<usize> = self
            .held
            .iter()
            .map(|h| h.marks.partition_point(|m| cut.is_none_or(|c| m.at < c)))
            .collect();
        let busy = due.iter().filter(|n| **n > 0).count();
        if busy == 1 {
            if let Some((h, &n)) = self.held.iter_mut().zip(&due).find(|(_, n)| **n > 0) {
                if let Err(f) = self.out.write(&h.buf[..h.marks[n - 1].end], now) {
                    let kept = h.marks[..n].partition_point(|m| m.end <= f.written);
                    self.lost.count((n - kept) as u64, &f.error, &self.out, now);
                }
                h.consume(n);
            }
            return;
        }
        if busy == 0 {
            return;
        }
        let mut next = vec![0; self.held.len()];
        self.merged.clear();
        self.merged_ends.clear();
        loop {
            let first = (0..self.held.len())
                .filter(|&i| next[i] < due[i])
                .min_by_key(|&i| self.held[i].marks[next[i]].at);
            let Some(i) = first else { break };
            let h = &self.held[i];
            self.merged
                .extend_from_slice(&h.buf[h.start(next[i])..h.marks[next[i]].end]);
            self.merged_ends.push(self.merged.len());
            next[i] += 1;
        }
        if let Err(f) = self.out.write(&self.merged, now) {
            let kept = self.merged_ends.partition_point(|end| *end <= f.written);
            let lost = self.merged_ends.len() - kept;
            self.lost.count(lost as u64, &f.error, &self.out, now);
        }
        if self.merged.capacity() > KEEP {
            self.merged = Vec::new();
            self.merged_ends = Vec::new();
        }
        for (h, n) in self.held.iter_mut().zip(due) {
            h.consume(n);
        }
    }
}

// === impl Lost ===

impl Lost {
    /// Counts `lines` that did not reach `out` because of `error`, and warns when a warning
    /// is due (the first, then at most every [`WARN_EVERY`], with the lines lost since).
    fn count(&mut self, lines: u64, error: &std::io::Error, out: &Out, now: Instant) {
        self.dropped.inc_by(lines);
        if let Some(since) = self.warn.note(lines, now) {
            tracing::warn!(
                to = %out, error = %error, lines_lost_since_last_warning = since,
                "writing the access log failed; its lines are lost (counted in rampart_access_log_dropped_total)"
            );
        }
    }
}

// === impl Out ===

impl Out {
    fn new(to: LogTo) -> Self {
        match to {
            LogTo::Stdout => Out::Stdout,
            LogTo::Stderr => Out::Stderr,
            LogTo::File(path) => {
                let file = open(&path, Instant::now());
                if let Err(c) = &file {
                    tracing::warn!(path = %path.display(), error = %c.why, "cannot open the access log; trying again as lines come");
                }
                Out::File {
                    path,
                    file,
                    torn: false,
                }
            }
        }
    }

    /// Opens the file again (after a reload: a renamed file is let go).
    fn reopen(&mut self, now: Instant) {
        if let Out::File { path, file, torn } = self {
            *file = open(path, now);
            *torn = false;
            if let Err(c) = file {
                tracing::warn!(path = %path.display(), error = %c.why, "cannot open the access log again; trying again as lines come");
            }
        }
    }

    /// Writes `buf` (whole lines) at `now`; a file that could not be opened is tried again
    /// once [`REOPEN_AFTER`] has passed. Says how much was written when not all of it was.
    fn write(&mut self, buf: &[u8], now: Instant) -> Result<(), Failed> {
        match self {
            Out::Stdout => write_all(&mut std::io::stdout().lock(), buf),
            Out::Stderr => write_all(&mut std::io::stderr().lock(), buf),
            Out::File { path, file, torn } => {
                if let Err(closed) = file {
                    if now < closed.retry {
                        return Err(Failed {
                            written: 0,
                            error: std::io::Error::new(closed.why.kind(), closed.why.to_string()),
                        });
                    }
                    *file = open(path, now);
                }
                let (f, dropping) = match file {
                    Ok(open) => open,
                    Err(closed) => {
                        return Err(Failed {
                            written: 0,
                            error: std::io::Error::new(closed.why.kind(), closed.why.to_string()),
                        })
                    }
                };
                if *torn {
                    write_all(f, b"\n")?;
                    dropping.advise(f, 1);
                    *torn = false;
                }
                let res = write_all(f, buf);
                let written = res.as_ref().map_or_else(|e| e.written, |()| buf.len());
                *torn = res.is_err() && written > 0 && buf[written - 1] != b'\n';
                dropping.advise(f, written);
                res
            }
        }
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Out::Stdout => f.write_str("stdout"),
            Out::Stderr => f.write_str("stderr"),
            Out::File { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// `write_all` that says how many bytes it wrote when it fails.
fn write_all(w: &mut impl Write, buf: &[u8]) -> Result<(), Failed> {
    let mut written = 0;
    while written < buf.len() {
        match w.write(&buf[written..]) {
            Ok(0) => {
                return Err(Failed {
                    written,
                    error: std::io::ErrorKind::WriteZero.into(),
                })
            }
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(Failed { written, error }),
        }
    }
    w.flush().map_err(|error| Failed { written, error })
}

/// Opens the log file at `path` to append to, never waiting: a FIFO or a device in its place
/// is refused (`crate::logfile`). A failure says when to try again.
fn open(path: &std::path::Path, now: Instant) -> Result<(File, Dropping), Closed> {
    match crate::logfile::open(path, crate::logfile::Use::Append, true) {
        Ok(f) => {
            let len = f.metadata().map_or(0, |m| m.len());
            Ok((f, Dropping::opened(len)))
        }
        Err(why) => Err(Closed {
            why,
            retry: now + REOPEN_AFTER,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    /// The open file `out` writes to, and what the writer asked of it.
    fn open_file(out: &Out) -> &(File, Dropping) {
        match out {
            Out::File { file: Ok(f), .. } => f,
            _ => panic!("the destination is an open file"),
        }
    }

    /// Every page the writer wrote is advised twice (writeback, then drop), in order and
    /// without gaps; the file's length before it opened it, and the page holding the end, never.
    #[test]
    fn each_written_page_is_asked_twice_and_the_last_page_never() {
        let before = 10_000;
        let mut d = Dropping::opened(before);
        let mut asked = vec![];
        let mut written = before;
        for _ in 0..100 {
            // Rounds of an odd size, so the end seldom falls on a page boundary.
            let n = 400 * 1024 + 333;
            written += n as u64;
            if let Some(r) = d.wrote(n, PAGE) {
                asked.push(r);
            }
        }
        assert!(asked.len() >= 8, "{asked:?}");
        assert_eq!(asked[0].0, before, "starts where the writer began");
        let mut covered = std::collections::BTreeMap::new();
        for (at, len) in &asked {
            assert_eq!((at + len) % PAGE, 0, "a range ends on a page boundary");
            assert!(
                at + len <= written / PAGE * PAGE,
                "the page holding the end is left"
            );
            for p in at / PAGE..(at + len).div_ceil(PAGE) {
                *covered.entry(p).or_insert(0) += 1;
            }
        }
        let last_end = asked.last().map(|(a, l)| a + l).unwrap();
        let second_last_end = asked[asked.len() - 2].0 + asked[asked.len() - 2].1;
        for (p, n) in covered {
            // Pages of the last range were asked once so far; every page before, twice.
            let want = if p * PAGE >= second_last_end { 1 } else { 2 };
            assert_eq!(n, want, "page {p} (ends {second_last_end}, {last_end})");
        }
        // Between two requests the file grew DROP_EVERY at least.
        for w in asked.windows(2) {
            assert!(w[1].0 + w[1].1 - (w[0].0 + w[0].1) >= DROP_EVERY - PAGE);
        }
    }

    #[test]
    fn a_destination_that_refused_the_advice_is_not_asked_again() {
        let mut d = Dropping::opened(0);
        assert!(d.wrote(DROP_EVERY as usize, PAGE).is_some());
        d.off = true;
        assert_eq!(d.wrote(2 * DROP_EVERY as usize, PAGE), None);
    }

    /// Through a real file: lines written past several requests to drop pages are all there,
    /// in order, and the file (a regular one) kept taking the advice.
    #[test]
    fn a_log_file_dropped_from_the_page_cache_keeps_every_line() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.jsonl");
        std::fs::write(&path, b"from before\n").expect("seed");
        let mut out = Out::new(LogTo::File(path.clone()));
        let mut want = b"from before\n".to_vec();
        let mut round = Vec::new();
        for r in 0..60 {
            round.clear();
            for i in 0..1000 {
                writeln!(
                    round,
                    "{{\"round\":{r},\"line\":{i},\"pad\":\"{:0>200}\"}}",
                    0
                )
                .expect("format");
            }
            out.write(&round, Instant::now()).expect("written");
            want.extend_from_slice(&round);
        }
        let (_, dropping) = open_file(&out);
        assert!(!dropping.off, "a regular file takes the advice");
        assert!(dropping.asked > 2 * DROP_EVERY, "asked {}", dropping.asked);
        assert_eq!(dropping.len, want.len() as u64);
        assert_eq!(std::fs::read(&path).expect("read back"), want);
    }

    /// The pages asked twice really leave the page cache: with each round's pages written back
    /// before the next (`sync_data`, standing in for the kernel's writeback between two
    /// requests), a file of 5 × [`DROP_EVERY`] keeps at most its last two requests' worth
    /// cached, as `fincore` (Debian package `util-linux-extra`) counts. In the repository's
    /// directory, not /tmp: a tmpfs keeps every page.
    #[test]
    fn the_log_s_written_pages_leave_the_page_cache() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("temp dir");
        let path = dir.path().join("access.jsonl");
        let mut out = Out::new(LogTo::File(path.clone()));
        let chunk = vec![b'x'; 256 << 10];
        let rounds = 5 * DROP_EVERY / chunk.len() as u64;
        for _ in 0..rounds {
            out.write(&chunk, Instant::now()).expect("written");
            open_file(&out).0.sync_data().expect("fdatasync");
        }
        let page = rustix::param::page_size() as u64;
        let cached = std::process::Command::new("fincore")
            .args(["--bytes", "--noheadings", "--output", "RES"])
            .arg(&path)
            .output()
            .expect("fincore (Debian package util-linux-extra) must be installed");
        assert!(cached.status.success(), "fincore failed: {cached:?}");
        let cached: u64 = String::from_utf8_lossy(&cached.stdout)
            .trim()
            .parse()
            .expect("fincore prints a byte count");
        let len = std::fs::metadata(&path).expect("metadata").len();
        assert_eq!(len, rounds * chunk.len() as u64);
        assert!(
            cached <= 2 * DROP_EVERY + page,
            "{cached} bytes of the {len}-byte log still cached"
        );
    }

    /// A FIFO (nobody reading it) or a device put where the log file was is not opened, and
    /// the open returns at once: it runs on a runtime thread, which a FIFO would hold until a
    /// reader came.
    #[test]
    fn a_fifo_or_a_device_in_the_log_s_place_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = crate::logfile::tests::fifo(dir.path(), "access.fifo");
        for path in [fifo, "/dev/full".into()] {
            let (tx, rx) = std::sync::mpsc::channel();
            let p = path.clone();
            std::thread::spawn(move || {
                let out = Out::new(LogTo::File(p));
                let _ = tx.send(matches!(out, Out::File { file: Err(_), .. }));
            });
            let refused = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("opening the log must never wait");
            assert!(refused, "{} must not be opened", path.display());
        }
    }

    /// A pipe refuses `posix_fadvise` (ESPIPE): the writer stops asking and keeps writing.
    #[test]
    fn a_pipe_refuses_the_advice_once_and_still_gets_every_byte() {
        let (mut reader, writer) = std::io::pipe().expect("pipe");
        let drain = std::thread::spawn(move || {
            let mut all = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut all).expect("drain");
            all
        });
        let file = File::from(std::os::fd::OwnedFd::from(writer));
        let mut out = Out::File {
            path: "pipe".into(),
            file: Ok((file, Dropping::opened(0))),
            torn: false,
        };
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..2 * (DROP_EVERY >> 20) + 1 {
            out.write(&chunk, Instant::now()).expect("written");
        }
        let (_, dropping) = open_file(&out);
        assert!(dropping.off, "the pipe refused the advice");
        drop(out);
        let got = drain.join().expect("drain thread");
        assert_eq!(got.len() as u64, (2 * (DROP_EVERY >> 20) + 1) << 20);
    }

    // --- lines that do not reach the destination ---------------------------------------------

    /// A sink whose writer writes to `out`, driven by the test; its drops counted in the
    /// returned counter.
    fn writing_to(out: Out) -> (Sink, Writer, IntCounter) {
        let dropped = IntCounter::new("d", "d").expect("counter");
        let lanes = Arc::new(Lanes::new(1, 1 << 20));
        let writer = Writer::new(lanes.clone(), out, dropped.clone());
        let sink = Sink {
            to: LogTo::Stdout,
            lanes,
            writer: std::thread::current(),
            dropped: dropped.clone(),
        };
        (sink, writer, dropped)
    }

    /// Pushes `n` lines of `len` bytes each (newline included), numbered from `first`.
    fn push(sink: &Sink, first: usize, n: usize, len: usize) {
        for i in first..first + n {
            sink.push(0, |buf, _, _| {
                let start = buf.len();
                write!(buf, "{i:08}").expect("format");
                buf.resize(start + len - 1, b'.');
                buf.push(b'\n');
            });
        }
    }

    /// One round at `now`, writing every line pushed before it.
    fn round_at(writer: &mut Writer, now: Instant) {
        writer.round(&Wall::now(), now, false);
    }

    /// A pipe whose writing end never waits (a full pipe: `EAGAIN`), as a log file.
    fn pipe_out() -> (std::io::PipeReader, Out) {
        let (reader, writer) = std::io::pipe().expect("pipe");
        let file = File::from(std::os::fd::OwnedFd::from(writer));
        let flags = rustix::fs::fcntl_getfl(&file).expect("flags");
        rustix::fs::fcntl_setfl(&file, flags | rustix::fs::OFlags::NONBLOCK).expect("nonblock");
        rustix::fs::fcntl_setfl(&reader, rustix::fs::OFlags::NONBLOCK).expect("nonblock");
        let out = Out::File {
            path: "pipe".into(),
            file: Ok((file, Dropping::opened(0))),
            torn: false,
        };
        (reader, out)
    }

    /// Everything the pipe holds now.
    fn drain(reader: &mut std::io::PipeReader) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0; 1 << 16];
        loop {
            match std::io::Read::read(reader, &mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return got,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// A write that stops inside a batch (the pipe filled) loses the lines it did not finish,
    /// the torn one included, and counts exactly those; the next batch starts on a line of its
    /// own, so the torn line swallows no other.
    #[test]
    fn a_write_that_stops_mid_batch_counts_the_lines_it_did_not_finish() {
        let (mut reader, out) = pipe_out();
        let (sink, mut writer, dropped) = writing_to(out);
        // 300 lines of 1000 bytes: more than a pipe holds (64 KiB by default).
        push(&sink, 0, 300, 1000);
        round_at(&mut writer, Instant::now());
        let got = drain(&mut reader);
        let whole = got.iter().filter(|b| **b == b'\n').count();
        assert!(whole > 0 && whole < 300, "{whole} whole lines went through");
        assert_eq!(
            dropped.get() as usize,
            300 - whole,
            "every line not written is counted"
        );
        assert!(!got.ends_with(b"\n"), "the pipe took part of a line");
        push(&sink, 300, 2, 1000);
        round_at(&mut writer, Instant::now());
        let next = drain(&mut reader);
        assert_eq!(next.len(), 1 + 2 * 1000, "a newline, then the two lines");
        assert!(next.starts_with(b"\n00000300"), "{:?}", &next[..12]);
        assert_eq!(dropped.get() as usize, 300 - whole);
    }

    /// While the log file cannot be opened, every line is counted lost, and the file is tried
    /// again at the first round [`REOPEN_AFTER`] after the failure: logging resumes by itself.
    #[test]
    fn lines_with_no_file_open_are_counted_and_the_file_is_opened_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sub = dir.path().join("gone");
        let path = sub.join("access.jsonl");
        let (sink, mut writer, dropped) = writing_to(Out::new(LogTo::File(path.clone())));
        push(&sink, 0, 3, 100);
        let t0 = Instant::now();
        round_at(&mut writer, t0);
        assert_eq!(dropped.get(), 3, "no file: every line is lost and counted");
        std::fs::create_dir(&sub).expect("mkdir");
        push(&sink, 3, 2, 100);
        round_at(&mut writer, t0 + REOPEN_AFTER / 2);
        assert_eq!(dropped.get(), 5, "not tried again before the pause is over");
        assert!(!path.exists());
        push(&sink, 5, 2, 100);
        round_at(&mut writer, t0 + REOPEN_AFTER);
        assert_eq!(dropped.get(), 5, "opened again: nothing lost");
        let text = std::fs::read_to_string(&path).expect("the log was opened again");
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with("00000005"), "{text}");
    }

    /// A destination that fails every round warns once, then once per [`WARN_EVERY`] with the
    /// lines lost since; every lost line is counted.
    #[test]
    fn a_failing_destination_warns_once_per_period_and_counts_every_line() {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (mut reader, out) = pipe_out();
        let (sink, mut writer, dropped) = writing_to(out);
        let captured = Captured::default();
        let logs = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || logs.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            // Fill the pipe, then 40 rounds 25 ms apart that each lose their 10 lines.
            push(&sink, 0, 100, 1000);
            let t0 = Instant::now();
            round_at(&mut writer, t0);
            for r in 1..=40u32 {
                push(&sink, 0, 10, 1000);
                round_at(&mut writer, t0 + PAUSE * r);
            }
            push(&sink, 0, 10, 1000);
            round_at(&mut writer, t0 + WARN_EVERY);
        });
        let text = String::from_utf8(captured.0.lock().clone()).expect("utf-8");
        let warnings: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("writing the access log failed"))
            .collect();
        assert_eq!(warnings.len(), 2, "{text}");
        let whole = drain(&mut reader).iter().filter(|b| **b == b'\n').count();
        assert_eq!(dropped.get() as usize, 100 + 400 + 10 - whole);
        assert!(
            warnings[1].contains("lines_lost_since_last_warning=410"),
            "{}",
            warnings[1]
        );
    }
}
