//! Cost of the idempotency step on the request path (issue 19): a request without the key
//! header must cost nothing measurable (one header lookup), and with it the key, the digest of
//! a small body and the store lookup must stay well under a microsecond.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::Criterion;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use rampart::clock::{ManualClock, SharedClock};
use rampart::config::file::Idempotency;
use rampart::config::units::{Dur, Size};
use rampart::metrics::Metrics;
use rampart::policy::idempotency::{digest, Begin, RouteIdempotency, StoredAnswer};

/// A waker that does nothing: the in-memory store never leaves a future pending.
struct Noop;

impl Wake for Noop {
    fn wake(self: Arc<Self>) {}
}

/// Polls a future that the in-memory store makes ready at once.
fn ready<T>(f: impl Future<Output = T>) -> T {
    thread_local! {
        static WAKER: Waker = Waker::from(Arc::new(Noop));
    }
    let mut f = pin!(f);
    WAKER.with(|w| {
        let mut cx = Context::from_waker(w);
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the in-memory store answers at once"),
        }
    })
}

fn route() -> RouteIdempotency {
    let cfg = Idempotency {
        header: "idempotency-key".into(),
        ttl: Dur(Duration::from_secs(3600)),
        max_body: Size(1 << 20),
        max_entries: 100_000,
        max_bytes: Size(64 << 20),
    };
    let clock: SharedClock = Arc::new(ManualClock::new());
    RouteIdempotency::build(
        &cfg,
        None,
        &Arc::from("r"),
        &Metrics::register(),
        &clock,
        None,
    )
}

fn bench(c: &mut Criterion) {
    let idem = route();
    let mut plain = HeaderMap::new();
    for (k, v) in [("host", "app"), ("accept", "*/*"), ("x-tenant-id", "acme")] {
        plain.insert(k, HeaderValue::from_static(v));
    }
    let mut keyed = plain.clone();
    keyed.insert("idempotency-key", HeaderValue::from_static("order-12345"));
    let uri: Uri = "/orders?x=1".parse().expect("a valid uri");
    let body = Bytes::from_static(br#"{"amount":10,"currency":"EUR"}"#);
    // A finished first request, so the benchmarked lookups are replays.
    let key = idem
        .key_of(&keyed, "acme", false)
        .ok()
        .flatten()
        .expect("keyed");
    let d = digest(&Method::POST, &uri, &body);
    assert!(matches!(ready(idem.store.begin(&key, d)), Begin::Claimed));
    let kept = StoredAnswer {
        status: StatusCode::CREATED,
        headers: HeaderMap::new(),
        body: Bytes::from_static(b"created"),
        trailers: None,
    };
    idem.store.complete(&key, d, Some(kept));

    let mut g = c.benchmark_group("idempotency");
    g.bench_function("without_header", |b| {
        b.iter(|| idem.key_of(black_box(&plain), "acme", false))
    });
    g.bench_function("with_header_replay", |b| {
        b.iter(|| {
            let key = idem
                .key_of(black_box(&keyed), "acme", false)
                .ok()
                .flatten()
                .expect("keyed");
            let d = digest(&Method::POST, &uri, black_box(&body));
            ready(idem.store.begin(&key, d))
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
