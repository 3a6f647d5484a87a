//! Every error in one pass, the messages a newcomer met, the SPEC §14 bounds, the new keys
//! and the warnings for inert keys.

use std::path::Path;

use super::super::file::{ClientCertField, TUNNEL_IDLE_TIMEOUT};
use super::super::{Config, Dur};
use super::{errors, fails_at, ok, one, policy, spot, upstream, warnings, BASE};

fn top(extra: &str) -> String {
    format!("{BASE}{extra}\n")
}

// === one pass ===

#[test]
fn five_mistakes_are_listed_at_once_in_file_order() {
    let text = "\
version: 1
upstreams:
  app:
    endpoints: [127.0.0.1:3000]
    conect_timeout: 1s
policies:
  p:
    timeout: { request: 5 sec }
    rate_limit: { per_tenant: { rate: 100/fortnight } }
    retyr: { attempts: 2 }
listeners:
  - name: inbound
    direction: inbound
    listen: 127.0.0.1:8080
    routes:
      - upstream: nope
        policy: p
";
    let all = errors(text);
    let got: Vec<(usize, usize, &str)> = all.iter().map(spot).collect();
    assert_eq!(
        got,
        [
            (5, 5, "upstreams.app.conect_timeout"),
            (8, 25, "policies.p.timeout.request"),
            (9, 39, "policies.p.rate_limit.per_tenant.rate"),
            (10, 5, "policies.p.retyr"),
            (16, 19, "listeners[0].routes[0].upstream"),
        ],
        "{all:#?}"
    );
    assert!(all[0].message.contains("did you mean \"connect_timeout\""));
    assert!(all[1].message.starts_with("invalid duration \"5 sec\""));
    assert!(
        all[2].message.starts_with("invalid rate \"100/fortnight\""),
        "{all:#?}"
    );
    let shown = super::super::ConfigErrors(all).to_string();
    assert_eq!(shown.lines().count(), 5, "{shown}");
}

