//! The metrics every request updates, kept in one cell per worker and summed when scraped.
//!
//! Why: a prometheus `IntCounter` or `Histogram` is one set of atomics shared by every thread.
//! With two workers, each request's read-modify-writes pull those cache lines from the other
//! core (a histogram observation alone takes about six), and the lines bounce between cores on
//! every request. Here each worker adds to cells on cache lines of its own, so an update is an
//! uncontended atomic add, and only a scrape reads every cell. The families render exactly as
//! the prometheus types did (same names, labels, buckets), through the same registry.
//!
//! Consistency: a scrape reads each cell once. A histogram's count is the sum of its bucket
//! cells, so its buckets, `+Inf` and `_count` always agree; its `_sum` may miss an observation
//! being made while it is read, and shows it at the next scrape.
//!
//! A thread that is not a worker (or a worker beyond the cells made, in tests) adds to cell 0:
//! still exact, since every add is atomic, only shared.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::core::{Collector, Desc};
use prometheus::proto;

/// Upper bounds of the latency buckets, microseconds: 1 ms to 30 s.
const LATENCY_BOUNDS_US: [u64; BOUNDS] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000,
];

/// How many finite buckets a histogram has.
const BOUNDS: usize = 14;

/// A value on cache lines of its own (two: Intel's prefetcher fetches lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// One cell per worker this process runs.
fn cells<T: Default>() -> Box<[T]> {
    (0..crate::workers::count().max(1))
        .map(|_| T::default())
        .collect()
}

/// The cell of the worker running on this thread.
fn mine<T>(cells: &[T]) -> &T {
    cells.get(crate::workers::index()).unwrap_or(&cells[0])
}

// === Counter ===

/// A counter: one cell per worker.
#[derive(Debug)]
pub struct Counter {
    cells: Box<[Padded<AtomicU64>]>,
}

impl Default for Counter {
    fn default() -> Self {
        Counter { cells: cells() }
    }
}

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        mine(&self.cells).0.fetch_add(1, Relaxed);
    }

    /// The sum of the cells.
    pub fn get(&self) -> u64 {
        self.cells.iter().map(|c| c.0.load(Relaxed)).sum()
    }
}

// === Gauge ===

/// A gauge that counts things held (requests in flight): one cell per worker, each in an
/// allocation of its own, so the [`Held`] a request keeps counts references on its worker's
/// cell only.
#[derive(Debug)]
pub struct Gauge {
    cells: Box<[Arc<Padded<AtomicI64>>]>,
}

/// One unit of a [`Gauge`], given back (to the cell it was taken from) when dropped.
#[derive(Debug)]
pub struct Held(Arc<Padded<AtomicI64>>);

impl Default for Gauge {
    fn default() -> Self {
        Gauge { cells: cells() }
    }
}

impl Gauge {
    /// Adds one until the returned guard is dropped.
    pub fn hold(&self) -> Held {
        let cell = mine(&self.cells).clone();
        cell.0.fetch_add(1, Relaxed);
        Held(cell)
    }

    /// The sum of the cells.
    pub fn get(&self) -> i64 {
        self.cells.iter().map(|c| c.0.load(Relaxed)).sum()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Relaxed);
    }
}

// === Histogram ===

/// A latency histogram over [`LATENCY_BOUNDS_US`]: one cell per worker.
#[derive(Debug)]
pub struct Histogram {
    cells: Box<[Padded<HistCell>]>,
}

/// One worker's observations: how many fell in each bucket (not cumulative; the last is
/// beyond every bound) and their sum. 16 words: two cache lines.
#[derive(Debug, Default)]
struct HistCell {
    counts: [AtomicU64; BOUNDS + 1],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { cells: cells() }
    }
}

/// A histogram's figures, summed over its cells.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Observations at or below each bound, cumulative, as exported.
    pub cumulative: [u64; BOUNDS],
    /// All observations.
    pub count: u64,
    /// Their sum, seconds.
    pub sum: f64,
}

