//! One failing case (at least) for every semantic check, and the edge cases that must pass.

use super::{errors, fails_at, ok, one, policy, spot, upstream, warnings, BASE};

fn top(extra: &str) -> String {
    format!("{BASE}{extra}\n")
}

fn listener(name: &str, listen: &str) -> String {
    format!(
        "  - name: {name}\n    direction: outbound\n    listen: {listen}\n    routes:\n      - upstream: app\n"
    )
}

#[test]
fn version_must_be_1() {
    let e = one(&BASE.replace("version: 1", "version: 2"));
    assert_eq!(e.message, "unsupported version 2: the only version is 1");
    // A file of another version is judged on its version alone.
    let e = one(&format!(
        "{}future_section: {{}}\n",
        BASE.replace("version: 1", "version: 3")
    ));
    assert_eq!((e.line, e.column, e.path.as_str()), (1, 10, "version"));
}

#[test]
fn listeners_are_required_named_and_distinct() {
    let e = one("version: 1\nupstreams: { app: { endpoints: [127.0.0.1:1] } }\n");
    assert_eq!(e.path, "listeners");
    assert_eq!((e.line, e.column), (1, 1));
    fails_at(
        &BASE.replace("name: inbound", "name: \"\""),
        "listeners[0].name",
    );
    let two = format!("{BASE}{}", listener("inbound", "127.0.0.1:8081"));
    assert!(fails_at(&two, "listeners[1].name")
        .message
        .contains("\"inbound\""));
    let two = format!("{BASE}{}", listener("out", "127.0.0.1:8080"));
    let e = fails_at(&two, "listeners[1].listen");
    assert_eq!(
        e.message,
        "127.0.0.1:8080 clashes with listeners[0].listen 127.0.0.1:8080"
    );
    assert_eq!((e.line, e.column), (16, 13));
    let wild = format!("{BASE}{}", listener("out", "0.0.0.0:8080"));
    fails_at(&wild, "listeners[1].listen");
    ok(&format!("{BASE}{}", listener("out", "127.0.0.2:8080")));
    let e = one(&top("admin: { listen: 127.0.0.1:8080 }"));
    assert_eq!(e.path, "listeners[0].listen");
    assert!(e.message.contains("admin.listen"));
    // Port 0 asks the system for a free port, on each address once: listeners are told apart
    // by the address written, so a second `127.0.0.1:0` would replace the first. Before, it
    // was accepted, and the first listener stopped accepting.
    let zero = |other: &str| {
        format!(
            "{}{}",
            BASE.replace("127.0.0.1:8080", "127.0.0.1:0"),
            listener("out", other)
        )
    };
    let e = one(&zero("127.0.0.1:0"));
    assert_eq!(e.path, "listeners[1].listen");
    assert!(e.message.contains("listeners[0].listen"), "{e:?}");
    ok(&zero("127.0.0.2:0"));
    ok(&zero("0.0.0.0:0"));
    // A listen that is no address is stood in for by `0.0.0.0:0`: no clash is told for it.
    let e = one(&format!(
        "{}{}",
        BASE.replace("127.0.0.1:8080", "nowhere"),
        listener("out", "0.0.0.0:0")
    ));
    assert_eq!(e.path, "listeners[0].listen");
    fails_at(
        &BASE.replace(
            "    routes:\n      - upstream: app\n        policy: p\n",
            "    routes: []\n",
        ),
        "listeners[0].routes",
    );
}

