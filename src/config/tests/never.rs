//! Settings valid on their own that can never act where they stand: each draws a warning at
//! its key (`validate/never.rs`), and the same setting where it can act draws none.

use super::{policy, spot, upstream, warnings, BASE};

/// The paths of `text`'s warnings.
fn warned(text: &str) -> Vec<String> {
    warnings(text).into_iter().map(|w| w.path).collect()
}

#[test]
fn an_outlier_section_that_can_eject_no_endpoint_draws_a_warning() {
    let two = "[127.0.0.1:3000, 127.0.0.1:3001]";
    // 0% ejects nothing, whatever the endpoints.
    let text = upstream(&format!(
        "{{ endpoints: {two}, outlier: {{ consecutive_failures: 3, max_ejected: 0% }} }}"
    ));
    let all = warnings(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(spot(&all[0]), (3, 91, "upstreams.app.outlier.max_ejected"));
    assert!(all[0].message.contains("0%"), "{}", all[0].message);
    // One IP endpoint: the last available endpoint is never ejected (default max_ejected).
    let text = upstream("{ endpoints: [127.0.0.1:3000], outlier: { consecutive_failures: 3 } }");
    let all = warnings(&text);
    assert_eq!(spot(&all[0]).2, "upstreams.app.outlier", "{all:#?}");
    assert!(
        all[0].message.contains("single endpoint"),
        "{}",
        all[0].message
    );
    // 40% of two rounds down to none.
    let text = upstream(&format!(
        "{{ endpoints: {two}, outlier: {{ consecutive_failures: 3, max_ejected: 40% }} }}"
    ));
    let all = warnings(&text);
    assert_eq!(
        spot(&all[0]).2,
        "upstreams.app.outlier.max_ejected",
        "{all:#?}"
    );
    assert!(
        all[0].message.contains("at least 50%"),
        "{}",
        all[0].message
    );
    // Where it can act: 50% of two, or a name that may yield several addresses.
    let text = upstream(&format!(
        "{{ endpoints: {two}, outlier: {{ consecutive_failures: 3, max_ejected: 50% }} }}"
    ));
    assert_eq!(warned(&text), Vec::<String>::new());
    let text = upstream("{ endpoints: [app.internal:3000], outlier: { consecutive_failures: 3 } }");
    assert_eq!(warned(&text), Vec::<String>::new());
}

#[test]
fn resolve_every_on_an_upstream_of_ip_addresses_draws_a_warning() {
    let text = upstream("{ endpoints: [127.0.0.1:3000, \"[::1]:3001\"], resolve_every: 10s }");
    let all = warnings(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(spot(&all[0]), (3, 53, "upstreams.app.resolve_every"));
    // A name among the endpoints is resolved again; an IP upstream without the key is quiet.
    let text = upstream("{ endpoints: [127.0.0.1:3000, app.internal:3001], resolve_every: 10s }");
    assert_eq!(warned(&text), Vec::<String>::new());
    assert_eq!(warned(BASE), Vec::<String>::new());
}

#[test]
fn a_slow_call_duration_no_try_can_outlast_draws_a_warning() {
    let breaker = |timeout: &str, duration: &str| {
        policy(&format!(
            "{{ {timeout}circuit_breaker: {{ slow_call: {{ duration: {duration}, threshold: 50% }} }} }}"
        ))
    };
    let path = "policies.p.circuit_breaker.slow_call.duration";
    // As long as the request timeout, or longer: no call can be slow.
    assert_eq!(warned(&breaker("timeout: { request: 2s }, ", "2s")), [path]);
    assert_eq!(warned(&breaker("timeout: { request: 2s }, ", "3s")), [path]);
    // A per-try timeout bounds each try too.
    assert_eq!(
        warned(&breaker("timeout: { request: 5s, per_try: 1s }, ", "1s")),
        [path]
    );
    // Shorter than the timeout, or no timeout at all: it can act.
    let none: Vec<String> = Vec::new();
    assert_eq!(warned(&breaker("timeout: { request: 2s }, ", "1s")), none);
    assert_eq!(warned(&breaker("", "1s")), none);
    // Another route to the same upstream with no timeout feeds the breaker slow calls
    // (a breaker guards every route to its upstream, SPEC §2).
    let text = breaker("timeout: { request: 2s }, ", "2s").replace(
        "    routes:\n",
        "    routes:\n      - upstream: app\n        match: { path_prefix: /other }\n",
    );
    assert_eq!(warned(&text), none);
}

#[test]
fn a_fallback_for_an_answer_its_routes_never_give_draws_a_warning() {
    let fb = |on: &str, more: &str| {
        policy(&format!(
            "{{ {more}fallback: {{ on: [{on}], static: {{ status: 503, body: x }} }} }}"
        ))
    };
    let none: Vec<String> = Vec::new();
    let text = fb("upstream_unavailable, shed", "");
    let all = warnings(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(spot(&all[0]), (6, 47, "policies.p.fallback.on[1]"));
    assert!(all[0].message.contains("load_shed"), "{}", all[0].message);
    assert_eq!(
        warned(&fb("shed", "load_shed: { max_in_flight: 10 }, ")),
        none
    );
    // circuit_open: only where a breaker guards the route's upstream, its own or another
    // policy's that reaches the same upstream.
    assert_eq!(
        warned(&fb("circuit_open", "")),
        ["policies.p.fallback.on[0]"]
    );
    let guarded = "circuit_breaker: { consecutive_failures: 3 }, ";
    assert_eq!(warned(&fb("circuit_open", guarded)), none);
    let text = fb("circuit_open", "")
        .replace("  p: {", &format!("  q: {{ {guarded}}}\n  p: {{"))
        .replace(
            "    routes:\n",
            "    routes:\n      - upstream: app\n        match: { path_prefix: /q }\n        policy: q\n",
        );
    assert_eq!(warned(&text), none);
    // A timeout can always come: a gRPC call's grpc-timeout sets a deadline on any route.
    assert_eq!(warned(&fb("timeout", "")), none);
}

#[test]
fn a_retry_entry_or_budget_that_can_never_act_draws_a_warning() {
    let retry = |more: &str, on: &str, budget: &str| {
        policy(&format!(
            "{{ {more}retry: {{ attempts: 3, on: [{on}]{budget} }} }}"
        ))
    };
    let none: Vec<String> = Vec::new();
    // `timeout` retries only a try cut by per_try or idle (5m unless set), before the
    // request's deadline.
    assert_eq!(
        warned(&retry("timeout: { request: 1s }, ", "503, timeout", "")),
        ["policies.p.retry.on[1]"]
    );
    assert_eq!(
        warned(&retry("timeout: { idle: 0s }, ", "timeout", "")),
        ["policies.p.retry.on[0]"]
    );
    assert_eq!(warned(&retry("", "timeout", "")), none);
    assert_eq!(
        warned(&retry(
            "timeout: { request: 1s, idle: 999ms }, ",
            "timeout",
            ""
        )),
        none
    );
    // An idle timeout as long as the request's never acts at all.
    assert_eq!(
        warned(&retry(
            "timeout: { request: 1s, idle: 1s }, ",
            "timeout",
            ""
        )),
        ["policies.p.timeout.idle", "policies.p.retry.on[0]"]
    );
    // A per-try limit as long as the request's never cuts a try first.
    assert_eq!(
        warned(&retry(
            "timeout: { request: 1s, per_try: 1s }, ",
            "timeout",
            ""
        )),
        ["policies.p.retry.on[0]"]
    );
    assert_eq!(
        warned(&retry(
            "timeout: { request: 1s, per_try: { auto: { min: 1s, max: 2s } } }, ",
            "timeout",
            ""
        )),
        ["policies.p.retry.on[0]"]
    );
    assert_eq!(
        warned(&retry(
            "timeout: { request: 1s, per_try: 999ms }, ",
            "timeout",
            ""
        )),
        none
    );
    assert_eq!(
        warned(&retry("timeout: { per_try: 200ms }, ", "timeout", "")),
        none
    );
    assert_eq!(
        warned(&retry("timeout: { per_try: auto }, ", "timeout", "")),
        none
    );
    // A budget under one retry per window rounds down to none.
    let all = warnings(&retry(
        "",
        "503",
        ", budget: { ratio: 0%, min_per_second: 1, window: 500ms }",
    ));
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(spot(&all[0]).2, "policies.p.retry.budget");
    assert!(all[0].message.contains("rounds down"), "{}", all[0].message);
    assert_eq!(
        warned(&retry(
            "",
            "503",
            ", budget: { ratio: 0%, min_per_second: 0 }"
        )),
        ["policies.p.retry.budget"]
    );
    // One retry per window, or any ratio: it can act.
    assert_eq!(
        warned(&retry(
            "",
            "503",
            ", budget: { ratio: 0%, min_per_second: 2, window: 500ms }"
        )),
        none
    );
    assert_eq!(
        warned(&retry(
            "",
            "503",
            ", budget: { ratio: 1%, min_per_second: 0 }"
        )),
        none
    );
}