impl Histogram {
    /// Records one observation of `d`.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = bucket_of(ns);
        let cell = &mine(&self.cells).0;
        cell.counts[i].fetch_add(1, Relaxed);
        cell.sum_ns.fetch_add(ns, Relaxed);
    }

    /// The figures now.
    pub fn snapshot(&self) -> Snapshot {
        let mut counts = [0u64; BOUNDS + 1];
        let mut sum_ns = 0u64;
        for c in self.cells.iter() {
            for (n, a) in counts.iter_mut().zip(&c.0.counts) {
                *n += a.load(Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(c.0.sum_ns.load(Relaxed));
        }
        let mut cumulative = [0u64; BOUNDS];
        let mut total = 0;
        for (i, n) in counts.iter().enumerate() {
            total += n;
            if i < BOUNDS {
                cumulative[i] = total;
            }
        }
        Snapshot {
            cumulative,
            count: total,
            sum: sum_ns as f64 / 1e9,
        }
    }
}

/// The bucket of an observation of `ns` nanoseconds: the first whose bound it does not exceed
/// (Prometheus' `le`), else the one beyond every bound. Latencies are mostly small, so the
/// walk is short.
fn bucket_of(ns: u64) -> usize {
    LATENCY_BOUNDS_US
        .iter()
        .position(|&us| ns <= us * 1000)
        .unwrap_or(BOUNDS)
}

/// The upper bound of bucket `i`, seconds, as exported (`le`).
fn upper_bound(i: usize) -> f64 {
    LATENCY_BOUNDS_US[i] as f64 / 1e6
}

// === Family ===

/// What a [`Family`] holds per label set, and how it is exported.
pub trait Series: Default + Send + Sync + 'static {
    /// The exported type.
    const KIND: proto::MetricType;
    /// Fills `m` with the value(s) now.
    fn fill(&self, m: &mut proto::Metric);
}

impl Series for Counter {
    const KIND: proto::MetricType = proto::MetricType::COUNTER;
    fn fill(&self, m: &mut proto::Metric) {
        let mut c = proto::Counter::default();
        c.set_value(self.get() as f64);
        m.set_counter(c);
    }
}

impl Series for Gauge {
    const KIND: proto::MetricType = proto::MetricType::GAUGE;
    fn fill(&self, m: &mut proto::Metric) {
        let mut g = proto::Gauge::default();
        g.set_value(self.get() as f64);
        m.set_gauge(g);
    }
}

impl Series for Histogram {
    const KIND: proto::MetricType = proto::MetricType::HISTOGRAM;
    fn fill(&self, m: &mut proto::Metric) {
        let s = self.snapshot();
        let mut h = proto::Histogram::default();
        h.set_sample_count(s.count);
        h.set_sample_sum(s.sum);
        let buckets = s
            .cumulative
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut b = proto::Bucket::default();
                b.set_cumulative_count(n);
                b.set_upper_bound(upper_bound(i));
                b
            })
            .collect();
        h.set_bucket(buckets);
        m.set_histogram(h);
    }
}

/// A metric family of per-worker series, one per label set; registered in a prometheus
/// `Registry` as a collector (clones share the series).
#[derive(Debug)]
pub struct Family<S> {
    inner: Arc<FamilyInner<S>>,
}

/// A series' label values, in the order of the family's label names.
type Values = Box<[Box<str>]>;

#[derive(Debug)]
struct FamilyInner<S> {
    desc: Desc,
    /// Label names in the order values are given.
    names: Vec<String>,
    /// The places of `names` in name order (the order label pairs are exported in).
    sorted: Vec<usize>,
    series: Mutex<HashMap<Values, Arc<S>>>,
}