#[test]
fn routes_check_match_and_order() {
    let with_match = |m: &str| {
        BASE.replace(
            "      - upstream: app\n",
            &format!("      - match: {m}\n        upstream: app\n"),
        )
    };
    ok(&with_match("{ host: sample.local, path_prefix: /api }"));
    ok(&with_match("{ host: \"*.example.com\" }"));
    ok(&with_match("{ host: \"[::1]\" }"));
    let e = fails_at(
        &with_match("{ host: \"sample.local:8080\" }"),
        "listeners[0].routes[0].match.host",
    );
    assert!(e.message.contains("has no port"), "{e:?}");
    fails_at(
        &with_match("{ host: \"a.*.com\" }"),
        "listeners[0].routes[0].match.host",
    );
    fails_at(
        &with_match("{ host: \"bad host\" }"),
        "listeners[0].routes[0].match.host",
    );
    let e = fails_at(
        &with_match("{ path_prefix: api }"),
        "listeners[0].routes[0].match.path_prefix",
    );
    assert_eq!(e.message, "path prefix \"api\" must start with /");
    for dead in ["/a//b", "/a/../b", "/%61pi", "/a%2fb", "/x/./"] {
        let e = fails_at(
            &with_match(&format!("{{ path_prefix: \"{dead}\" }}")),
            "listeners[0].routes[0].match.path_prefix",
        );
        assert!(e.message.contains("can never match"), "{}", e.message);
    }
    // What no request path holds, and what one holds only escaped (with the form to write).
    for (dead, says) in [
        ("/a?b=1", "a `?`"),
        ("/a#top", "a `#`"),
        ("/a b", "a space"),
        ("/a\\tb", "a control character"),
    ] {
        let e = fails_at(
            &with_match(&format!("{{ path_prefix: \"{dead}\" }}")),
            "listeners[0].routes[0].match.path_prefix",
        );
        assert!(e.message.contains("can never match"), "{}", e.message);
        assert!(e.message.contains(says), "{}", e.message);
    }
    for (raw, escaped) in [
        ("/\u{e9}", "/%C3%A9"),
        ("/caf\u{e9}/x", "/caf%C3%A9/x"),
        ("/a{b}|c", "/a%7Bb%7D%7Cc"),
        ("/q\\\"x", "/q%22x"),
    ] {
        let e = fails_at(
            &with_match(&format!("{{ path_prefix: \"{raw}\" }}")),
            "listeners[0].routes[0].match.path_prefix",
        );
        assert!(
            e.message.ends_with(&format!("write {escaped:?}")),
            "{}",
            e.message
        );
        ok(&with_match(&format!("{{ path_prefix: \"{escaped}\" }}")));
    }
    ok(&with_match("{ path_prefix: /api/. }"));
    ok(&with_match("{ path_prefix: \"/a%2Fb\" }"));
    // Without merge_slashes (the outbound default) `//` is in the normal form: `/a//b` can
    // match there; a dot segment still cannot.
    let unmerged = |m: &str, key: &str| {
        with_match(m).replace(
            "    direction: inbound\n",
            &format!("    direction: inbound\n{key}"),
        )
    };
    let no_merge = "    merge_slashes: false\n";
    ok(&unmerged("{ path_prefix: \"/a//b\" }", no_merge));
    ok(&unmerged("{ path_prefix: \"//a\" }", no_merge));
    let outbound = with_match("{ path_prefix: \"/bucket//k\" }")
        .replace("direction: inbound", "direction: outbound");
    ok(&outbound);
    fails_at(
        &outbound.replace(
            "direction: outbound\n",
            "direction: outbound\n    merge_slashes: true\n",
        ),
        "listeners[0].routes[0].match.path_prefix",
    );
    let e = fails_at(
        &unmerged("{ path_prefix: \"/a//../b\" }", no_merge),
        "listeners[0].routes[0].match.path_prefix",
    );
    assert!(!e.message.contains("no `//`"), "{}", e.message);
    fails_at(
        &BASE.replace(
            "      - upstream: app\n",
            "      - name: \"\"\n        upstream: app\n",
        ),
        "listeners[0].routes[0].name",
    );
    let shadowed = BASE.replace(
        "        policy: p\n",
        "        policy: p\n      - match: { path_prefix: /x }\n        upstream: app\n",
    );
    let e = one(&shadowed);
    assert_eq!(
        (e.path.as_str(), e.line, e.column),
        ("listeners[0].routes[1]", 14, 9)
    );
    assert!(e.message.contains("never used"), "{e:?}");
}

/// Two routes with the same match (hosts compared without case or a trailing dot, no prefix
/// covering `/`): the second can never be chosen, and is refused as a route behind a catch-all
/// is. Before, an outbound `Deps.Internal` then `deps.internal` was accepted in silence.
#[test]
fn a_route_with_the_same_match_as_an_earlier_one_is_never_used() {
    let routes = |a: &str, b: &str| {
        format!(
            "{BASE}  - name: outbound\n    direction: outbound\n    listen: 127.0.0.1:8081\n    routes:\n      - match: {a}\n        upstream: app\n      - match: {b}\n        upstream: app\n"
        )
    };
    let text = routes(
        "{ host: Deps.Internal, path_prefix: /v1 }",
        "{ host: deps.internal, path_prefix: /v1 }",
    );
    let e = one(&text);
    assert_eq!(
        (e.path.as_str(), e.line, e.column),
        ("listeners[1].routes[1]", 20, 9),
        "{e:?}"
    );
    assert!(e.message.contains("never used: routes[0]"), "{e:?}");
    // No prefix is `/`; wildcards compare without case too.
    one(&routes(
        "{ host: a.example }",
        "{ host: A.example, path_prefix: / }",
    ));
    one(&routes(
        "{ host: \"*.Example\" }",
        "{ host: \"*.example\" }",
    ));
    // A trailing dot names the same host, as does an IPv6 address however written: routes
    // compare as requests are matched.
    for (a, b) in [
        ("{ host: x }", "{ host: \"x.\" }"),
        ("{ host: \"[::1]\" }", "{ host: \"[0:0::1]\" }"),
        (
            "{ host: \"*.example.com.\" }",
            "{ host: \"*.Example.com\" }",
        ),
    ] {
        let e = one(&routes(a, b));
        assert!(e.message.contains("never used: routes[0]"), "{e:?}");
    }
    // Another prefix, another host, or a host against none: both can be chosen.
    for (a, b) in [
        (
            "{ host: deps.internal, path_prefix: /v1 }",
            "{ host: deps.internal, path_prefix: /v2 }",
        ),
        ("{ host: deps.internal }", "{ host: deps.internal2 }"),
        ("{ host: \"[::1]\" }", "{ host: \"[::2]\" }"),
        (
            "{ path_prefix: /v1 }",
            "{ host: deps.internal, path_prefix: /v1 }",
        ),
    ] {
        ok(&routes(a, b));
    }
}

