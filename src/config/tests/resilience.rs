//! `fault`, `fallback`, `idempotency` and `audit`: accepted shapes, bounds with their places.

use super::{errors, fails_at, found, ok, policy, spot, warnings, BASE};

#[test]
fn the_spec_sections_are_accepted() {
    ok(&policy(
        "{ fault: { header: x-rampart-fault, delay: { percent: 10%, duration: 200ms }, abort: { percent: 5%, status: 503 } } }",
    ));
    ok(&policy(
        r#"{ fallback: { on: [circuit_open, upstream_unavailable, timeout, shed], stale: 5m, static: { status: 200, content_type: application/json, body: '{"items":[]}' } } }"#,
    ));
    ok(&format!(
        "{BASE}audit: {{ file: /tmp/rampart-audit.jsonl }}\n"
    ));
}

#[test]
fn an_audit_file_whose_directory_is_missing_is_refused() {
    let e = fails_at(
        &format!("{BASE}audit: {{ file: /nonexistent/rampart/audit.jsonl }}\n"),
        "audit.file",
    );
    assert!(e.message.contains("does not exist"), "{e}");
    fails_at(&format!("{BASE}audit: {{ file: /tmp/ }}\n"), "audit.file");
}

/// A directory where the trail should be is called what it is.
#[test]
fn an_audit_file_that_is_a_directory_says_so() {
    for dir in ["/tmp", "/tmp/"] {
        let e = fails_at(&format!("{BASE}audit: {{ file: {dir} }}\n"), "audit.file");
        assert!(e.message.ends_with("is a directory"), "{e}");
    }
}

#[test]
fn fault_bounds_are_checked_at_their_keys() {
    let e = fails_at(
        &policy("{ fault: { abort: { percent: 5%, status: 600 } } }"),
        "policies.p.fault.abort.status",
    );
    assert!(e.message.contains("200 to 599"), "{e}");
    fails_at(
        &policy("{ fault: { delay: { percent: 10%, duration: 0s } } }"),
        "policies.p.fault.delay.duration",
    );
    fails_at(
        &policy("{ fault: { header: x-chaos } }"),
        "policies.p.fault",
    );
    fails_at(
        &policy("{ fault: { header: 'bad header', abort: { percent: 1%, status: 503 } } }"),
        "policies.p.fault.header",
    );
    assert!(!errors(&policy(
        "{ fault: { abort: { percent: 150%, status: 503 } } }"
    ))
    .is_empty());
}

#[test]
fn fallback_needs_something_to_answer() {
    fails_at(
        &policy("{ fallback: { on: [timeout] } }"),
        "policies.p.fallback",
    );
    fails_at(
        &policy("{ fallback: { on: [], stale: 1m } }"),
        "policies.p.fallback.on",
    );
    fails_at(
        &policy("{ fallback: { on: [timeout, timeout], stale: 1m } }"),
        "policies.p.fallback.on[1]",
    );
    fails_at(
        &policy("{ fallback: { on: [timeout], static: { status: 99 } } }"),
        "policies.p.fallback.static.status",
    );
    assert!(!errors(&policy("{ fallback: { on: [rate_limited], stale: 1m } }")).is_empty());
}

#[test]
fn idempotency_bounds_are_checked() {
    fails_at(
        &policy("{ idempotency: { max_entries: 0 } }"),
        "policies.p.idempotency.max_entries",
    );
    fails_at(
        &policy("{ idempotency: { ttl: 0s } }"),
        "policies.p.idempotency.ttl",
    );
    // 0 would digest no request body: every keyed request with one would run unprotected.
    let e = fails_at(
        &policy("{ idempotency: { max_body: 0 } }"),
        "policies.p.idempotency.max_body",
    );
    assert!(e.message.starts_with("must be at least 1 (got 0)"), "{e}");
    assert!(e.message.contains("without the key's protection"), "{e}");
    assert!(warnings(&policy("{ idempotency: { max_body: 1 } }")).is_empty());
    // The cap on kept answers must hold one answer of max_body, and is at most 4GiB.
    let e = fails_at(
        &policy("{ idempotency: { max_body: 2MiB, max_bytes: 1MiB } }"),
        "policies.p.idempotency.max_bytes",
    );
    assert!(
        e.message
            .starts_with("must be at least max_body (2MiB), got 1MiB"),
        "{e}"
    );
    let e = fails_at(
        &policy("{ idempotency: { max_bytes: 5GiB } }"),
        "policies.p.idempotency.max_bytes",
    );
    assert!(e.message.contains("the most is 4096MiB"), "{e}");
    for fine in ["{ max_body: 1MiB, max_bytes: 1MiB }", "{ max_bytes: 4GiB }"] {
        let text = policy(&format!("{{ idempotency: {fine} }}"));
        assert!(errors(&text).is_empty(), "{fine}");
        assert!(warnings(&text).is_empty(), "{fine}");
    }
}

