//! Slips a file may hold that were once passed over or half reported: route errors behind a
//! bad listener address, a repeated endpoint, an empty `timeout`, a range message that did not
//! match its check, and the reserved tenant id `_other`.

use super::{errors, one, policy, spot, upstream, warnings, BASE};

fn paths(text: &str) -> Vec<String> {
    errors(text).into_iter().map(|e| e.path).collect()
}

// === a bad listener does not hide its routes ===

/// Three routes with two mistakes: a match host with a port, and a route after a catch-all.
const ROUTES: &str = "    routes:
      - upstream: app
        match: { host: 'a.b:80' }
      - upstream: app
      - upstream: app
";

/// A listener's bad (or missing) `listen` or `direction` is reported with every error of its
/// routes, in one pass (SPEC §14), as with a good one.
#[test]
fn a_bad_listen_or_direction_does_not_hide_its_routes_errors() {
    let text = BASE.replace(
        "    routes:\n      - upstream: app\n        policy: p\n",
        ROUTES,
    );
    let routes = [
        "listeners[0].routes[0].match.host",
        "listeners[0].routes[2]",
    ];
    assert_eq!(paths(&text), routes);
    for (from, to, first) in [
        (
            "listen: 127.0.0.1:8080",
            "listen: 'localhost:80'",
            "listeners[0].listen",
        ),
        ("    listen: 127.0.0.1:8080\n", "", "listeners[0]"),
        (
            "direction: inbound",
            "direction: sideways",
            "listeners[0].direction",
        ),
        ("    direction: inbound\n", "", "listeners[0]"),
    ] {
        let bad = text.replace(from, to);
        let mut want = vec![first];
        want.extend(routes);
        assert_eq!(paths(&bad), want, "{to:?}");
    }
    // Where the direction is bad, a route's `path_prefix` is still judged.
    let text = BASE
        .replace("direction: inbound", "direction: sideways")
        .replace(
            "      - upstream: app\n",
            "      - upstream: app\n        match: { path_prefix: x }\n",
        );
    let all = errors(&text);
    assert_eq!(
        all.iter().map(spot).collect::<Vec<_>>(),
        [
            (9, 16, "listeners[0].direction"),
            (13, 31, "listeners[0].routes[0].match.path_prefix"),
        ],
        "{all:#?}"
    );
}

/// What stands in for a bad `listen` while the routes are checked clashes with nothing: two
/// listeners with bad addresses, or one beside `admin.listen`, get their own errors only.
#[test]
fn a_bad_listen_stands_in_for_no_address() {
    let second = "  - name: second
    direction: outbound
    listen: nohost
    routes:
      - upstream: app
";
    let text = format!("{BASE}{second}").replace("listen: 127.0.0.1:8080", "listen: also-no-host");
    assert_eq!(paths(&text), ["listeners[0].listen", "listeners[1].listen"]);
}

// === endpoints ===

#[test]
fn a_repeated_endpoint_is_refused_at_the_repeat() {
    let text = upstream("{ endpoints: [127.0.0.1:21001, 127.0.0.1:21001, 127.0.0.1:21002] }");
    let e = one(&text);
    assert_eq!(spot(&e), (3, 39, "upstreams.app.endpoints[1]"), "{e:?}");
    assert_eq!(
        e.message,
        "endpoint 127.0.0.1:21001 is listed twice (endpoints[0] at 3:22): list each endpoint once"
    );
    // The same address however written; a name without regard to case.
    for (a, b) in [
        ("\"[::ffff:127.0.0.1]:1\"", "127.0.0.1:1"),
        ("\"[::1]:80\"", "\"[0:0::1]:80\""),
        ("App.Internal:80", "app.internal:80"),
    ] {
        let text = upstream(&format!("{{ endpoints: [{a}, {b}] }}"));
        assert_eq!(paths(&text), ["upstreams.app.endpoints[1]"], "{a} {b}");
    }
    // Another port, or another name for the same machine, is another endpoint.
    for list in [
        "[127.0.0.1:1, 127.0.0.1:2]",
        "[localhost:1, 127.0.0.1:1]",
        "[a.internal:1, b.internal:1]",
    ] {
        let text = upstream(&format!("{{ endpoints: {list} }}"));
        assert!(warnings(&text).is_empty(), "{list}");
    }
}

// === empty sections ===