/// A CONNECT's target has no path, so at runtime it matches only routes without a
/// `path_prefix`, `/` included. On an outbound listener (which routes CONNECTs) a route after
/// one with prefix `/` and the same host, or no host, still takes CONNECTs and is accepted;
/// one with a prefix there is never used. On an inbound listener (CONNECT is 405 before
/// routing) `/` is no prefix. Before, validate treated `/` as no prefix everywhere and refused
/// the outbound routes that take the CONNECTs.
#[test]
fn an_outbound_route_after_a_slash_prefix_still_takes_connects() {
    let routes = |direction: &str, a: &str, b: &str| {
        format!(
            "{BASE}  - name: second\n    direction: {direction}\n    listen: 127.0.0.1:8081\n    routes:\n      - match: {a}\n        upstream: app\n      - match: {b}\n        upstream: app\n"
        )
    };
    for (a, b) in [
        ("{ host: a.example, path_prefix: / }", "{ host: A.example }"),
        ("{ path_prefix: / }", "{ host: a.example }"),
        ("{ path_prefix: / }", "{ }"),
    ] {
        ok(&routes("outbound", a, b));
        let e = one(&routes("inbound", a, b));
        assert_eq!(e.path, "listeners[1].routes[1]", "{e:?}");
        assert!(e.message.contains("never used: routes[0]"), "{e:?}");
    }
    // A route with a prefix takes no CONNECT: behind `/` it is never used, on either side.
    for b in ["{ path_prefix: /x }", "{ host: a.example, path_prefix: / }"] {
        for direction in ["outbound", "inbound"] {
            let e = one(&routes(direction, "{ path_prefix: / }", b));
            assert_eq!(e.path, "listeners[1].routes[1]", "{direction} {b}: {e:?}");
            assert!(e.message.contains("never used: routes[0]"), "{e:?}");
        }
    }
    let e = one(&routes(
        "outbound",
        "{ path_prefix: / }",
        "{ path_prefix: /x }",
    ));
    assert!(e.message.contains("but a CONNECT"), "{e:?}");
}

#[test]
fn endpoints_are_host_port() {
    for good in [
        "127.0.0.1:3000",
        "[::1]:80",
        "payments-0.payments.internal:443",
        "localhost:1",
        "svc_x.ns:8080",
    ] {
        ok(&upstream(&format!("{{ endpoints: [\"{good}\"] }}")));
    }
    for bad in [
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "::1:80",
        "[::1]80",
        "[zz]:80",
        "-a.b:80",
        "a..b:80",
        ":80",
        "999.1.1.1:80",
        "a b:80",
    ] {
        let text = upstream(&format!("{{ endpoints: [127.0.0.1:1, \"{bad}\"] }}"));
        let e = fails_at(&text, "upstreams.app.endpoints[1]");
        assert!(
            e.message.starts_with(&format!("invalid endpoint {bad:?}")),
            "{e:?}"
        );
    }
}