/// A fault's delay or abort of 0% is accepted (a drill turned down to nothing) but injects
/// nothing: a warning at its `percent`, in file order, with the way out.
#[test]
fn a_fault_of_zero_percent_draws_a_warning_at_its_percent() {
    let text = policy(
        "{ fault: { delay: { percent: 0%, duration: 1s }, abort: { percent: 0%, status: 503 } } }",
    );
    let all = warnings(&text);
    let at: Vec<&str> = all.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        at,
        [
            "policies.p.fault.delay.percent",
            "policies.p.fault.abort.percent"
        ],
        "{all:#?}"
    );
    let line = text.lines().find(|l| l.contains("fault")).expect("written");
    let col = line.find("percent: 0%").expect("written") + 1;
    assert_eq!(all[0].column, col, "{}", all[0]);
    assert!(all[1].message.contains("does nothing"), "{}", all[1]);
    assert!(all[1].message.contains("remove `abort`"), "{}", all[1]);
    let some = policy("{ fault: { abort: { percent: 0.1%, status: 503 } } }");
    assert!(warnings(&some).is_empty());
}

/// What a refused start reads of its file, leniently: only a written `audit.file` scalar, and
/// nothing from text that is no YAML, a list, an empty value or a file that names none.
#[test]
fn the_audit_file_of_a_refused_text_is_read_leniently() {
    use super::super::audit_file_of;
    use std::path::PathBuf;
    let named = "version: 1\naudit: { file: /tmp/a.jsonl }\nbogus: [\n";
    assert_eq!(audit_file_of(named), None, "unreadable YAML names nothing");
    let named = "version: 1\naudit: { file: \"/tmp/a b.jsonl\" }\nlisteners: 7\n";
    assert_eq!(audit_file_of(named), Some(PathBuf::from("/tmp/a b.jsonl")));
    for text in [
        "",
        "\u{0}\u{1}garbage",
        "audit: [ /tmp/a.jsonl ]",
        "audit: { file: [ /tmp/a.jsonl ] }",
        "audit: { file: \"\" }",
        "audit:\n  other: /tmp/a.jsonl",
        "version: 1",
    ] {
        assert_eq!(audit_file_of(text), None, "{text:?}");
    }
}

