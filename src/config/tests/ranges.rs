//! Bounds that keep a key acting: durations in whole milliseconds, label and probe counts,
//! and settings so small they would (almost) never act.

use super::{errors, fails_at, ok, policy, upstream, warnings, BASE};

/// A duration below 1ms, or between two, is refused at its place (`0.000000001s` made every
/// request 504); `0s` is still told it must be longer than 0s.
#[test]
fn durations_below_a_millisecond_are_refused_where_written() {
    for (text, path) in [
        (
            policy("{ timeout: { request: 0.000000001s } }"),
            "policies.p.timeout.request",
        ),
        (
            upstream(
                "{ endpoints: [127.0.0.1:3000], health_check: { path: /h, timeout: 0.000001s } }",
            ),
            "upstreams.app.health_check.timeout",
        ),
        (
            format!("{BASE}runtime: {{ body_idle_timeout: 0.5ms }}\n"),
            "runtime.body_idle_timeout",
        ),
    ] {
        let e = fails_at(&text, path);
        assert!(
            e.message
                .contains("it is shorter than 1ms, the shortest duration above 0s"),
            "{e}"
        );
    }
    let e = fails_at(
        &policy("{ timeout: { request: 1.5ms } }"),
        "policies.p.timeout.request",
    );
    assert!(
        e.message.contains("not a whole number of milliseconds"),
        "{e}"
    );
    let e = fails_at(
        &policy("{ timeout: { request: 0s } }"),
        "policies.p.timeout.request",
    );
    assert_eq!(e.message, "must be longer than 0s");
    ok(&policy("{ timeout: { request: 1ms } }"));
}

/// `metrics_labels` is bounded (label explosion, SPEC §7): 4294967295 was accepted. Above
/// `max_tracked` it acts (labels outlive tracking) but is warned about where written.
#[test]
fn metrics_labels_is_bounded_and_warned_past_max_tracked() {
    let e = fails_at(
        &format!("{BASE}tenants: {{ metrics_labels: 4294967295, max_tracked: 10 }}\n"),
        "tenants.metrics_labels",
    );
    assert!(e.message.contains("the most is 10000"), "{e}");
    let e = fails_at(
        &format!("{BASE}tenants: {{ metrics_labels: 99999999999999999999 }}\n"),
        "tenants.metrics_labels",
    );
    assert!(
        e.message
            .ends_with("the largest number allowed here is 10000"),
        "{e}"
    );
    ok(&format!("{BASE}tenants: {{ metrics_labels: 10000 }}\n"));
    let w = warnings(&format!(
        "{BASE}tenants: {{ metrics_labels: 50, max_tracked: 10 }}\n"
    ));
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0].path, "tenants.metrics_labels");
    assert!(w[0].message.contains("more than max_tracked (10)"), "{w:?}");
    assert!(warnings(&format!("{BASE}tenants: {{ max_tracked: 10 }}\n")).is_empty());
}

/// Counts that kept a breaker half-open or an endpoint's state for good are bounded.
#[test]
fn probe_and_check_counts_are_bounded() {
    let e = fails_at(
        &policy("{ circuit_breaker: { half_open_probes: 4294967295 } }"),
        "policies.p.circuit_breaker.half_open_probes",
    );
    assert!(e.message.contains("1 to 100"), "{e}");
    ok(&policy("{ circuit_breaker: { half_open_probes: 100 } }"));
    for key in ["healthy_after", "unhealthy_after"] {
        let e = fails_at(
            &upstream(&format!(
                "{{ endpoints: [127.0.0.1:3000], health_check: {{ path: /h, {key}: 4294967295 }} }}"
            )),
            &format!("upstreams.app.health_check.{key}"),
        );
        assert!(e.message.contains("1 to 100"), "{e}");
    }
}

/// Settings so small they (almost) never act are warned about at their key, or refused.
#[test]
fn settings_too_small_to_act_are_told_where_written() {
    let w = warnings(&policy(
        "{ retry: { attempts: 2, budget: { window: 1ms } } }",
    ));
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0].path, "policies.p.retry.budget.window");
    assert!(
        w[0].message
            .contains("only after 5 requests within one window"),
        "{w:?}"
    );
    assert!(warnings(&policy(
        "{ retry: { attempts: 2, budget: { window: 1s } } }"
    ))
    .is_empty());
    let w = warnings(&policy(
        "{ load_shed: { max_in_flight: 5, queue: { size: 10, timeout: 0ms } } }",
    ));
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0].path, "policies.p.load_shed.queue.timeout");
    let w = warnings(&upstream(
        "{ endpoints: [127.0.0.1:3000], health_check: { path: /h, interval: 1ms } }",
    ));
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0].path, "upstreams.app.health_check.interval");
    let e = fails_at(
        &format!("{BASE}tenants: {{ from: [ {{ jwt: {{ jwks: 'https://idp.example/jwks.json', claim: sub, jwks_refresh: 1ms }} }} ] }}\n"),
        "tenants.from[0].jwt.jwks_refresh",
    );
    assert!(e.message.contains("the least is 1s"), "{e}");
}

/// The range told for `failure_rate.window` is its own, and 0 is told to be at least 1.
#[test]
fn failure_rate_window_messages_say_its_range() {
    let e = fails_at(
        &policy("{ circuit_breaker: { failure_rate: { threshold: 50%, window: 30s } } }"),
        "policies.p.circuit_breaker.failure_rate.window",
    );
    assert!(e.message.ends_with("from 1 to 10000"), "{e}");
    let e = fails_at(
        &policy("{ circuit_breaker: { failure_rate: { threshold: 50%, window: 0 } } }"),
        "policies.p.circuit_breaker.failure_rate.window",
    );
    assert!(e.message.starts_with("must be at least 1 (got 0)"), "{e}");
    assert!(!errors(&policy(
        "{ circuit_breaker: { failure_rate: { threshold: 50%, window: 10001 } } }"
    ))
    .is_empty());
}

/// `timeout.idle` takes a duration, `0s` among them (it turns the idle timeout off, where the
/// other timeouts must be longer than 0s); anything else is refused at its place, and one that
/// can never cut before `timeout.request` is warned about there.
#[test]
fn timeout_idle_takes_a_duration_and_0s_is_off() {
    for good in ["250ms", "0s", "5m", "30d"] {
        ok(&policy(&format!("{{ timeout: {{ idle: {good} }} }}")));
    }
    ok(&policy("{ timeout: { request: 2s, idle: 1999ms } }"));
    ok(&policy("{ timeout: { request: 2s, idle: 0s } }"));
    for bad in ["-1s", "soon", "31d", "10", "0.5ms", "[1s]"] {
        let all = errors(&policy(&format!("{{ timeout: {{ idle: {bad} }} }}")));
        assert_eq!(all.len(), 1, "{bad}: {all:#?}");
        let e = &all[0];
        assert_eq!(
            (e.line, e.column, e.path.as_str()),
            (6, 25, "policies.p.timeout.idle"),
            "{bad}: {e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("t.yaml:6:25: policies.p.timeout.idle: "),
            "{e}"
        );
    }
    let w = warnings(&policy("{ timeout: { request: 2s, idle: 2s } }"));
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(
        (w[0].line, w[0].column, w[0].path.as_str()),
        (6, 32, "policies.p.timeout.idle")
    );
    assert!(w[0].message.contains("never acts"), "{}", w[0].message);
}