/// A health check's path is sent as each probe's request target: one that is no valid target
/// is refused where it is written, as a route's `path_prefix` is. Before, `/health check` (or
/// one with `<`, a backtick, a control character) was accepted and every probe failed to be
/// built: every endpoint unhealthy, every request 502. A query is sent with the path.
#[test]
fn a_health_check_path_is_a_request_target() {
    let hc = |path: &str| {
        upstream(&format!(
            "{{ endpoints: [127.0.0.1:1], health_check: {{ path: \"{path}\" }} }}"
        ))
    };
    for (bad, says) in [
        ("/health check", "a space"),
        ("/health\\tz", "a control character"),
        ("/healthz#top", "a `#`"),
        ("/health?a b", "a space"),
    ] {
        let e = fails_at(&hc(bad), "upstreams.app.health_check.path");
        assert!(e.message.contains(says), "{bad}: {}", e.message);
    }
    // Characters RFC 3986 has percent-encoded: refused where a probe could not send them,
    // sent as written with a warning where http's request target takes them (they probed
    // before they were checked).
    for (raw, escaped) in [("/<h>", "/%3Ch%3E"), ("/h`", "/h%60")] {
        let e = fails_at(&hc(raw), "upstreams.app.health_check.path");
        assert!(
            e.message.ends_with(&format!("write {escaped:?}")),
            "{raw}: {}",
            e.message
        );
    }
    for (raw, escaped) in [
        ("/caf\u{e9}", "/caf%C3%A9"),
        ("/h?q={x}", "/h?q=%7Bx%7D"),
        ("/status?checks[]=db", "/status?checks%5B%5D=db"),
    ] {
        let w = warnings(&hc(raw));
        assert!(
            w.iter().any(|w| w.path == "upstreams.app.health_check.path"
                && w.message.ends_with(&format!("write {escaped:?}"))),
            "{raw}: {w:?}"
        );
        http::Request::get(raw)
            .body(())
            .unwrap_or_else(|e| panic!("{raw}: {e}"));
    }
    for good in ["/healthz", "/h?full=1&x=/a?b", "/a%20b:c@d"] {
        ok(&hc(good));
        // What passes is what the checker can send.
        http::Request::get(good)
            .body(())
            .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

#[test]
fn upstream_health_outlier_and_tls() {
    let hc = |h: &str| {
        upstream(&format!(
            "{{ endpoints: [127.0.0.1:1], health_check: {h} }}"
        ))
    };
    ok(&hc("{ path: /healthz }"));
    fails_at(&hc("{ path: healthz }"), "upstreams.app.health_check.path");
    fails_at(
        &hc("{ path: /h, healthy_after: 0 }"),
        "upstreams.app.health_check.healthy_after",
    );
    fails_at(
        &hc("{ path: /h, unhealthy_after: 0 }"),
        "upstreams.app.health_check.unhealthy_after",
    );
    fails_at(
        &hc("{ path: /h, interval: 0s }"),
        "upstreams.app.health_check.interval",
    );
    let o = upstream("{ endpoints: [127.0.0.1:1], outlier: { consecutive_failures: 0 } }");
    fails_at(&o, "upstreams.app.outlier.consecutive_failures");
    fails_at(
        &upstream("{ endpoints: [127.0.0.1:1], connect_timeout: 0ms }"),
        "upstreams.app.connect_timeout",
    );
    let e = fails_at(
        &upstream("{ endpoints: [127.0.0.1:1], pool_idle_timeout: 0s }"),
        "upstreams.app.pool_idle_timeout",
    );
    assert!(e.message.contains("pool_max_idle: 0"), "{e:?}");
    ok(&upstream(
        "{ endpoints: [127.0.0.1:1], pool_idle_timeout: 1ms, pool_max_idle: 0 }",
    ));
    let tls = upstream(
        "{ endpoints: [127.0.0.1:1], tls: { server_name: \"bad name\", ca: /nonexistent/ca.pem } }",
    );
    fails_at(&tls, "upstreams.app.tls.server_name");
    let e = fails_at(&tls, "upstreams.app.tls.ca");
    assert!(
        e.message
            .starts_with("cannot read ca bundle \"/nonexistent/ca.pem\""),
        "{e:?}"
    );
}

#[test]
fn tenants_sources_fallback_and_bounds() {
    ok(&top(
        "tenants: { from: [ { header: x-tenant-id }, { query: tenant } ], fallback: reject }",
    ));
    ok(&top("tenants: { from: [ { header: X-Tenant-Id } ] }"));
    let e = one(&top("tenants: { from: [] }"));
    assert_eq!(e.path, "tenants.from");
    fails_at(
        &top("tenants: { from: [ { header: x-a, query: t } ] }"),
        "tenants.from[0]",
    );
    fails_at(&top("tenants: { from: [ {} ] }"), "tenants.from[0]");
    ok(&top(
        "tenants: { from: [ { header: x-tenant-id }, { client_ip: peer } ], fallback: reject }",
    ));
    ok(&top(
        "tenants: { from: [ { client_ip: x-forwarded-for } ] }",
    ));
    let e = fails_at(
        &top("tenants: { from: [ { client_ip: forwarded } ] }"),
        "tenants.from[0].client_ip",
    );
    assert!(e.message.contains("x-forwarded-for"), "{e:?}");
    let e = fails_at(
        &top("tenants: { from: [ { header: x-a, client_ip: peer } ] }"),
        "tenants.from[0]",
    );
    assert!(e.message.contains("`client_ip`"), "{e:?}");
    ok(&top(
        "tenants: { from: [ { client_ip: { from: x-forwarded-for, trusted_hops: 2, ipv6_prefix: 64 } } ] }",
    ));
    ok(&top(
        "tenants: { from: [ { client_ip: { from: peer, ipv6_prefix: 56 } } ] }",
    ));
    for (source, path, says) in [
        (
            "{ from: peer, trusted_hops: 1 }",
            "tenants.from[0].client_ip.trusted_hops",
            "only applies",
        ),
        (
            "{ from: x-forwarded-for, trusted_hops: 0 }",
            "tenants.from[0].client_ip.trusted_hops",
            "out of range",
        ),
        (
            "{ from: x-forwarded-for, trusted_hops: 11 }",
            "tenants.from[0].client_ip.trusted_hops",
            "out of range",
        ),
        (
            "{ from: peer, ipv6_prefix: 0 }",
            "tenants.from[0].client_ip.ipv6_prefix",
            "out of range",
        ),
        (
            "{ from: peer, ipv6_prefix: 129 }",
            "tenants.from[0].client_ip.ipv6_prefix",
            "out of range",
        ),
        (
            "{ from: peer, depth: 2 }",
            "tenants.from[0].client_ip.depth",
            "unknown",
        ),
        ("{ ipv6_prefix: 64 }", "tenants.from[0].client_ip", "from"),
    ] {
        let e = fails_at(
            &top(&format!(
                "tenants: {{ from: [ {{ client_ip: {source} }} ] }}"
            )),
            path,
        );
        assert!(e.message.contains(says), "{source}: {e:?}");
    }
    fails_at(
        &top("tenants: { from: [ { header: \"x tenant\" } ] }"),
        "tenants.from[0].header",
    );
    fails_at(
        &top("tenants: { from: [ { header: \"\" } ] }"),
        "tenants.from[0].header",
    );
    fails_at(
        &top("tenants: { from: [ { query: \"\" } ] }"),
        "tenants.from[0].query",
    );
    let e = fails_at(
        &top("tenants: { fallback: \"no spaces\" }"),
        "tenants.fallback",
    );
    assert!(e.message.contains("\"no spaces\""), "{e:?}");
    fails_at(
        &top(&format!("tenants: {{ fallback: {} }}", "a".repeat(129))),
        "tenants.fallback",
    );
    ok(&top(&format!(
        "tenants: {{ fallback: \"{}\" }}",
        "a.b_c:d@e-1".repeat(11)
    )));
    fails_at(&top("tenants: { max_tracked: 0 }"), "tenants.max_tracked");
}

/// `client_ip: peer` names a tenant for every request, so a source after it is never tried and
/// `fallback` never acts: each warns at its place. A `jwt` source after it still acts when a
/// `jwt` source comes before it (a token the first refuses is tried on the later ones only).
#[test]
fn sources_after_client_ip_peer_and_the_fallback_warn() {
    let text = "\
tenants:
  from:
    - client_ip: peer
    - header: x-tenant-id
    - client_ip: { from: x-forwarded-for }
  fallback: reject
";
    let w = warnings(&top(text));
    let at: Vec<(usize, usize, &str)> = w.iter().map(super::spot).collect();
    assert_eq!(
        at,
        [
            (17, 7, "tenants.from[1]"),
            (18, 7, "tenants.from[2]"),
            (19, 3, "tenants.fallback"),
        ],
        "{w:#?}"
    );
    assert!(
        w[0].message
            .contains("comes after `client_ip: peer` (tenants.from[0])"),
        "{w:#?}"
    );
    assert!(w[2].message.contains("the fallback never acts"), "{w:#?}");
    // A peer source last, the fallback left out: nothing to warn about.
    let w = warnings(&top(
        "tenants: { from: [ { header: x-tenant-id }, { client_ip: peer } ] }",
    ));
    assert!(w.is_empty(), "{w:#?}");
    // x-forwarded-for names no one without the header: what follows it acts.
    let w = warnings(&top(
        "tenants: { from: [ { client_ip: x-forwarded-for }, { header: x-t } ], fallback: anon }",
    ));
    assert!(w.is_empty(), "{w:#?}");
    // A second jwt after the peer source is tried when the first jwt refuses a token.
    let jwt =
        |iss: &str| format!("{{ jwt: {{ claim: sub, jwks: https://{iss}.test/jwks.json }} }}");
    let w = warnings(&top(&format!(
        "tenants: {{ from: [ {}, {{ client_ip: peer }}, {}, {{ query: t }} ] }}",
        jwt("a"),
        jwt("b")
    )));
    let at: Vec<&str> = w
        .iter()
        .filter(|e| e.message.contains("client_ip: peer"))
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(at, ["tenants.from[3]"], "{w:#?}");
    let w = warnings(&top(&format!(
        "tenants: {{ from: [ {{ client_ip: peer }}, {} ] }}",
        jwt("b")
    )));
    let at: Vec<&str> = w.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(at, ["tenants.from[1]"], "{w:#?}");
}

/// A policy or an upstream that no route names acts on no request: each warns at its key (a
/// route that lacks its `policy:` line is a plain proxy without a word). Names used by a
/// route, on any listener, are not warned about.
#[test]
fn a_policy_or_upstream_no_route_names_warns_at_its_key() {
    assert!(warnings(BASE).is_empty());
    let text = BASE
        .replace(
            "  p: {}
",
            "  p: {}
  standard: { timeout: { request: 2s } }
",
        )
        .replace(
            "    endpoints: [127.0.0.1:3000]
",
            "    endpoints: [127.0.0.1:3000]
  spare:
    endpoints: [127.0.0.1:3001]
",
        );
    let w = warnings(&text);
    let at: Vec<(usize, usize, &str)> = w.iter().map(super::spot).collect();
    assert_eq!(
        at,
        [(5, 3, "upstreams.spare"), (9, 3, "policies.standard")],
        "{w:#?}"
    );
    assert!(
        w[1].message
            .contains("no route names this policy (`policy: standard`)"),
        "{w:#?}"
    );
    assert!(
        w[0].message
            .contains("no route names this upstream (`upstream: spare`)"),
        "{w:#?}"
    );
    // Named by a route of a second listener: both act.
    let used = format!(
        "{text}  - name: outbound\n    direction: outbound\n    listen: 127.0.0.1:8081\n    routes:\n      - upstream: spare\n        policy: standard\n"
    );
    let w = warnings(&used);
    assert!(w.is_empty(), "{w:#?}");
}

#[test]
fn runtime_bounds() {
    ok(&top("runtime: { max_header_bytes: 8KiB }"));
    ok(&top("runtime: { max_header_bytes: 1MiB }"));
    // HTTP/1.1's parser reads at least 8 KiB: a smaller limit would hold for HTTP/2 only.
    fails_at(
        &top("runtime: { max_header_bytes: 1KiB }"),
        "runtime.max_header_bytes",
    );
    let e = one(&top("runtime: { max_header_bytes: 8191 }"));
    assert_eq!(
        (e.path.as_str(), e.line, e.column),
        ("runtime.max_header_bytes", 14, 30)
    );
    fails_at(
        &top("runtime: { max_header_bytes: 2MiB }"),
        "runtime.max_header_bytes",
    );
    fails_at(
        &top("runtime: { max_connections: 0 }"),
        "runtime.max_connections",
    );
    fails_at(
        &top("runtime: { header_read_timeout: 0s }"),
        "runtime.header_read_timeout",
    );
}

#[test]
fn timeouts() {
    ok(&policy("{ timeout: { request: 15s, per_try: 5s } }"));
    ok(&policy("{ timeout: { request: 1s, per_try: auto } }"));
    let e = one(&policy("{ timeout: { request: 1s, per_try: 2s } }"));
    assert_eq!(e.path, "policies.p.timeout.per_try");
    assert!(
        e.message.contains("2s") && e.message.contains("1s"),
        "{e:?}"
    );
    let auto = policy("{ timeout: { per_try: { auto: { min: 2s, max: 1s } } } }");
    fails_at(&auto, "policies.p.timeout.per_try.auto.min");
    fails_at(
        &policy("{ timeout: { request: 0s } }"),
        "policies.p.timeout.request",
    );
}

#[test]
fn retries() {
    ok(&policy(
        "{ retry: { attempts: 10, budget: { ratio: 0%, min_per_second: 0 } } }",
    ));
    fails_at(
        &policy("{ retry: { attempts: 0 } }"),
        "policies.p.retry.attempts",
    );
    let e = fails_at(
        &policy("{ retry: { attempts: 11 } }"),
        "policies.p.retry.attempts",
    );
    assert!(e.message.starts_with("11 is out of range"), "{e:?}");
    fails_at(
        &policy("{ retry: { attempts: 3, backoff: { base: 1s, max: 100ms } } }"),
        "policies.p.retry.backoff.base",
    );
    fails_at(
        &policy("{ retry: { attempts: 3, backoff: { base: 1s } } }"),
        "policies.p.retry.backoff.base",
    );
    fails_at(
        &policy("{ retry: { attempts: 3, budget: { window: 0s } } }"),
        "policies.p.retry.budget.window",
    );
    fails_at(
        &policy("{ retry: { attempts: 3, on: [] } }"),
        "policies.p.retry.on",
    );
    fails_at(
        &policy("{ retry: { attempts: 3, on: [200, 700] } }"),
        "policies.p.retry.on[1]",
    );
    fails_at(
        &policy("{ retry: { attempts: 3, on: [timeout, 503, timeout] } }"),
        "policies.p.retry.on[2]",
    );
}

#[test]
fn rate_limits() {
    ok(&policy("{ rate_limit: { per_tenant: { rate: 100/s }, overrides: { trial: [ { rate: 5/s, burst: 5 }, { rate: 10000/d, name: daily } ] } } }"));
    let e = one(&policy(
        "{ rate_limit: { per_tenant: { rate: 100/s, burst: 0 } } }",
    ));
    assert_eq!(
        (e.path.as_str(), e.line, e.column),
        ("policies.p.rate_limit.per_tenant.burst", 6, 56)
    );
    fails_at(
        &policy("{ rate_limit: { total: [ { rate: 1/s }, { rate: 1/s, burst: 0 } ] } }"),
        "policies.p.rate_limit.total[1].burst",
    );
    fails_at(
        &policy("{ rate_limit: { total: { rate: 0/s } } }"),
        "policies.p.rate_limit.total.rate",
    );
    fails_at(
        &policy("{ rate_limit: { per_tenant: [] } }"),
        "policies.p.rate_limit.per_tenant",
    );
    let dup = policy(
        "{ rate_limit: { per_tenant: [ { rate: 1/s, name: a }, { rate: 9/d, name: a } ] } }",
    );
    fails_at(&dup, "policies.p.rate_limit.per_tenant[1].name");
    fails_at(
        &policy("{ rate_limit: { per_tenant: { rate: 1/s, name: \"a b\" } } }"),
        "policies.p.rate_limit.per_tenant.name",
    );
    let e = fails_at(
        &policy("{ rate_limit: { overrides: { \"bad tenant\": { rate: 1/s } } } }"),
        "policies.p.rate_limit.overrides.bad tenant",
    );
    assert_eq!((e.line, e.column), (6, 35));
}

#[test]
fn circuit_breakers() {
    ok(&policy("{ circuit_breaker: { consecutive_failures: 5, failure_rate: { threshold: 50% }, open_for_max: 1m } }"));
    fails_at(
        &policy("{ circuit_breaker: { consecutive_failures: 0 } }"),
        "policies.p.circuit_breaker.consecutive_failures",
    );
    let fr = |x: &str| policy(&format!("{{ circuit_breaker: {{ failure_rate: {x} }} }}"));
    fails_at(
        &fr("{ threshold: 0% }"),
        "policies.p.circuit_breaker.failure_rate.threshold",
    );
    fails_at(
        &fr("{ threshold: 50%, window: 5, min_calls: 10 }"),
        "policies.p.circuit_breaker.failure_rate.window",
    );
    // A breaker keeps a byte per call of its window: 4294967295 would take 4 GiB each.
    ok(&fr("{ threshold: 50%, window: 10000 }"));
    let e = fails_at(
        &fr("{ threshold: 50%, window: 4294967295 }"),
        "policies.p.circuit_breaker.failure_rate.window",
    );
    assert!(e.message.contains("at most 10000"), "{e:?}");
    fails_at(
        &fr("{ threshold: 50%, window: 5, min_calls: 0 }"),
        "policies.p.circuit_breaker.failure_rate.min_calls",
    );
    fails_at(
        &policy("{ circuit_breaker: { half_open_probes: 0 } }"),
        "policies.p.circuit_breaker.half_open_probes",
    );
    fails_at(
        &policy("{ circuit_breaker: { open_for: 10s, open_for_max: 5s } }"),
        "policies.p.circuit_breaker.open_for_max",
    );
    fails_at(
        &policy("{ circuit_breaker: { slow_call: { duration: 1s, threshold: 0% } } }"),
        "policies.p.circuit_breaker.slow_call.threshold",
    );
}

#[test]
fn load_shedding() {
    ok(&policy("{ load_shed: { max_in_flight: 2, per_tenant_max_in_flight: 2, queue: { size: 0 }, priority: { header: x-priority } } }"));
    fails_at(
        &policy("{ load_shed: { max_in_flight: 0 } }"),
        "policies.p.load_shed.max_in_flight",
    );
    fails_at(
        &policy("{ load_shed: { per_tenant_max_in_flight: 0 } }"),
        "policies.p.load_shed.per_tenant_max_in_flight",
    );
    let e = one(&policy(
        "{ load_shed: { max_in_flight: 4, per_tenant_max_in_flight: 8 } }",
    ));
    assert_eq!(e.message, "8 is larger than max_in_flight 4");
    fails_at(
        &policy("{ load_shed: { adaptive: { min: 0, max: 10 } } }"),
        "policies.p.load_shed.adaptive.min",
    );
    fails_at(
        &policy("{ load_shed: { adaptive: { min: 20, max: 10 } } }"),
        "policies.p.load_shed.adaptive.min",
    );
    fails_at(
        &policy("{ load_shed: { priority: { header: \"x:p\" } } }"),
        "policies.p.load_shed.priority.header",
    );
}

#[test]
fn no_input_panics() {
    for text in [
        "{",
        "]",
        "version: [",
        "*a",
        "&a [*a]",
        "listeners: [ { routes: [ { upstream: 1 } ] } ]",
        "\u{0}",
        "? [a]\n: b\n",
        "version: 1\n---\nversion: 1\n",
    ] {
        assert!(!errors(text).is_empty(), "{text:?} must be refused");
    }
    // Deep nesting must neither overflow the stack nor be accepted.
    let deep = format!(
        "version: 1\nlisteners: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(one(&deep).message.contains("nests deeper than 64 levels"));
    let deep = format!(
        "version: 1\nx: {}1{}\n",
        "{a: ".repeat(5_000),
        "}".repeat(5_000)
    );
    assert!(!errors(&deep).is_empty());
}

#[test]
fn mutated_files_never_panic() {
    let spec = super::SPEC_EXAMPLE;
    // Files cut short (every 11th character, to keep the test quick in debug builds).
    for (i, _) in spec.char_indices().step_by(11) {
        let _ = errors(&spec[..i]);
    }
    // Every line left out.
    let lines: Vec<&str> = spec.lines().collect();
    for skip in 0..lines.len() {
        let text: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, l)| *l)
            .collect();
        let _ = errors(&text.join("\n"));
    }
    // Characters that mean something to YAML, dropped in at random places.
    let mut rng = fastrand::Rng::with_seed(7);
    let specials: Vec<char> = ":-[]{}\t #&*!|>'\"\n,?%@`0".chars().collect();
    let chars: Vec<char> = spec.chars().collect();
    for _ in 0..400 {
        let mut c = chars.clone();
        for _ in 0..rng.usize(1..4) {
            let at = rng.usize(..c.len());
            c[at] = specials[rng.usize(..specials.len())];
        }
        let _ = errors(&c.into_iter().collect::<String>());
    }
}

/// `protocol: http2` is taken; the pool's keys, which one multiplexed connection per endpoint
/// leaves nothing to act on, draw a warning where they are written; another protocol is
/// refused.
#[test]
fn an_http2_upstream_warns_at_the_pool_keys_it_does_not_use() {
    ok(&upstream(
        "{ endpoints: [127.0.0.1:3000], protocol: http2 }",
    ));
    ok(&upstream(
        "{ endpoints: [127.0.0.1:3000], protocol: http1, pool_max_idle: 4 }",
    ));
    assert!(warnings(&upstream(
        "{ endpoints: [127.0.0.1:3000], protocol: http2 }"
    ))
    .is_empty());
    let w = warnings(&upstream(
        "{ endpoints: [127.0.0.1:3000], protocol: http2, pool_max_idle: 4, max_connections: 9 }",
    ));
    let at: Vec<&str> = w.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        at,
        [
            "upstreams.app.pool_max_idle",
            "upstreams.app.max_connections"
        ],
        "{w:?}"
    );
    assert!(w[0].message.contains("does nothing"), "{w:?}");
    fails_at(
        &upstream("{ endpoints: [127.0.0.1:3000], protocol: http3 }"),
        "upstreams.app.protocol",
    );
}