impl<S> Clone for Family<S> {
    fn clone(&self) -> Self {
        Family {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Series> Family<S> {
    /// A family named `name` with label names `labels`.
    ///
    /// # Errors
    /// A name or label name prometheus refuses.
    pub fn new(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Self> {
        let names: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        let desc = Desc::new(name.into(), help.into(), names.clone(), HashMap::new())?;
        let mut sorted: Vec<usize> = (0..names.len()).collect();
        sorted.sort_by(|a, b| names[*a].cmp(&names[*b]));
        Ok(Family {
            inner: Arc::new(FamilyInner {
                desc,
                names,
                sorted,
                series: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The series of the label values `values` (in the order the label names were given),
    /// made on first sight. Not for the request path: callers keep the handle.
    ///
    /// # Panics
    /// When `values` has not one value per label name (a bug at the call site).
    pub fn with_label_values(&self, values: &[&str]) -> Arc<S> {
        assert_eq!(values.len(), self.inner.names.len(), "one value per label");
        let key: Values = values.iter().map(|v| Box::from(*v)).collect();
        self.inner.series.lock().entry(key).or_default().clone()
    }

    /// Removes the series whose labels (name to value) `keep` refuses: those of what a reload
    /// took away. A handle still held on a removed series counts on, unexported.
    pub fn retain(&self, keep: impl Fn(&HashMap<&str, &str>) -> bool) {
        let names = &self.inner.names;
        self.inner.series.lock().retain(|values, _| {
            let labels = names
                .iter()
                .map(String::as_str)
                .zip(values.iter().map(|v| &**v))
                .collect();
            keep(&labels)
        });
    }

    /// The collector to register.
    pub fn collector(&self) -> Box<dyn Collector> {
        Box::new(self.clone())
    }
}

impl<S: Series> Collector for Family<S> {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.inner.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let inner = &self.inner;
        // Copied out, so the lock (which a request's first sight of a tenant takes) is not
        // held while the scrape reads every cell.
        let series: Vec<(Values, Arc<S>)> = inner
            .series
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let metrics = series
            .iter()
            .map(|(values, s)| {
                let labels = inner
                    .sorted
                    .iter()
                    .map(|&i| {
                        let mut p = proto::LabelPair::default();
                        p.set_name(inner.names[i].clone());
                        p.set_value(values[i].to_string());
                        p
                    })
                    .collect();
                let mut m = proto::Metric::from_label(labels);
                s.fill(&mut m);
                m
            })
            .collect();
        let mut mf = proto::MetricFamily::default();
        mf.set_name(inner.desc.fq_name.clone());
        mf.set_help(inner.desc.help.clone());
        mf.set_field_type(S::KIND);
        mf.set_metric(metrics);
        vec![mf]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_fall_in_the_first_bucket_they_do_not_exceed() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1_000_000), 0, "le is inclusive");
        assert_eq!(bucket_of(1_000_001), 1);
        assert_eq!(bucket_of(30_000_000_000), BOUNDS - 1);
        assert_eq!(bucket_of(30_000_000_001), BOUNDS);
        assert_eq!(bucket_of(u64::MAX), BOUNDS);
    }

    #[test]
    fn the_bounds_are_exported_as_the_seconds_they_were() {
        let want: [f64; BOUNDS] = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(upper_bound(i).to_bits(), w.to_bits(), "bound {i}");
        }
    }

    #[test]
    fn a_snapshot_sums_the_cells_and_counts_every_observation() {
        let h = Histogram {
            cells: (0..3).map(|_| Padded::default()).collect(),
        };
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        // Observations made on other workers' cells.
        h.cells[1].0.counts[0].fetch_add(2, Relaxed);
        h.cells[2].0.counts[BOUNDS].fetch_add(1, Relaxed);
        h.cells[1].0.sum_ns.fetch_add(1_000_000, Relaxed);
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert_eq!(&s.cumulative[..3], &[3, 3, 4]);
        assert_eq!(s.cumulative[BOUNDS - 1], 4, "two beyond 30 s");
        assert!((s.sum - 60.0045).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn a_held_gauge_unit_goes_back_to_its_cell() {
        let g = Gauge::default();
        let a = g.hold();
        let b = g.hold();
        assert_eq!(g.get(), 2);
        drop(a);
        assert_eq!(g.get(), 1);
        drop(b);
        assert_eq!(g.get(), 0);
    }

    #[test]
    fn a_family_renders_as_prometheus_would() {
        let reg = prometheus::Registry::new();
        let c: Family<Counter> =
            Family::new("t_requests_total", "Requests.", &["upstream", "code"]).expect("family");
        let h: Family<Histogram> =
            Family::new("t_duration_seconds", "Durations.", &["upstream"]).expect("family");
        reg.register(c.collector()).expect("register");
        reg.register(h.collector()).expect("register");
        let ok = c.with_label_values(&["app", "200"]);
        ok.inc();
        ok.inc();
        assert!(
            Arc::ptr_eq(&ok, &c.with_label_values(&["app", "200"])),
            "one series per label set"
        );
        c.with_label_values(&["app", "502"]).inc();
        c.with_label_values(&["gone", "200"]).inc();
        c.retain(|l| l.get("upstream") != Some(&"gone"));
        h.with_label_values(&["app"])
            .observe(Duration::from_millis(2));
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &reg.gather(), &mut out)
            .expect("encode");
        let text = String::from_utf8(out).expect("utf-8");
        for line in [
            "# TYPE t_requests_total counter",
            "t_requests_total{code=\"200\",upstream=\"app\"} 2",
            "t_requests_total{code=\"502\",upstream=\"app\"} 1",
            "# TYPE t_duration_seconds histogram",
            "t_duration_seconds_bucket{upstream=\"app\",le=\"0.001\"} 0",
            "t_duration_seconds_bucket{upstream=\"app\",le=\"0.0025\"} 1",
            "t_duration_seconds_bucket{upstream=\"app\",le=\"30\"} 1",
            "t_duration_seconds_bucket{upstream=\"app\",le=\"+Inf\"} 1",
            "t_duration_seconds_sum{upstream=\"app\"} 0.002",
            "t_duration_seconds_count{upstream=\"app\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(
            !text.contains("gone"),
            "a series retain refused is exported:\n{text}"
        );
    }
}
