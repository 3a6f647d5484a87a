//! Keys written empty (null): never silently dropped (`validate/nulls.rs`).

use super::{errors, fails_at, one, policy, spot, upstream, warnings, BASE};

/// BASE with `tls:` on its listener, its keys commented out.
fn listener_tls_commented_out() -> String {
    BASE.replace(
        "    routes:\n",
        "    tls:\n      # cert: /etc/rampart/tls/cert.pem\n      # key: /etc/rampart/tls/key.pem\n    routes:\n",
    )
}

#[test]
fn a_null_tls_is_an_error_that_says_what_it_needs() {
    let e = one(&listener_tls_commented_out());
    assert_eq!(spot(&e), (11, 5, "listeners[0].tls"), "{e:?}");
    assert!(e.message.starts_with("is empty (null)"), "{e:?}");
    assert!(e.message.contains("would serve plaintext"), "{e:?}");
    assert!(e.message.contains("it needs `cert` and `key`"), "{e:?}");
    // Every way YAML writes a null.
    for null in ["~", "null", "Null", "NULL", ""] {
        let text = upstream(&format!("{{ endpoints: [127.0.0.1:1], tls: {null} }}"));
        let e = one(&text);
        assert_eq!(e.path, "upstreams.app.tls", "{null:?}: {e:?}");
        assert!(e.message.contains("`tls: {}`"), "{e:?}");
        assert!(e.message.contains("in plaintext"), "{e:?}");
    }
    // `tls: {}` on an upstream is TLS with the defaults, and stays valid.
    assert!(warnings(&upstream("{ endpoints: [127.0.0.1:1], tls: {} }")).is_empty());
    let store = format!(
        "{BASE}global_store: {{ redis: {{ url: \"rediss://127.0.0.1:6380/0\", tls: ~ }} }}\n"
    );
    fails_at(&store, "global_store.redis.tls");
}

#[test]
fn a_null_section_whose_empty_form_is_an_error_is_an_error() {
    let cases = [
        (format!("{BASE}audit:\n"), "audit", "\"file\""),
        (format!("{BASE}tracing: ~\n"), "tracing", "\"otlp\""),
        (
            format!("{BASE}global_store:\n"),
            "global_store",
            "\"redis\"",
        ),
        (
            upstream("{ endpoints: [127.0.0.1:1], health_check: ~ }"),
            "upstreams.app.health_check",
            "\"path\"",
        ),
        (
            upstream("{ endpoints: [127.0.0.1:1], outlier: ~ }"),
            "upstreams.app.outlier",
            "\"consecutive_failures\"",
        ),
        (policy("{ retry: ~ }"), "policies.p.retry", "\"attempts\""),
        (policy("{ fallback: ~ }"), "policies.p.fallback", "\"on\""),
        // Refused by a semantic check, not by its shape, when written `{}`.
        (
            policy("{ fault: ~ }"),
            "policies.p.fault",
            "injects nothing",
        ),
    ];
    for (text, path, needs) in cases {
        let e = one(&text);
        assert_eq!(e.path, path, "{e:?}");
        assert!(
            e.message.starts_with("the section is empty (null): ") && e.message.contains(needs),
            "{e:?}"
        );
    }
}

#[test]
fn a_null_section_whose_empty_form_is_accepted_draws_a_warning() {
    let cases = [
        (
            policy("{ rate_limit: ~ }"),
            "policies.p.rate_limit",
            "admits everything",
        ),
        (
            policy("{ circuit_breaker: ~ }"),
            "policies.p.circuit_breaker",
            "never opens",
        ),
        (
            policy("{ load_shed: ~ }"),
            "policies.p.load_shed",
            "does nothing",
        ),
        (
            policy("{ timeout: ~ }"),
            "policies.p.timeout",
            "does nothing",
        ),
        (
            policy("{ idempotency: ~ }"),
            "policies.p.idempotency",
            "does nothing",
        ),
        (
            BASE.replace(
                "      - upstream: app\n",
                "      - match:\n        upstream: app\n",
            ),
            "listeners[0].routes[0].match",
            // It said "does nothing", but a route without `match` takes every request.
            "so this route matches every request",
        ),
    ];
    for (text, path, says) in cases {
        let w = warnings(&text);
        assert_eq!(w.len(), 1, "{text}\n{w:#?}");
        assert_eq!(w[0].path, path, "{w:?}");
        assert!(
            w[0].message.contains("the section is empty (null)"),
            "{w:?}"
        );
        assert!(w[0].message.contains(says), "{w:?}");
    }
    // Placed on the key, as other warnings are.
    let text = policy("\n    timeout:\n    retry: { attempts: 2 }");
    let w = warnings(&text);
    assert_eq!(spot(&w[0]), (7, 5, "policies.p.timeout"), "{w:?}");
}