/// Many unknown keys in one mapping are all told, and in one round of the shape pass: each
/// used to cost a deserialization of the whole tree, so their time grew with their square
/// (4,000 took 4 s in a debug build) and past the shape pass's work bound the rest were left
/// out as "... and more errors". Counted, not timed: with one round per key the bound stops
/// well before 20,000 (at 500 rounds for a tree this size), so this list is only complete
/// when the keys go together. The key that is not unknown after them still gets its round.
#[test]
fn thousands_of_unknown_keys_in_one_mapping_are_all_told() {
    let n = 20_000;
    let mut runtime = String::new();
    for i in 0..n {
        runtime.push_str(&format!("  bogus{i}: 1\n"));
    }
    let text = format!("{BASE}runtime:\n{runtime}  idle_timeout: 5x\nX-Common: 1\nX-more: 2\n");
    let all = errors(&text);
    let unknown = all
        .iter()
        .filter(|e| e.path.starts_with("runtime.bogus") && e.message.contains("unknown key"))
        .count();
    assert_eq!(unknown, n, "{:#?}", &all[all.len().saturating_sub(4)..]);
    let rest: Vec<(&str, &str)> = all
        .iter()
        .filter(|e| !e.path.starts_with("runtime.bogus"))
        .map(|e| (e.path.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(rest.len(), 3, "{rest:#?}");
    assert_eq!(rest[0].0, "runtime.idle_timeout", "{rest:#?}");
    // The message for a top-level `X-` key is the same for the keys that come along.
    assert!(rest[1].1.contains("did you mean \"x-Common\""), "{rest:#?}");
    assert!(rest[2].1.contains("did you mean \"x-more\""), "{rest:#?}");
    let third = &all[2];
    let line = BASE.lines().count() + 4;
    assert_eq!(
        (third.line, third.column, third.path.as_str()),
        (line, 3, "runtime.bogus2")
    );
}

/// The contents of certificate, key and CA files are judged in the same pass as the rest of
/// the file, and their errors sorted with the others (SPEC §14). Before, they were read only
/// once every other error was gone, and then came out in the loader's order (listeners
/// before upstreams), not the file's.
#[test]
fn tls_file_contents_are_judged_in_the_same_pass_and_sorted_with_the_rest() {
    use crate::tls::tests::support::{Ca, Files, Leaf};
    let (ca, files) = (Ca::new("test ca"), Files::new());
    let (cert1, _) = files.pair("one", &ca.server(1));
    let (_, key2) = files.pair("two", &ca.server(2));
    let expired = ca.issue(Leaf {
        dns: vec!["localhost"],
        not_before: Some((2019, 1, 1)),
        not_after: Some((2020, 1, 1)),
        ..Leaf::default()
    });
    let (old_cert, old_key) = files.pair("expired", &expired);
    let ca_pem = files.ca("ca", &ca);
    let show = |p: &Path| p.display().to_string();
    let text = format!(
        "\
version: 1
bogus: 1
upstreams:
  app: {{ endpoints: [127.0.0.1:3000], tls: {{ ca: {key2} }} }}
  up2: {{ endpoints: [127.0.0.1:3001], tls: {{ ca: {ca_pem}, cert: {cert1}, key: {key2} }} }}
policies:
  p: {{ retyr: 1 }}
listeners:
  - name: inbound
    direction: inbound
    listen: 127.0.0.1:8080
    tls: {{ cert: {old_cert}, key: {old_key} }}
    routes:
      - {{ match: {{ path_prefix: /x }}, upstream: up2 }}
      - {{ upstream: app, policy: p }}
tenants:
  from:
    - jwt: {{ claim: t, jwks: \"https://issuer.example/jwks.json\", jwks_ca: {key2} }}
runtime: {{ idle_timeout: 5x }}
",
        key2 = show(&key2),
        ca_pem = show(&ca_pem),
        cert1 = show(&cert1),
        old_cert = show(&old_cert),
        old_key = show(&old_key),
    );
    let all = errors(&text);
    let got: Vec<(usize, &str)> = all.iter().map(|e| (e.line, e.path.as_str())).collect();
    assert_eq!(
        got,
        [
            (2, "bogus"),
            (4, "upstreams.app.tls.ca"),
            (5, "upstreams.up2.tls.key"),
            (7, "policies.p.retyr"),
            (12, "listeners[0].tls.cert"),
            (18, "tenants.from[0].jwt.jwks_ca"),
            (19, "runtime.idle_timeout"),
        ],
        "{all:#?}"
    );
    let says = |i: usize, what: &str| {
        assert!(all[i].message.contains(what), "{what:?} in {:?}", all[i]);
    };
    says(1, "no certificate in it");
    says(2, "key does not match the certificate");
    says(4, "expired at");
    says(5, "no certificate in it");
    // The same list comes from a file, as `validate`, a start and a reload read it.
    let path = files.write("rampart.yaml", &text);
    let loaded = crate::load_config(&path).expect_err("refused");
    assert_eq!(loaded.0.len(), all.len(), "{loaded}");
}

/// Every independent problem of one `tls` section is told in the one pass (SPEC §14): each
/// file's own, and the key's mismatch when cert and key were both read. Before, the first
/// hid the others (an expired cert hid the mismatch that renewal would then show).
#[test]
fn every_problem_of_a_tls_section_is_told_not_only_the_first() {
    use crate::tls::tests::support::{Ca, Files, Leaf};
    let (ca, files) = (Ca::new("test ca"), Files::new());
    let (srv, _) = files.pair("srv", &ca.server(1));
    let (_, other) = files.pair("other", &ca.server(2));
    let expired = ca.issue(Leaf {
        dns: vec!["localhost"],
        not_before: Some((2019, 1, 1)),
        not_after: Some((2020, 1, 1)),
        ..Leaf::default()
    });
    let (old, _) = files.pair("expired", &expired);
    let nocert = files.write("nocert.pem", "not a certificate\n");
    let show = |p: &Path| p.display().to_string();
    let (srv, other, old, nocert) = (show(&srv), show(&other), show(&old), show(&nocert));
    let listener =
        |tls: String| BASE.replace("    routes:\n", &format!("    tls: {tls}\n    routes:\n"));
    let cases = [
        (
            listener(format!("{{ cert: {old}, key: {other} }}")),
            "listeners[0].tls",
            vec!["expired at", "key does not match"],
        ),
        (
            listener(format!("{{ cert: {srv}, key: {other}, client_ca: {nocert} }}")),
            "listeners[0].tls",
            vec!["key does not match", "no certificate in it"],
        ),
        (
            BASE.replace(
                "endpoints: [127.0.0.1:3000]",
                &format!("endpoints: [127.0.0.1:3000]\n    tls: {{ ca: {nocert}, cert: {srv}, key: {other} }}"),
            ),
            "upstreams.app.tls",
            vec!["no certificate in it", "key does not match"],
        ),
    ];
    for (text, at, want) in cases {
        let all = errors(&text);
        let got: Vec<&str> = all
            .iter()
            .filter(|e| e.path.starts_with(&format!("{at}.")))
            .map(|e| e.message.as_str())
            .collect();
        assert_eq!(got.len(), want.len(), "{text}\n{all:#?}");
        for w in want {
            assert!(got.iter().any(|m| m.contains(w)), "{w:?} in {all:#?}");
        }
    }
}

/// A file refused before it is read (missing, a dangling link, not a regular file) no longer
/// hides what is wrong with the other files of its section (SPEC §14): each is read alone,
/// the cert and key together when both can be (so a mismatch shows), and every error is at
/// the key that names its file, not at the section. Before, the first kind hid the second
/// (an oversize `ca`, a mismatched key) until a second run, and the second kind was placed at
/// `tls:`.
#[test]
fn a_tls_file_refused_unread_does_not_hide_the_others_of_its_section() {
    use crate::tls::tests::support::{Ca, Files};
    let (ca, files) = (Ca::new("test ca"), Files::new());
    let (srv, _) = files.pair("srv", &ca.server(1));
    let (_, other) = files.pair("other", &ca.server(2));
    let big = files.write("big.pem", &"x".repeat(3 << 20));
    let dir = files.write("x", "").parent().expect("a dir").to_path_buf();
    let dangling = dir.join("dangling");
    std::os::unix::fs::symlink("/nonexistent/ca.pem", &dangling).expect("a link");
    let zero = dir.join("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).expect("a link");
    let show = |p: &Path| p.display().to_string();
    let (srv, other, big, dir, dangling, zero) = (
        show(&srv),
        show(&other),
        show(&big),
        show(&dir),
        show(&dangling),
        show(&zero),
    );
    let client = |tls: String| {
        BASE.replace(
            "endpoints: [127.0.0.1:3000]",
            &format!("endpoints: [127.0.0.1:3000]\n    tls: {tls}"),
        )
    };
    let listener =
        |tls: String| BASE.replace("    routes:\n", &format!("    tls: {tls}\n    routes:\n"));
    let cases = [
        (
            client(format!("{{ ca: {big}, cert: {zero}, key: {dir} }}")),
            vec![
                ("upstreams.app.tls.ca", "may be at most"),
                ("upstreams.app.tls.cert", "not a regular file"),
                ("upstreams.app.tls.key", "not a regular file"),
            ],
        ),
        (
            client(format!("{{ ca: {dangling}, cert: {srv}, key: {other} }}")),
            vec![
                ("upstreams.app.tls.ca", ""),
                ("upstreams.app.tls.key", "key does not match"),
            ],
        ),
        (
            listener(format!("{{ cert: {dir}, key: {big}, client_ca: {zero} }}")),
            vec![
                ("listeners[0].tls.cert", "not a regular file"),
                ("listeners[0].tls.key", "may be at most"),
                ("listeners[0].tls.client_ca", "not a regular file"),
            ],
        ),
        (
            listener(format!(
                "{{ cert: {big}, key: {other}, client_ca: {dangling} }}"
            )),
            vec![
                ("listeners[0].tls.cert", "may be at most"),
                ("listeners[0].tls.client_ca", ""),
            ],
        ),
    ];
    for (text, want) in cases {
        let all = errors(&text);
        let got: Vec<(&str, &str)> = all
            .iter()
            .map(|e| (e.path.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(got.len(), want.len(), "{text}\n{got:#?}");
        for ((path, message), (at, says)) in got.iter().zip(&want) {
            assert_eq!(path, at, "{got:#?}");
            assert!(message.contains(says), "{says:?} in {got:#?}");
        }
    }
}

/// A TLS file key that drew an error already (missing, not a file) is not read again: one
/// error per file, not two.
#[test]
fn a_tls_file_refused_as_missing_is_not_also_read() {
    let tls = "    tls: { cert: /nonexistent/c.pem, key: /nonexistent/k.pem }\n";
    let text = BASE.replace("    routes:\n", &format!("{tls}    routes:\n"));
    let all = errors(&text);
    let paths: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["listeners[0].tls.cert", "listeners[0].tls.key"],
        "{all:#?}"
    );
}

#[test]
fn a_bad_required_value_does_not_also_report_it_missing() {
    let text = BASE.replace("direction: inbound", "direction: sideways")
        + "tenants: { max_tracked: lots }\n";
    let all = errors(&text);
    let paths: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["listeners[0].direction", "tenants.max_tracked"],
        "{all:#?}"
    );
}

/// A listener taken out for a required key of its own (missing or bad) does not hide what its
/// routes refer to: a dangling upstream or policy shows in the same pass, at its place.
#[test]
fn a_listener_taken_out_does_not_hide_its_routes_references() {
    let dangling = BASE.replace(
        "      - upstream: app\n        policy: p\n",
        "      - upstream: nope\n        policy: nopol\n",
    );
    for (from, to, first) in [
        (
            "direction: inbound",
            "direction: sideways",
            "listeners[0].direction",
        ),
        ("    direction: inbound\n", "", "listeners[0]"),
        (
            "listen: 127.0.0.1:8080",
            "listen: nohost",
            "listeners[0].listen",
        ),
    ] {
        let text = dangling.replace(from, to);
        let all = errors(&text);
        let got: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
        let routes = "listeners[0].routes[0]";
        let want = [
            first,
            &format!("{routes}.upstream"),
            &format!("{routes}.policy"),
        ];
        assert_eq!(got, want, "{to:?}: {all:#?}");
        assert!(
            all[1].message.starts_with("no upstream named \"nope\""),
            "{all:#?}"
        );
        let line = text
            .lines()
            .position(|l| l.contains("upstream: nope"))
            .expect("a line")
            + 1;
        assert_eq!((all[1].line, all[1].column), (line, 19), "{all:#?}");
    }
}

#[test]
fn a_missing_or_bad_version_does_not_hide_the_rest() {
    let text = BASE.replace("version: 1\n", "") + "tenants: { max_tracked: 0 }\n";
    let paths: Vec<String> = errors(&text).into_iter().map(|e| e.path).collect();
    assert_eq!(paths, ["", "tenants.max_tracked"]);
    let text = BASE.replace("version: 1", "version: one") + "tenants: { max_tracked: 0 }\n";
    let paths: Vec<String> = errors(&text).into_iter().map(|e| e.path).collect();
    assert_eq!(paths, ["version", "tenants.max_tracked"]);
}

#[test]
fn later_list_items_keep_their_written_index() {
    // routes[0] is malformed and taken out; the error in routes[1] still says routes[1].
    let text = BASE.replace(
        "      - upstream: app\n        policy: p\n",
        "      - upstream: [app]\n        policy: p\n      - match: { path_prefix: nope }\n        upstream: app\n",
    );
    let all = errors(&text);
    let paths: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "listeners[0].routes[0].upstream",
            "listeners[0].routes[1].match.path_prefix"
        ],
        "{all:#?}"
    );
}

// === messages a newcomer met ===

#[test]
fn an_endpoint_with_a_scheme_says_so() {
    let e = one(&upstream("{ endpoints: [\"http://127.0.0.1:4100\"] }"));
    assert_eq!(e.path, "upstreams.app.endpoints[0]");
    assert_eq!(
        e.message,
        "invalid endpoint \"http://127.0.0.1:4100\": an endpoint has no scheme (http://); write HOST:PORT, like 127.0.0.1:4100"
    );
}

#[test]
fn huge_durations_and_numbers_name_the_bound() {
    let e = one(&policy("{ timeout: { request: 99999999999d } }"));
    assert_eq!(
        e.message,
        "invalid duration \"99999999999d\": it is too large; the longest allowed is 30d"
    );
    let e = one(&policy("{ retry: { attempts: 99999999999 } }"));
    assert_eq!(spot(&e), (6, 27, "policies.p.retry.attempts"));
    assert_eq!(
        e.message,
        "99999999999 is too large: the largest number allowed here is 10"
    );
    let e = one(&top("tenants: { max_tracked: 999999999999999999999999 }"));
    assert!(e.message.contains("is too large"), "{e:?}");
    assert!(!e.message.contains("u128"), "{e:?}");
}

#[test]
fn a_tab_in_the_indentation_is_named() {
    let e = one("version: 1\n\tbad: 2\n");
    assert_eq!((e.line, e.column), (2, 1));
    assert!(e.message.contains("tab"), "{e:?}");
    assert!(e.message.contains("spaces"), "{e:?}");
    let e = one(&BASE.replace("    direction: inbound", "\tdirection: inbound"));
    assert_eq!((e.line, e.column), (9, 1), "{e:?}");
}

#[test]
fn a_missing_file_has_no_fake_position() {
    let path = Path::new("/nonexistent/rampart/policy.yaml");
    let e = Config::load(path).expect_err("a missing file must be refused");
    let shown = e.to_string();
    assert!(
        shown.starts_with("/nonexistent/rampart/policy.yaml: cannot read the policy file: "),
        "{shown}"
    );
    assert!(!shown.contains(":0:0"), "{shown}");
}

// === bounds ===

#[test]
fn sane_bounds_name_the_bound() {
    ok(&policy(
        "{ retry: { attempts: 2, on: [408, 429, 500, 503] } }",
    ));
    let e = fails_at(
        &policy("{ retry: { attempts: 2, on: [503, 404] } }"),
        "policies.p.retry.on[1]",
    );
    assert!(e.message.contains("408 and 429"), "{e:?}");
    fails_at(
        &policy("{ retry: { attempts: 2, on: [100] } }"),
        "policies.p.retry.on[0]",
    );
    ok(&policy("{ retry: { attempts: 2, buffer: 16MiB } }"));
    let e = one(&policy("{ retry: { attempts: 2, buffer: 17MiB } }"));
    assert_eq!(e.message, "17MiB is too large: the most is 16MiB");
    ok(&policy("{ idempotency: { max_entries: 10000000 } }"));
    let e = one(&policy("{ idempotency: { max_entries: 10000001 } }"));
    assert_eq!(e.path, "policies.p.idempotency.max_entries");
    assert_eq!(
        e.message,
        "10000001 is too large: the most is 10000000 (10M)"
    );
    let e = one(&policy(
        "{ idempotency: { max_entries: 99999999999999999999 } }",
    ));
    assert_eq!(e.path, "policies.p.idempotency.max_entries");
    assert!(
        e.message
            .ends_with("the largest number allowed here is 10000000"),
        "{e}"
    );
    ok(&top("tenants: { max_tracked: 100000000 }"));
    let e = one(&top("tenants: { max_tracked: 100000001 }"));
    assert!(e.message.contains("100000000"), "{e:?}");
    ok(&policy("{ timeout: { request: 30d } }"));
    fails_at(
        &policy("{ timeout: { request: 31d } }"),
        "policies.p.timeout.request",
    );
    fails_at(
        &upstream("{ endpoints: [127.0.0.1:1], max_connections: 0 }"),
        "upstreams.app.max_connections",
    );
    fails_at(
        &top("runtime: { idle_timeout: 0s }"),
        "runtime.idle_timeout",
    );
    // A burst is bounded as a rate's count is, and refilled by its rate within 100 years.
    let burst = |rate: &str, b: &str| {
        policy(&format!(
            "{{ rate_limit: {{ overrides: {{ acme: {{ rate: {rate}, burst: {b} }} }} }} }}"
        ))
    };
    ok(&burst("1/d", "36500"));
    let e = one(&burst("1/d", "1000000"));
    assert_eq!(e.path, "policies.p.rate_limit.overrides.acme.burst");
    assert!(
        e.message.contains("at most 36500 days (100 years)")
            && e.message.ends_with("the burst may be at most 36500"),
        "{e:?}"
    );
    let e = one(&burst("100/s", "18446744073709551615"));
    assert!(e.message.contains("the most is 4294967295"), "{e:?}");
}

// === new keys ===

#[test]
fn new_keys_parse_with_their_defaults() {
    let f = Config::from_str(BASE, "t.yaml").expect("valid").file;
    assert_eq!(f.runtime.idle_timeout, Dur::from_secs(60));
    assert_eq!(f.runtime.body_idle_timeout, Dur::from_secs(30));
    assert_eq!(f.runtime.drain_delay, Dur::from_secs(0));
    assert_eq!(f.upstreams["app"].max_connections, 1024);
    assert_eq!(f.listeners[0].routes[0].tunnel_idle_timeout, None);
    assert_eq!(TUNNEL_IDLE_TIMEOUT, Dur::from_secs(3600));
    let text = top("runtime: { idle_timeout: 5s, body_idle_timeout: 2s, drain_delay: 5s }\ntenants: { from: [ { client_cert: uri_san } ] }")
        .replace("        policy: p\n", "        policy: p\n        tunnel_idle_timeout: 10m\n")
        .replace("[127.0.0.1:3000]", "[127.0.0.1:3000]\n    max_connections: 8");
    let f = Config::from_str(&text, "t.yaml").expect("valid").file;
    assert_eq!(f.runtime.drain_delay, Dur::from_secs(5));
    assert_eq!(f.upstreams["app"].max_connections, 8);
    assert_eq!(f.tenants.from[0].client_cert, Some(ClientCertField::UriSan));
    assert_eq!(
        f.listeners[0].routes[0].tunnel_idle_timeout,
        Some(Dur::from_secs(600))
    );
    fails_at(
        &top("tenants: { from: [ { client_cert: cn, header: x-t } ] }"),
        "tenants.from[0]",
    );
    let e = one(&top("tenants: { from: [ { client_cert: serial } ] }"));
    assert_eq!(
        e.message,
        "unknown value \"serial\"; expected one of: cn, uri_san"
    );
}

#[test]
fn tls_client_files_come_in_pairs() {
    let e = fails_at(
        &upstream("{ endpoints: [127.0.0.1:1], tls: { cert: /nonexistent/c.pem } }"),
        "upstreams.app.tls.cert",
    );
    assert!(e.message.contains("needs its `key`"), "{e:?}");
    let tls = "    tls: { cert: /nonexistent/c.pem, key: /nonexistent/k.pem, client_ca: /nonexistent/ca.pem }\n";
    let text = BASE.replace("    routes:\n", &format!("{tls}    routes:\n"));
    let e = fails_at(&text, "listeners[0].tls.client_ca");
    assert!(
        e.message.starts_with("cannot read client ca bundle"),
        "{e:?}"
    );
}

#[test]
fn route_names_are_unique_within_a_listener() {
    let text = BASE.replace(
        "      - upstream: app\n        policy: p\n",
        "      - name: a\n        match: { path_prefix: /x }\n        upstream: app\n      - name: a\n        upstream: app\n",
    );
    let e = one(&text);
    assert_eq!(spot(&e), (15, 15, "listeners[0].routes[1].name"));
    assert!(
        e.message.contains("routes[0]") && e.message.contains("12:15"),
        "{e:?}"
    );
}

#[test]
fn policies_reaching_one_upstream_agree_on_the_breaker() {
    let two = |b: &str| {
        BASE.replace(
            "  p: {}\n",
            &format!("  p: {{ circuit_breaker: {{ consecutive_failures: 5 }} }}\n  q: {{ circuit_breaker: {b} }}\n  plain: {{}}\n"),
        )
        .replace(
            "      - upstream: app\n        policy: p\n",
            "      - match: { path_prefix: /a }\n        upstream: app\n        policy: p\n      - match: { path_prefix: /b }\n        upstream: app\n        policy: plain\n      - upstream: app\n        policy: q\n",
        )
    };
    ok(&two("{ consecutive_failures: 5 }"));
    let e = one(&two("{ consecutive_failures: 6 }"));
    assert_eq!(e.path, "listeners[0].routes[2].policy");
    assert!(
        e.message.contains("\"p\"")
            && e.message.contains("\"q\"")
            && e.message.contains("listeners[0].routes[0].policy at 16:17"),
        "{e:?}"
    );
}

// === warnings ===

#[test]
fn inert_keys_warn_at_their_key() {
    assert!(warnings(&policy("{ load_shed: { max_in_flight: 5 } }")).is_empty());
    assert!(warnings(&upstream(
        "{ endpoints: [127.0.0.1:1], balance: round_robin }"
    ))
    .is_empty());
    // Balancing, health checks and outlier ejection are built: no warning.
    assert!(warnings(&upstream("{ endpoints: [127.0.0.1:1], balance: p2c }")).is_empty());
    // Upstream TLS is built: neither refused nor a warning.
    assert!(warnings(&upstream("{ endpoints: [127.0.0.1:1], tls: {} }")).is_empty());
    let w = warnings(&top("admin: { listen: 0.0.0.0:9901 }"));
    assert_eq!(w[0].path, "admin.listen");
    assert!(w[0].message.contains("not a loopback address"), "{w:#?}");
}

/// An IPv4-mapped loopback address (`::ffff:127.0.0.1`) is loopback; `[::]` is every address.
#[test]
fn an_ipv4_mapped_loopback_admin_draws_no_warning() {
    assert!(warnings(&top("admin: { listen: \"[::ffff:127.0.0.1]:9901\" }")).is_empty());
    assert!(warnings(&top("admin: { listen: \"[::1]:9901\" }")).is_empty());
    let w = warnings(&top("admin: { listen: \"[::]:9901\" }"));
    assert_eq!(w[0].path, "admin.listen", "{w:#?}");
}

#[test]
fn the_reference_file_uses_only_keys_that_act() {
    // Every key of the reference file acts in this build: no inert-key warning. A key added to
    // the inert table must show here as a warning until its feature lands.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/rampart.yaml");
    let cfg = Config::load(&path).expect("config/rampart.yaml must validate");
    let paths: Vec<&str> = cfg.warnings.iter().map(|w| w.path.as_str()).collect();
    assert!(paths.is_empty(), "{paths:?}");
    assert!(cfg.summary().contains("0 warning(s)"), "{}", cfg.summary());
}

#[test]
fn anchors_and_aliases_are_expanded() {
    let text = BASE.replace(
        "  p: {}\n",
        "  p: &std { timeout: { request: 2s } }\n  q: *std\n",
    );
    let f = Config::from_str(&text, "t.yaml").expect("valid").file;
    assert_eq!(f.policies["p"], f.policies["q"]);
    // A bad value behind an alias is reported where it is written.
    let text = BASE.replace(
        "  p: {}\n",
        "  p: &std { timeout: { request: 2x } }\n  q: *std\n",
    );
    let all = errors(&text);
    assert!(
        !all.is_empty() && all.iter().all(|e| e.line == 6),
        "{all:#?}"
    );
}

/// A file whose policy `q` merges `p`'s keys (`<<: *std`, YAML's merge key, as Kubernetes-style
/// files use it) and writes one of its own: line 10 is the merge, line 11 `q`'s own `retry`.
const MERGED: &str = "\
version: 1
upstreams:
  app:
    endpoints: [127.0.0.1:3000]
policies:
  p: &std
    timeout: { request: 2s }
    retry: { attempts: 2 }
  q:
    <<: *std
    retry: { attempts: 3 }
listeners:
  - name: inbound
    direction: inbound
    listen: 127.0.0.1:8080
    routes:
      - upstream: app
        policy: q
";

/// `text` with policy `q` written out in full, as `MERGED`'s merge means it.
fn merged_out(text: &str, q: &str) -> String {
    let start = text.find("  q:\n").expect("q");
    let end = text.find("listeners:").expect("listeners");
    format!("{}  q: {q}\n{}", &text[..start], &text[end..])
}

#[test]
fn merge_keys_take_the_keys_a_mapping_does_not_write() {
    let f = Config::from_str(MERGED, "t.yaml").expect("valid").file;
    let want = Config::from_str(
        &merged_out(
            MERGED,
            "{ timeout: { request: 2s }, retry: { attempts: 3 } }",
        ),
        "t.yaml",
    )
    .expect("valid")
    .file;
    assert_eq!(f.policies["q"], want.policies["q"]);
    assert_ne!(f.policies["q"], f.policies["p"], "q's own retry wins");
    // A list of mappings: the earlier one wins a key both give.
    let listed = MERGED
        .replace(
            "  p: &std\n",
            "  r: &long { timeout: { request: 9s }, load_shed: { max_in_flight: 5 } }\n  p: &std\n",
        )
        .replace("<<: *std", "<<: [ *std, *long ]");
    let f = Config::from_str(&listed, "t.yaml").expect("valid").file;
    let want = Config::from_str(
        &merged_out(
            &listed,
            "{ timeout: { request: 2s }, retry: { attempts: 3 }, load_shed: { max_in_flight: 5 } }",
        ),
        "t.yaml",
    )
    .expect("valid")
    .file;
    assert_eq!(f.policies["q"], want.policies["q"]);
}

#[test]
fn errors_beside_and_inside_merged_keys_are_placed_where_written() {
    // Outside the merged part: where it is written, as in a file without a merge.
    let e = one(&MERGED.replace("attempts: 3", "attempts: 0"));
    assert_eq!((e.line, e.path.as_str()), (11, "policies.q.retry.attempts"));
    assert_eq!(e.column, 24, "{e:?}");
    // Inside it: at the anchored text it came from, under each path that took it.
    let all = errors(&MERGED.replace("request: 2s", "request: 2x"));
    let paths: Vec<(usize, &str)> = all.iter().map(|e| (e.line, e.path.as_str())).collect();
    assert_eq!(
        paths,
        [
            (7, "policies.p.timeout.request"),
            (7, "policies.q.timeout.request")
        ],
        "{all:#?}"
    );
    // A key of the mapping that is not a merge key stays an unknown key: `"<<"` quoted.
    let e = fails_at(&MERGED.replace("<<: *std", "\"<<\": *std"), "policies.q.<<");
    assert!(e.message.contains("unknown key"), "{e:?}");
    assert_eq!((e.line, e.column), (10, 5));
    // A merge of something that is not a mapping.
    for bad in ["<<: 5", "<<: [ *std, 5 ]"] {
        let e = one(&MERGED.replace("<<: *std", bad));
        assert_eq!((e.line, e.path.as_str()), (10, "policies.q.<<"), "{bad}");
        assert!(e.message.contains("merge key"), "{bad}: {e:?}");
    }
    // It does not hide the file's other errors (SPEC §14: every error in one pass): the tree
    // is judged without that merge.
    for bad in ["<<: [1]", "<<: 5", "<<: null"] {
        let text = MERGED
            .replace("<<: *std", bad)
            .replace(
                "endpoints: [127.0.0.1:3000]",
                "endpoints: [127.0.0.1:3000]\n    bogus_key: 1",
            )
            .replace("policy: q", "policy: nope");
        let all = errors(&text);
        let at: Vec<(usize, &str)> = all.iter().map(|e| (e.line, e.path.as_str())).collect();
        assert_eq!(at.len(), 3, "{bad}: {all:#?}");
        assert!(
            at.contains(&(5, "upstreams.app.bogus_key")),
            "{bad}: {at:?}"
        );
        assert!(at.contains(&(11, "policies.q.<<")), "{bad}: {at:?}");
        assert!(
            at.iter().any(|(_, p)| p.ends_with("policy")),
            "{bad}: {at:?}"
        );
    }
}

/// YAML 1.1's merge key is one key of its mapping (its value may list several mappings): a
/// second `<<` in one mapping is a key given twice, refused naming both places as any other
/// repeated key is. One `<<` listing two mappings stays valid.
#[test]
fn a_merge_key_given_twice_in_one_mapping_is_refused_naming_both() {
    let two = MERGED
        .replace(
            "  p: &std\n",
            "  r: &long { load_shed: { max_in_flight: 5 } }\n  p: &std\n",
        )
        .replace("<<: *std\n", "<<: *std\n    <<: *long\n");
    let e = one(&two);
    assert_eq!(spot(&e), (12, 5, "policies.q.<<"), "{e:?}");
    assert!(e.message.contains("a second merge key"), "{e:?}");
    assert!(e.message.contains("first at 11:5"), "{e:?}");
    // In a flow mapping, and in an anchored mapping merged elsewhere (reported once, where
    // written).
    let flow = MERGED.replace(
        "  q:\n    <<: *std\n",
        "  r: &long { <<: *std, <<: *std }\n  q:\n    <<: *long\n",
    );
    let e = one(&flow);
    assert_eq!(spot(&e), (9, 24, "policies.r.<<"), "{e:?}");
    assert!(e.message.contains("first at 9:14"), "{e:?}");
    ok(&MERGED.replace("<<: *std\n", "<<: [ *std ]\n"));
}

#[test]
fn keys_that_can_never_act_where_they_stand_warn_at_their_key() {
    // A tunnel timeout on an inbound listener acts: inbound refuses CONNECT, but an upgraded
    // connection (WebSocket) is a tunnel too.
    let w = warnings(&BASE.replace(
        "        policy: p\n",
        "        policy: p\n        tunnel_idle_timeout: 5m\n",
    ));
    assert!(w.is_empty(), "{w:#?}");

    // A client-certificate source with no listener that verifies client certificates.
    let w = warnings(&top(
        "tenants:\n  from: [ { client_cert: uri_san }, { header: x-tenant-id } ]",
    ));
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0].path, "tenants.from[0].client_cert");

    // A plan header that no listener trusts never names a plan (it is only removed).
    let w = warnings(&top("tenants:\n  plans: { plan_header: x-tenant-plan }"));
    assert_eq!(w.len(), 1, "{w:#?}");
    assert_eq!(w[0].path, "tenants.plans.plan_header");
    let trusted = top("tenants:\n  plans: { plan_header: x-tenant-plan }").replace(
        "    direction: inbound\n",
        "    direction: inbound\n    trust_plan_header: true\n",
    );
    assert!(
        warnings(&trusted).is_empty(),
        "a trusting listener reads it"
    );
}

#[test]
fn policy_sections_that_cannot_act_warn_at_their_key() {
    // (policy body, where the warning stands, what it says)
    let cases = [
        (
            "{ circuit_breaker: { open_for: 5s, half_open_probes: 2 } }",
            "policies.p.circuit_breaker",
            "never opens",
        ),
        (
            "{ circuit_breaker: { scope: tenant } }",
            "policies.p.circuit_breaker",
            "never opens",
        ),
        (
            "{ load_shed: { queue: { size: 10, timeout: 1s } } }",
            "policies.p.load_shed",
            "nothing is ever queued or shed",
        ),
        (
            "{ load_shed: { priority: { header: x-priority } } }",
            "policies.p.load_shed",
            "nothing is ever queued or shed",
        ),
        (
            "{ load_shed: { max_in_flight: 5, queue: { size: 0, timeout: 5s } } }",
            "policies.p.load_shed.queue.timeout",
            "holds no request",
        ),
        (
            "{ load_shed: { max_in_flight: 1, priority: { header: x-priority } } }",
            "policies.p.load_shed.priority",
            "act only among requests waiting in the queue",
        ),
        (
            "{ load_shed: { per_tenant_max_in_flight: 1, queue: { size: 10, timeout: 2s } } }",
            "policies.p.load_shed.queue",
            "nothing ever waits here",
        ),
        (
            "{ load_shed: { max_in_flight: 10, adaptive: { min: 10, max: 50 } } }",
            "policies.p.load_shed.adaptive.min",
            "adaptive never lowers the limit",
        ),
        (
            "{ load_shed: { max_in_flight: 10, adaptive: { min: 40, max: 50 } } }",
            "policies.p.load_shed.adaptive.min",
            "adaptive never lowers the limit",
        ),
        (
            "{ timeout: { request: 200ms }, load_shed: { max_in_flight: 1, queue: { size: 10, timeout: 1s } } }",
            "policies.p.load_shed.queue.timeout",
            "never acts",
        ),
        (
            // The queue's default wait (250ms) counts as written.
            "{ timeout: { request: 250ms }, load_shed: { max_in_flight: 1, queue: { size: 10 } } }",
            "policies.p.load_shed.queue.timeout",
            "is no shorter than timeout.request",
        ),
        (
            "{ rate_limit: { headers: true } }",
            "policies.p.rate_limit",
            "admits everything",
        ),
        (
            "{ retry: { attempts: 1, on: [503] } }",
            "policies.p.retry.attempts",
            "makes no retry",
        ),
    ];
    for (body, path, says) in cases {
        let w = warnings(&policy(body));
        assert_eq!(w.len(), 1, "{body}: {w:#?}");
        assert_eq!(w[0].path, path, "{body}");
        assert!(w[0].message.contains(says), "{body}: {}", w[0].message);
    }
    // The same sections with what makes them act draw nothing.
    for body in [
        "{ circuit_breaker: { consecutive_failures: 5 } }",
        "{ circuit_breaker: { slow_call: { duration: 1s, threshold: 50% } } }",
        "{ load_shed: { max_in_flight: 20, per_tenant_max_in_flight: 2, queue: { size: 10 }, priority: { header: x-priority } } }",
        "{ load_shed: { max_in_flight: 5, queue: { size: 0 } } }",
        "{ timeout: { request: 1s }, load_shed: { max_in_flight: 5, queue: { size: 10, timeout: 999ms } } }",
        "{ timeout: { request: 100ms }, load_shed: { max_in_flight: 5, queue: { size: 0 } } }",
        "{ load_shed: { max_in_flight: 10, adaptive: { min: 9, max: 50 } } }",
        "{ load_shed: { adaptive: { min: 10, max: 50 } } }",
        "{ rate_limit: { total: { rate: 5/s }, headers: true } }",
        "{ retry: { attempts: 2, on: [503] } }",
    ] {
        assert!(warnings(&policy(body)).is_empty(), "{body}");
    }
}

/// `rampart health`'s lenient read: `admin.listen` alone, whatever else the file holds, and
/// the default (none) when it gives none.
#[test]
fn admin_listen_is_read_alone_leniently() {
    use super::super::admin_listen_of;
    let at = |t: &str| admin_listen_of(t).map(|a| a.map(|a| a.to_string()));
    let want = Ok(Some("127.0.0.1:9911".to_owned()));
    assert_eq!(
        at("version: 1\nadmin: { listen: 127.0.0.1:9911 }\nbogus: 1\n"),
        want
    );
    assert_eq!(
        at("admin:\n  # the admin\n  listen: 127.0.0.1:9911\nx: [\n"),
        want
    );
    assert_eq!(at("x: [\nadmin:\n\n  listen: 127.0.0.1:9911\ny: 1\n"), want);
    assert_eq!(at("version: 1\nlisteners: []\n"), Ok(None));
    assert!(at("admin: { listen: localhost:9901 }\n").is_err());
    assert!(at("x: [\n").is_err());
    // Two documents: which one gives the address cannot be told (rampart refuses the file).
    for two in [
        "version: 1\n---\nadmin: { listen: 127.0.0.1:9911 }\n",
        "admin: { listen: 127.0.0.1:9911 }\n---\nversion: 1\n",
    ] {
        let e = at(two).expect_err(two);
        assert!(
            e.contains("line 2") && e.contains("more than one YAML document"),
            "{e}"
        );
    }
}