/// An abort with a status below 400 acts, but is almost surely a typo (200 for 500): it is
/// accepted with a warning at its line and column. An error status draws none.
#[test]
fn an_abort_with_a_success_status_draws_a_warning_at_its_place() {
    let text = policy("{ fault: { abort: { percent: 5%, status: 200 } } }");
    let all = warnings(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    let (line, col, path) = spot(&all[0]);
    assert_eq!(path, "policies.p.fault.abort.status");
    let at = text
        .lines()
        .position(|l| l.contains("status: 200"))
        .expect("the line");
    assert_eq!(line, at + 1, "{}", all[0]);
    let expected_col = text
        .lines()
        .nth(at)
        .and_then(|l| l.find("status: 200"))
        .expect("col")
        + 1;
    assert_eq!(col, expected_col, "{}", all[0]);
    assert!(all[0].message.contains("not an error status"), "{}", all[0]);
    for status in [302, 204] {
        let text = policy(&format!(
            "{{ fault: {{ abort: {{ percent: 5%, status: {status} }} }} }}"
        ));
        assert_eq!(warnings(&text).len(), 1, "{status}");
    }
    for status in [400, 503] {
        let text = policy(&format!(
            "{{ fault: {{ abort: {{ percent: 5%, status: {status} }} }} }}"
        ));
        let all = warnings(&text);
        assert!(all.is_empty(), "{status}: {all:#?}");
    }
}

/// A 2xx says a CONNECT's tunnel is open (RFC 9110 §9.3.6): the warning of a 2xx abort in a
/// policy an outbound listener's route carries says what an aborted CONNECT gets, naming the
/// listener. Neither a 3xx there nor a 2xx on an inbound listener (which refuses CONNECT) adds
/// it.
#[test]
fn a_2xx_abort_that_connects_go_through_says_what_they_get() {
    let outbound = |status: u16| {
        policy(&format!(
            "{{ fault: {{ abort: {{ percent: 5%, status: {status} }} }} }}"
        ))
        .replace(
            "name: inbound\n    direction: inbound",
            "name: egress\n    direction: outbound",
        )
    };
    let all = warnings(&outbound(200));
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].path, "policies.p.fault.abort.status");
    assert!(all[0].message.contains("not an error status"), "{}", all[0]);
    assert!(
        all[0].message.contains(
            "Listener egress takes CONNECTs through this policy, and a 2xx says a tunnel is open"
        ),
        "{}",
        all[0]
    );
    assert!(all[0].message.contains("closed right after"), "{}", all[0]);
    // A route with a `path_prefix` (`/` too) takes no CONNECT: a CONNECT's target has no path.
    let prefixed = outbound(200).replace(
        "      - upstream: app\n        policy: p\n",
        "      - match: { path_prefix: / }\n        upstream: app\n        policy: p\n",
    );
    assert_ne!(prefixed, outbound(200));
    for text in [
        outbound(302),
        policy("{ fault: { abort: { percent: 5%, status: 200 } } }"),
        prefixed,
    ] {
        let all = warnings(&text);
        assert_eq!(all.len(), 1, "{all:#?}");
        assert!(!all[0].message.contains("CONNECT"), "{}", all[0]);
    }
}

/// A 1xx is an interim answer, never a request's last: an abort with one is refused at its
/// place, in the words `fallback.static.status` uses. Before, it was only a warning, and the
/// abort came out as a bare 500 from hyper (100, 103), a 101 without `upgrade` and a closed
/// connection, or an HTTP/2 stream reset.
#[test]
fn an_abort_with_an_interim_status_is_refused_at_its_place() {
    for status in [100, 101, 103, 199, 600] {
        let e = fails_at(
            &policy(&format!(
                "{{ fault: {{ abort: {{ percent: 5%, status: {status} }} }} }}"
            )),
            "policies.p.fault.abort.status",
        );
        assert_eq!(
            e.message,
            format!("{status} cannot be an injected abort: use 200 to 599")
        );
    }
    let e = fails_at(
        &policy("{ fallback: { on: [timeout], static: { status: 103 } } }"),
        "policies.p.fallback.static.status",
    );
    assert_eq!(e.message, "103 cannot be a fallback answer: use 200 to 599");
}

/// A static fallback of 204, 205 or 304 goes without content (RFC 9110 §15.3.5, §15.3.6,
/// §15.4.5), so a body given with one is never sent: accepted, with a warning at the body's
/// line and column. Without a body, or with a status that has one, no warning.
#[test]
fn a_static_fallback_body_that_its_status_never_sends_draws_a_warning_at_it() {
    for status in [204, 205, 304] {
        let text = policy(&format!(
            "{{ timeout: {{ request: 50ms }}, fallback: {{ on: [timeout], static: {{ status: {status}, body: hello }} }} }}"
        ));
        let all: Vec<_> = warnings(&text)
            .into_iter()
            .filter(|w| w.path.ends_with(".body"))
            .collect();
        assert_eq!(all.len(), 1, "{status}: {all:#?}");
        let (line, col, path) = spot(&all[0]);
        assert_eq!(path, "policies.p.fallback.static.body");
        assert_eq!((line, col), found(&text, "body: hello"), "{}", all[0]);
        assert!(
            all[0]
                .message
                .starts_with(&format!("a {status} answer carries no content")),
            "{}",
            all[0]
        );
    }
    for quiet in [
        "{ fallback: { on: [timeout], static: { status: 204 } } }",
        "{ fallback: { on: [timeout], static: { status: 304, body: '' } } }",
        "{ fallback: { on: [timeout], static: { status: 200, body: hello } } }",
        "{ fallback: { on: [timeout], static: { status: 206, body: hello } } }",
    ] {
        // (A 2xx is warned of at its status: `a_static_2xx_fallback_for_every_method_draws_a_warning_at_its_status`.)
        let all = warnings(&policy(quiet));
        assert!(
            all.iter().all(|w| !w.path.ends_with(".body")),
            "{quiet}: {all:#?}"
        );
    }
}