#[test]
fn a_null_value_draws_a_warning_and_its_default_applies() {
    let text = policy("{ rate_limit: { per_tenant: { rate: 5/s, burst: } } }");
    let w = warnings(&text);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0].path, "policies.p.rate_limit.per_tenant.burst");
    assert!(
        w[0].message
            .starts_with("is empty (null), so it is read as if it were not written"),
        "{w:?}"
    );
    let cfg = super::super::Config::from_str(&text, "t.yaml").expect("valid");
    let limits = cfg.file.policies["p"]
        .rate_limit
        .as_ref()
        .expect("a rate_limit");
    assert_eq!(
        limits.per_tenant.as_ref().expect("per_tenant").0[0].burst,
        None
    );
}

#[test]
fn every_null_of_a_file_is_reported_in_one_pass() {
    let text = BASE.replace("  p: {}", "  p:\n    retry:\n    circuit_breaker: ~") + "audit:\n";
    let all = errors(&text);
    let paths: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["policies.p.retry", "audit"], "{all:#?}");
}

#[test]
fn a_null_where_a_mapping_is_required_says_empty_not_unit() {
    let e = one(&BASE.replace("  p: {}", "  p:"));
    assert_eq!(e.path, "policies.p");
    assert_eq!(e.message, "invalid type: empty (null), expected a mapping");
    // A key of a struct written null is read as not written, and draws what its `{}` would.
    let e = one(&BASE.replace("    routes:\n", "    access_log:\n    routes:\n"));
    assert_eq!(
        e.message, "the section is empty (null): missing required key \"to\"",
        "{e:?}"
    );
}

/// A struct's key written null is read as if it were not written, whatever its type: its
/// default applies and it draws the warning a null section does, where it was refused for
/// its type ("expected a mapping") before. A required one is still refused.
#[test]
fn a_null_key_with_a_default_is_read_as_not_written() {
    let text = policy(
        "{ retry: { attempts: 2, budget: }, rate_limit: { per_tenant: { rate: 1/s }, overrides: } }",
    );
    let w = warnings(&text);
    let got: Vec<&str> = w.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        got,
        ["policies.p.retry.budget", "policies.p.rate_limit.overrides"],
        "{w:#?}"
    );
    for w in &w {
        assert!(
            w.message.starts_with(
                "the section is empty (null), so it is read as if it were not written"
            ),
            "{w:?}"
        );
    }
    let cfg = super::super::Config::from_str(&text, "t.yaml").expect("valid");
    let with_default = super::super::Config::from_str(
        &policy("{ retry: { attempts: 2 }, rate_limit: { per_tenant: { rate: 1/s } } }"),
        "t.yaml",
    )
    .expect("valid");
    assert_eq!(cfg.file.policies, with_default.file.policies);
    // A value with a default too: `on:` is the default list.
    let w = warnings(&policy("{ retry: { attempts: 2, on: } }"));
    assert_eq!(spot(&w[0]), (6, 30, "policies.p.retry.on"), "{w:?}");
    // A required key written null keeps its own error, not "missing".
    let e = one(&policy("{ retry: { attempts: } }"));
    assert_eq!(spot(&e), (6, 25, "policies.p.retry.attempts"), "{e:?}");
    assert!(
        e.message
            .starts_with("invalid type: empty (null), expected a whole number"),
        "{e:?}"
    );
}