/// An upstream with `tls` that an outbound listener's route can tunnel CONNECTs to is warned
/// about at its `tls`: a tunnel to it goes inside rampart's TLS session with it, so its clients
/// must send plaintext inside (an `HTTPS_PROXY` client's own TLS there would be TLS in TLS). A
/// route with a `path_prefix` takes no CONNECT (its target has no path), an inbound one none.
#[test]
fn a_tls_upstream_that_an_outbound_route_tunnels_to_warns_at_its_tls() {
    use crate::tls::tests::support::{Ca, Files};
    let (ca, files) = (Ca::new("test ca"), Files::new());
    let bundle = files.ca("ca", &ca);
    let tls = upstream(&format!(
        "{{ endpoints: [127.0.0.1:3000], tls: {{ ca: {} }} }}",
        bundle.display()
    ));
    assert!(
        warnings(&tls).is_empty(),
        "an inbound route takes no CONNECT"
    );
    let outbound = |route: &str| {
        format!("{tls}  - name: egress\n    direction: outbound\n    listen: 127.0.0.1:8081\n    routes:\n      - {route}\n")
    };
    let prefixed = outbound("{ match: { path_prefix: /api }, upstream: app }");
    assert!(
        warnings(&prefixed).is_empty(),
        "a path prefix takes no CONNECT"
    );
    let w = warnings(&outbound(
        "{ match: { host: app.internal }, upstream: app }",
    ));
    let at: Vec<_> = w.iter().map(spot).collect();
    assert_eq!(at, [(3, 39, "upstreams.app.tls")], "{w:#?}");
    for said in [
        "listener egress",
        "inside rampart's TLS",
        "plaintext",
        "TLS in TLS",
    ] {
        assert!(w[0].message.contains(said), "{said:?}: {w:#?}");
    }
    // No TLS, nothing to say.
    let plain = outbound("{ upstream: app }")
        .replace(&format!(", tls: {{ ca: {} }}", bundle.display()), "");
    assert!(warnings(&plain).is_empty(), "{plain}");
}