/// A static 2xx fallback without `methods` stands in for every method (SPEC §10), and so tells
/// a write that never ran that it succeeded: accepted, with a warning at the status (or at
/// `static` when the status is left to its 200) that names the remedy. With `methods`, or with
/// another status, no warning. A `methods` list that names no method, or a method in lower
/// case (methods are case-sensitive) or twice, or CONNECT (which never gets a fallback: the
/// list would promise what never happens), is refused at the item.
#[test]
fn a_static_2xx_fallback_for_every_method_draws_a_warning_at_its_status() {
    let text = policy(
        "{ fallback: { on: [timeout], static: { status: 200, content_type: application/json, body: '[]' } } }",
    );
    let all = warnings(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    let (line, col, path) = spot(&all[0]);
    assert_eq!(path, "policies.p.fallback.static.status");
    assert_eq!((line, col), found(&text, "status: 200"), "{}", all[0]);
    assert!(
        all[0]
            .message
            .starts_with("a 200 fallback also answers a POST")
            && all[0].message.contains("methods: [GET, HEAD]"),
        "{}",
        all[0]
    );
    // Left to its default of 200: placed at `static`.
    let text = policy("{ fallback: { on: [timeout], static: { body: x } } }");
    let all = warnings(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].path, "policies.p.fallback.static.status");
    assert_eq!(
        (all[0].line, all[0].column),
        found(&text, "static: {"),
        "{}",
        all[0]
    );
    for status in [201, 204, 299] {
        let all = warnings(&policy(&format!(
            "{{ fallback: {{ on: [timeout], static: {{ status: {status} }} }} }}"
        )));
        assert_eq!(all.len(), 1, "{status}: {all:#?}");
        assert!(all[0].message.starts_with(&format!("a {status} fallback")));
    }
    for quiet in [
        "{ fallback: { on: [timeout], static: { status: 300, body: sorry } } }",
        "{ fallback: { on: [timeout], static: { status: 503, body: sorry } } }",
        "{ fallback: { on: [timeout], static: { status: 200, body: '[]', methods: [GET, HEAD] } } }",
        "{ fallback: { on: [timeout], static: { status: 200, methods: [POST, PURGE] } } }",
        "{ fallback: { on: [timeout], stale: 1m } }",
    ] {
        let all = warnings(&policy(quiet));
        assert!(all.is_empty(), "{quiet}: {all:#?}");
    }
    for (methods, item, says) in [
        ("[]", "methods", "an empty list"),
        ("[GET, get]", "methods[1]", "write GET, not get"),
        ("[GET, 'G T']", "methods[1]", "is not an HTTP method"),
        ("[HEAD, HEAD]", "methods[1]", "listed twice"),
        (
            "[GET, CONNECT]",
            "methods[1]",
            "a CONNECT never gets a fallback",
        ),
    ] {
        let text = policy(&format!(
            "{{ fallback: {{ on: [timeout], static: {{ status: 503, methods: {methods} }} }} }}"
        ));
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{methods}: {e:#?}");
        assert_eq!(
            e[0].path,
            format!("policies.p.fallback.static.{item}"),
            "{e:#?}"
        );
        assert!(e[0].message.contains(says), "{methods}: {}", e[0]);
    }
}