#[test]
fn an_empty_timeout_warns_as_other_empty_sections_do() {
    for empty in ["timeout", "rate_limit", "circuit_breaker"] {
        let w = warnings(&policy(&format!("{{ {empty}: {{}} }}")));
        assert_eq!(w.len(), 1, "{empty}: {w:#?}");
        assert_eq!(w[0].path, format!("policies.p.{empty}"));
        assert!(w[0].message.contains("does nothing"), "{w:?}");
    }
    let w = warnings(&policy("{ timeout: {} }"));
    assert_eq!(
        w[0].message,
        "no timeout is given (request, per_try or idle): this timeout section bounds nothing and does nothing"
    );
    for one_key in [
        "{ request: 1s }",
        "{ per_try: 1s }",
        "{ per_try: auto }",
        "{ idle: 1s }",
        "{ idle: 0s }",
    ] {
        let text = policy(&format!("{{ timeout: {one_key} }}"));
        assert!(warnings(&text).is_empty(), "{one_key}");
    }
}

// === ranges ===

/// A whole number serde cannot read is refused with the range its check takes: a key that
/// must be at least 1 is not told "from 0".
#[test]
fn a_negative_count_names_the_range_its_check_takes() {
    let top = |extra: &str| format!("{BASE}{extra}\n");
    let cases = [
        (
            top("runtime: { max_connections: -1 }"),
            "runtime.max_connections",
            "from 1 to 4294967295",
        ),
        (
            top("tenants: { max_tracked: -1 }"),
            "tenants.max_tracked",
            "from 1 to 100000000",
        ),
        (
            upstream("{ endpoints: [127.0.0.1:1], max_connections: -1 }"),
            "upstreams.app.max_connections",
            "from 1 to 4294967295",
        ),
        (
            policy("{ rate_limit: { per_tenant: [ { rate: 1/s, burst: -1 } ] } }"),
            "policies.p.rate_limit.per_tenant[0].burst",
            "from 1 to 4294967295",
        ),
        (
            policy("{ load_shed: { max_in_flight: -1 } }"),
            "policies.p.load_shed.max_in_flight",
            "from 1 to 4294967295",
        ),
        (
            policy("{ idempotency: { max_entries: -1 } }"),
            "policies.p.idempotency.max_entries",
            "from 1 to 10000000",
        ),
        // A key that takes 0 keeps its range.
        (
            upstream("{ endpoints: [127.0.0.1:1], pool_max_idle: -1 }"),
            "upstreams.app.pool_max_idle",
            "from 0 to 4294967295",
        ),
    ];
    for (text, path, range) in cases {
        let e = one(&text);
        assert_eq!(e.path, path, "{e:?}");
        assert!(
            e.message
                .ends_with(&format!("expected a whole number {range}")),
            "{e:?}"
        );
    }
    // And 0, which serde reads, is refused by the check, with the same least value.
    let e = one(&top("runtime: { max_connections: 0 }"));
    assert_eq!(e.message, "must be at least 1 (got 0)");
}

// === the reserved tenant id ===

/// `_other` is the metrics label of the tenants folded past `metrics_labels`: a tenant named
/// so would be counted with them, so the file may not name one.
#[test]
fn the_folded_tenants_label_is_no_tenant_id() {
    let reserved = |text: &str, path: &str| {
        let all = errors(text);
        let e = all.iter().find(|e| e.path == path);
        let e = e.unwrap_or_else(|| panic!("an error at {path}: {all:#?}"));
        assert!(
            e.message.contains("\"_other\" is reserved")
                && e.message.contains("folded past tenants.metrics_labels"),
            "{e:?}"
        );
    };
    reserved(
        &format!("{BASE}tenants: {{ fallback: _other }}\n"),
        "tenants.fallback",
    );
    reserved(
        &policy(
            "{ rate_limit: { per_tenant: { rate: 1/s }, overrides: { _other: { rate: 2/s } } } }",
        ),
        "policies.p.rate_limit.overrides._other",
    );
    let plans = format!(
        "tenants:\n  plans: {{ plan_header: x-plan, assign: {{ pro: [acme, _other] }} }}\n{BASE}"
    )
    .replace(
        "  p: {}",
        "  p: { rate_limit: { per_tenant: { rate: 1/s }, plans: { pro: { rate: 5/s } } } }",
    );
    reserved(&plans, "tenants.plans.assign.pro[1]");
    // `-`, the tenant of an optional route's request that names none, likewise.
    let all = errors(&format!("{BASE}tenants: {{ fallback: \"-\" }}\n"));
    assert!(
        all.iter().any(|e| e.path == "tenants.fallback"
            && e.message.contains("\"-\" is reserved")
            && e.message.contains("tenant: optional")),
        "{all:#?}"
    );
    // Only that spelling: labels are case-sensitive, and `other` is a name like any.
    for id in ["_Other", "other", "_others"] {
        assert!(
            warnings(&format!("{BASE}tenants: {{ fallback: {id} }}\n")).is_empty(),
            "{id}"
        );
    }
}