#[test]
fn a_route_to_its_own_listener_is_refused() {
    // Before: accepted, and each request came back through the listener some 700 times.
    let own = BASE.replace("127.0.0.1:3000", "127.0.0.1:8080");
    let e = one(&own);
    assert_eq!(e.path, "listeners[0].routes[0].upstream", "{e:?}");
    assert!(e.message.contains("this listener's own address"), "{e:?}");
    let any = own.replace("listen: 127.0.0.1:8080", "listen: 0.0.0.0:8080");
    assert_eq!(one(&any).path, "listeners[0].routes[0].upstream");
    // Another port, or another host's address, is not this listener.
    ok(&BASE.replace("127.0.0.1:3000", "127.0.0.1:8081"));
    ok(&BASE.replace("127.0.0.1:3000", "10.0.0.9:8080"));
}

/// A plain file of more values than rampart takes is told it has too many, not that it
/// expands through aliases it does not have.
#[test]
fn a_plain_file_over_the_value_budget_is_told_so_without_aliases() {
    let tenants: Vec<String> = (0..100_500).map(|i| format!("t{i}")).collect();
    let text = format!(
        "version: 1\ntenants:\n  from: [ {{ header: x-tenant-id }} ]\n  plans:\n    plan_header: x-tenant-plan\n    assign: {{ pro: [{}] }}\n",
        tenants.join(", ")
    );
    let e = one(&text);
    assert!(e.message.contains("has more than 100000 values"), "{e:?}");
    assert!(!e.message.contains("alias"), "{e:?}");
}

/// A few lines that alias (or merge, `<<: *x`) a node ten times over, level upon level, would
/// grow into millions of values: such a file is refused at the node budget, whichever way it
/// multiplies, before any of it is judged.
#[test]
fn aliases_and_merge_keys_cannot_grow_a_small_file_without_bound() {
    let bomb = |merge: bool| {
        let mut text = String::from("version: 1\nl0: &l0 { k: [1, 1, 1, 1, 1, 1, 1, 1, 1, 1] }\n");
        for i in 1..8 {
            let p = i - 1;
            let ten = vec![format!("*l{p}"); 10].join(", ");
            if merge {
                text.push_str(&format!("l{i}: &l{i} {{ <<: *l{p}, m: [{ten}] }}\n"));
            } else {
                text.push_str(&format!("l{i}: &l{i} [{ten}]\n"));
            }
        }
        text
    };
    for merge in [false, true] {
        let text = bomb(merge);
        assert!(text.len() < 2_000, "a small file: {} bytes", text.len());
        let e = one(&text);
        assert!(
            e.message.contains("expands to more than 100000 values"),
            "merge {merge}: {e:?}"
        );
    }
}