/// An enum key written null is a null like any other: one with a default (`balance`, a rate
/// limit's or breaker's `scope`) is read as not written, with the warning a null value draws;
/// a required one (`direction`) says it is empty. Before, each was refused as the value "~".
#[test]
fn a_null_enum_key_is_read_as_not_written_or_said_empty() {
    let text = BASE.replace(
        "    endpoints: [127.0.0.1:3000]\n",
        "    endpoints: [127.0.0.1:3000]\n    balance:\n",
    )
    .replace(
        "  p: {}",
        "  p:\n    rate_limit: { per_tenant: { rate: 1/s }, scope: }\n    circuit_breaker: { consecutive_failures: 5, scope: ~ }",
    );
    let w = warnings(&text);
    let got: Vec<&str> = w.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        got,
        [
            "upstreams.app.balance",
            "policies.p.rate_limit.scope",
            "policies.p.circuit_breaker.scope"
        ],
        "{w:#?}"
    );
    for w in &w {
        assert!(
            w.message
                .starts_with("is empty (null), so it is read as if it were not written"),
            "{w:?}"
        );
    }
    super::super::Config::from_str(&text, "t.yaml").expect("valid");
    let e = one(&BASE.replace("direction: inbound", "direction:"));
    assert_eq!(e.path, "listeners[0].direction", "{e:?}");
    assert!(e.message.starts_with("is empty (null)"), "{e:?}");
    assert!(!e.message.contains('~'), "{e:?}");
}

/// A null section that has defaults when not written (`admin:`, `retry.budget:`,
/// `retry.backoff:`) is warned that its defaults apply, not that it does nothing: admin still
/// listens on :9901. An optional section with nothing to say of its `{}` still does nothing.
#[test]
fn a_null_section_with_defaults_is_warned_that_they_apply() {
    let text = BASE.replace(
        "  p: {}",
        "  p:\n    retry: { attempts: 2, budget:, backoff: }",
    ) + "admin:\n";
    let w = warnings(&text);
    let got: Vec<&str> = w.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(
        got,
        [
            "policies.p.retry.budget",
            "policies.p.retry.backoff",
            "admin"
        ],
        "{w:#?}"
    );
    for w in &w {
        assert!(w.message.contains("its defaults apply"), "{w:?}");
        assert!(!w.message.contains("does nothing"), "{w:?}");
    }
    let cfg = super::super::Config::from_str(&text, "t.yaml").expect("valid");
    assert_eq!(cfg.file.admin.listen.port(), 9901, "{:?}", cfg.file.admin);
}

/// `client_ca:` left empty was read as not written, with only the generic warning: the
/// listener served TLS without asking for a client certificate. Refused, saying so.
#[test]
fn a_null_client_ca_is_refused_as_mutual_tls_turned_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    for null in ["~", ""] {
        let text = BASE.replace(
            "    routes:\n",
            &format!(
                "    tls:\n      cert: {}\n      key: {}\n      client_ca: {null}\n    routes:\n",
                cert.display(),
                key.display()
            ),
        );
        let e = fails_at(&text, "listeners[0].tls.client_ca");
        assert!(e.message.starts_with("is empty (null)"), "{e:?}");
        assert!(e.message.contains("turn mutual TLS off"), "{e:?}");
        assert!(
            !errors(&text)
                .iter()
                .chain(warnings_of(&text).iter())
                .any(|e| e.path == "listeners[0].tls.client_ca"
                    && e.message.contains("read as if it were not written")),
            "the generic word is not said beside it"
        );
    }
}

fn warnings_of(text: &str) -> Vec<crate::config::ConfigError> {
    crate::config::Config::from_str(text, "t.yaml").map_or_else(|_| Vec::new(), |c| c.warnings)
}

/// `jwt: ~` in `tenants.from` draws one error, at `jwt`: it also drew "a source needs one
/// of … `jwt: {...}`", wrong with `jwt` written.
#[test]
fn a_null_source_key_draws_one_error_at_it() {
    let all = errors(&format!("{BASE}tenants: {{ from: [ {{ jwt: ~ }} ] }}\n"));
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].path, "tenants.from[0].jwt", "{all:#?}");
    assert!(
        !all[0].message.contains("a source needs one of"),
        "{all:#?}"
    );
}