/// A number no size can be (negative, or past 64 bits) at a size key is told the range its
/// check takes, not the type's ("the largest number allowed here is 18446744073709551615")
/// nor a bare "invalid size: -5"; `version` is told the one number it takes.
#[test]
fn sizes_and_version_name_the_range_their_checks_take() {
    let top = |extra: &str| format!("{BASE}{extra}\n");
    let huge = "99999999999999999999999";
    let cases = [
        (
            top(&format!("runtime: {{ max_header_bytes: {huge} }}")),
            "runtime.max_header_bytes",
            format!("{huge} is out of range: it must be between 8KiB and 1MiB"),
        ),
        (
            top("runtime: { max_header_bytes: -5 }"),
            "runtime.max_header_bytes",
            "-5 is out of range: it must be between 8KiB and 1MiB".to_owned(),
        ),
        (
            policy(&format!("{{ idempotency: {{ max_body: {huge} }} }}")),
            "policies.p.idempotency.max_body",
            format!("{huge} is out of range: it must be between 1B and 16MiB"),
        ),
        (
            policy("{ idempotency: { max_bytes: -1 } }"),
            "policies.p.idempotency.max_bytes",
            "-1 is out of range: it must be between 1B and 4096MiB".to_owned(),
        ),
        (
            policy("{ retry: { attempts: 2, buffer: -1 } }"),
            "policies.p.retry.buffer",
            "-1 is out of range: it must be between 0B and 16MiB".to_owned(),
        ),
        (
            BASE.replace("version: 1", "version:"),
            "version",
            "invalid type: empty (null), expected the whole number 1".to_owned(),
        ),
        (
            BASE.replace("version: 1", "version: -1"),
            "version",
            "invalid value: -1, expected the whole number 1".to_owned(),
        ),
    ];
    for (text, path, want) in cases {
        let e = one(&text);
        assert_eq!((e.path.as_str(), e.message.as_str()), (path, want.as_str()));
    }
}

/// A size written with a unit whose bytes pass 64 bits (by its number or by its unit) is too
/// large, not malformed: it is told the most its key takes, at the value, quoted or plain. A
/// duration that large was already told its bound, and still is.
#[test]
fn sizes_past_64_bits_name_the_most_their_key_takes() {
    let top = |extra: &str| format!("{BASE}{extra}\n");
    let cases = [
        (
            top("runtime: { max_header_bytes: 99999999999999GiB }"),
            "99999999999999GiB",
            "runtime.max_header_bytes",
            "99999999999999GiB is too large: the most is 1MiB",
        ),
        (
            top("runtime: { max_header_bytes: \"17179869184GiB\" }"),
            "\"17179869184GiB\"",
            "runtime.max_header_bytes",
            "17179869184GiB is too large: the most is 1MiB",
        ),
        (
            policy("{ retry: { attempts: 2, buffer: 99999999999999999999999MB } }"),
            "99999999999999999999999MB",
            "policies.p.retry.buffer",
            "99999999999999999999999MB is too large: the most is 16MiB",
        ),
        (
            policy("{ idempotency: { max_body: 99999999999999GiB } }"),
            "99999999999999GiB",
            "policies.p.idempotency.max_body",
            "99999999999999GiB is too large: the most is 16MiB",
        ),
        (
            policy("{ timeout: { request: 999999999999999999h } }"),
            "999999999999999999h",
            "policies.p.timeout.request",
            "invalid duration \"999999999999999999h\": it is too large; the longest allowed is 30d",
        ),
    ];
    for (text, value, path, want) in cases {
        let e = one(&text);
        let (line, column) = text
            .lines()
            .enumerate()
            .find_map(|(i, l)| l.find(value).map(|c| (i + 1, c + 1)))
            .expect("the value is in the text");
        assert_eq!(spot(&e), (line, column, path), "{text}");
        assert_eq!(e.message, want, "{text}");
    }
    // A malformed size keeps the message of the forms, however long its number.
    let e = one(&top(
        "runtime: { max_header_bytes: 99999999999999999999XB }",
    ));
    assert!(e.message.starts_with("invalid size"), "{e:?}");
}
