//! SPEC §13 keys: `jwt` sources, `tenants.plans`, `rate_limit.plans`, `trust_plan_header`,
//! `tenant: optional`.

use super::{errors, fails_at, ok, warnings, BASE};

const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#;

fn with(tenants: &str, rate_limit: &str) -> String {
    format!("tenants:\n{tenants}\n{BASE}")
        .replace("  p: {}", &format!("  p: {{ rate_limit: {rate_limit} }}"))
}

fn jwt(extra: &str, jwks: &str) -> String {
    format!("  from:\n    - jwt: {{ claim: org.id, jwks: {jwks}{extra} }}")
}

#[test]
fn jwt_sources_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("jwks.json");
    std::fs::write(&good, JWKS).expect("write");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).expect("write");
    let (good, bad) = (good.display().to_string(), bad.display().to_string());
    let rl = "{ per_tenant: { rate: 1/s } }";
    ok(&with(
        &jwt(", plan_claim: plan, jwks_refresh: 1m", &good),
        rl,
    ));
    ok(&with(&jwt("", "https://issuer.test/jwks.json"), rl));
    // A URL's password is shown nowhere: not in an error, not on `/config`.
    let e = fails_at(
        &with(&jwt("", "\"https://u:jwkspass@/jwks.json\""), rl),
        "tenants.from[0].jwt.jwks",
    );
    assert!(e.message.contains("\"https://u:***@/jwks.json\""), "{e:?}");
    let text = with(&jwt("", "\"https://u:jwkspass@issuer.test/jwks.json\""), rl);
    let cfg = crate::config::Config::from_str(&text, "t.yaml").expect("valid");
    let shown = serde_json::to_string(&cfg.file).expect("serializes");
    assert!(
        shown.contains("https://u:***@issuer.test/jwks.json"),
        "{shown}"
    );
    assert!(!shown.contains("jwkspass"), "{shown}");
    // A token in the query is a secret as a password is.
    let text = with(
        &jwt(
            "",
            "\"https://issuer.test/jwks.json?token=QSECRET&v=2#frag\"",
        ),
        rl,
    );
    let cfg = crate::config::Config::from_str(&text, "t.yaml").expect("valid");
    let shown = serde_json::to_string(&cfg.file).expect("serializes");
    assert!(
        shown.contains("https://issuer.test/jwks.json?token=***&v=***#***"),
        "{shown}"
    );
    assert!(
        !shown.contains("QSECRET") && !shown.contains("frag"),
        "{shown}"
    );
    for (url, want) in [
        (
            "https://u:p@h/x?a=1&b&c=",
            "https://u:***@h/x?a=***&b&c=***",
        ),
        ("https://h/x?", "https://h/x?"),
        ("https://h/x", "https://h/x"),
        (
            "redis://:pw@h:6379/0?password=pw2",
            "redis://:***@h:6379/0?password=***",
        ),
    ] {
        assert_eq!(crate::config::file::redact_url(url), want, "{url}");
    }
    assert_eq!(
        crate::config::file::redact_url_or_path("/etc/a@b/jwks.json"),
        "/etc/a@b/jwks.json",
        "a path is shown as it is"
    );
    fails_at(
        &with(&jwt("", "/nonexistent/jwks.json"), rl),
        "tenants.from[0].jwt.jwks",
    );
    let e = fails_at(&with(&jwt("", &bad), rl), "tenants.from[0].jwt.jwks");
    assert!(e.message.contains("no usable signature key"), "{e:?}");
    fails_at(
        &with(&jwt("", "ftp://x/jwks"), rl),
        "tenants.from[0].jwt.jwks",
    );
    let claim = with(&jwt("", &good).replace("org.id", "org..id"), rl);
    fails_at(&claim, "tenants.from[0].jwt.claim");
    fails_at(
        &with(&jwt(", jwks_refresh: 0s", &good), rl),
        "tenants.from[0].jwt.jwks_refresh",
    );
    fails_at(
        &with(&jwt(", header: \"a b\"", &good), rl),
        "tenants.from[0].jwt.header",
    );
    fails_at(
        &with(&jwt(", jwks_ca: /x.pem", &good), rl),
        "tenants.from[0].jwt.jwks_ca",
    );
    fails_at(
        &with(&jwt(", audiences: [\"\"]", &good), rl),
        "tenants.from[0].jwt.audiences[0]",
    );
    // Written empty, `issuers` or `audiences` would turn its check off unseen: refused, with
    // the way to skip the check on purpose (leave the key out, as `good` does).
    for (key, claim) in [("issuers", "iss"), ("audiences", "aud")] {
        let e = fails_at(
            &with(&jwt(&format!(", {key}: []"), &good), rl),
            &format!("tenants.from[0].jwt.{key}"),
        );
        assert!(e.message.contains(&format!("checks no `{claim}`")), "{e:?}");
        assert!(e.message.contains(&format!("omit `{key}`")), "{e:?}");
    }
    ok(&with(
        &jwt(", issuers: [https://issuer.test/], audiences: [api]", &good),
        rl,
    ));
    let two = with(
        &jwt(", header: x", &good).replace("- jwt:", "- query: t\n      jwt:"),
        rl,
    );
    fails_at(&two, "tenants.from[0]");
}

/// A JWKS fetched over plain http from off this machine can be swapped on the way (and tokens
/// for any tenant signed): a warning at `jwks`. On loopback, over https, or from a file, none.
#[test]
fn a_jwks_fetched_in_clear_off_this_machine_warns() {
    let rl = "{ per_tenant: { rate: 1/s } }";
    let warned = |url: &str| {
        super::warnings(&with(&jwt("", url), rl))
            .into_iter()
            .map(|w| (w.path, w.message))
            .collect::<Vec<_>>()
    };
    for url in [
        "http://issuer.internal/jwks.json",
        "http://10.0.0.7:8080/keys",
        "\"http://u:pw@idp.example/jwks\"",
    ] {
        let w = warned(url);
        assert_eq!(w.len(), 1, "{url}: {w:?}");
        assert_eq!(w[0].0, "tenants.from[0].jwt.jwks", "{url}");
        assert!(
            w[0].1.contains("in clear") && w[0].1.contains("https://"),
            "{w:?}"
        );
    }
    for url in [
        "http://127.0.0.1:9000/jwks.json",
        "http://localhost/jwks.json",
        "\"http://[::1]:9000/jwks.json\"",
        "https://issuer.internal/jwks.json",
    ] {
        assert!(warned(url).is_empty(), "{url}: {:?}", warned(url));
    }
}

/// `issuers:` or `audiences:` written null (its items commented out, `~`) was read as not
/// written, with only the generic warning, and turned its check off: a token of any issuer
/// was admitted. Refused as `[]` is, where it is written; so is a blank value.
#[test]
fn null_issuers_or_audiences_and_blank_values_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("jwks.json");
    std::fs::write(&good, JWKS).expect("write");
    let good = good.display().to_string();
    let rl = "{ per_tenant: { rate: 1/s } }";
    for (key, claim) in [("issuers", "iss"), ("audiences", "aud")] {
        let at = format!("tenants.from[0].jwt.{key}");
        for null in ["~", "null", ""] {
            let e = fails_at(&with(&jwt(&format!(", {key}: {null}"), &good), rl), &at);
            assert!(e.message.starts_with("is empty (null)"), "{e:?}");
            assert!(e.message.contains(&format!("check no `{claim}`")), "{e:?}");
            assert!(e.message.contains(&format!("omit `{key}`")), "{e:?}");
            assert_eq!(
                super::errors(&with(&jwt(&format!(", {key}: {null}"), &good), rl)).len(),
                1
            );
        }
        // Block style, its one item commented out.
        let block = format!(
            "  from:\n    - jwt:\n        claim: org.id\n        jwks: {good}\n        {key}:\n          # - https://issuer.test/\n"
        );
        let e = fails_at(&with(&block, rl), &at);
        assert_eq!((e.line, e.column), (6, 9), "{e:?}");
        for blank in ["\" \"", "\"\"", "\"\\t\""] {
            let e = fails_at(
                &with(&jwt(&format!(", {key}: [x, {blank}]"), &good), rl),
                &format!("{at}[1]"),
            );
            assert!(e.message.contains("matches no token"), "{e:?}");
        }
    }
    // The string "~" is a value, not a null.
    ok(&with(&jwt(", audiences: [\"~\"]", &good), rl));
}

/// Values are compared byte for byte: one written with spaces around it, or listed twice, was
/// accepted without a word (the first matches only a claim that has the same spaces).
/// Warned of where they are written.
#[test]
fn issuers_or_audiences_with_spaces_around_or_listed_twice_are_warned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("jwks.json");
    std::fs::write(&good, JWKS).expect("write");
    let good = good.display().to_string();
    let rl = "{ per_tenant: { rate: 1/s } }";
    for (key, claim) in [("issuers", "iss"), ("audiences", "aud")] {
        let at = format!("tenants.from[0].jwt.{key}");
        let w = super::warnings(&with(
            &jwt(&format!(", {key}: [\" a\", \"b \", c, c]"), &good),
            rl,
        ));
        let mine: Vec<_> = w.iter().filter(|e| e.path.starts_with(&at)).collect();
        assert_eq!(mine.len(), 3, "{w:#?}");
        assert_eq!(mine[0].path, format!("{at}[0]"));
        assert!(mine[0].message.contains("spaces around it"), "{mine:?}");
        assert!(mine[0].message.contains(&format!("`{claim}`")), "{mine:?}");
        assert_eq!(mine[1].path, format!("{at}[1]"));
        assert_eq!(mine[2].path, format!("{at}[3]"));
        assert!(mine[2].message.contains("listed twice"), "{mine:?}");
    }
}

#[test]
fn plans_must_be_defined_where_they_are_used() {
    let rl = "{ per_tenant: { rate: 1/s }, plans: { pro: { rate: 5/s } } }";
    let plans = |assign: &str| format!("  plans: {{ plan_header: x-plan, assign: {assign} }}");
    ok(&with(&plans("{ pro: [acme, globex] }"), rl));
    let e = fails_at(
        &with(&plans("{ gold: [acme] }"), rl),
        "tenants.plans.assign.gold",
    );
    assert!(e.message.contains("no policy gives limits"), "{e:?}");
    fails_at(
        &with(&plans("{ pro: [\"a b\"] }"), rl),
        "tenants.plans.assign.pro[0]",
    );
    let twice = "{ pro: [acme] }".to_owned();
    let text = with(
        &plans(&twice),
        "{ plans: { pro: { rate: 5/s }, gold: { rate: 1/s } } }",
    )
    .replace("{ pro: [acme] }", "{ pro: [acme], gold: [acme] }");
    // Refused at the repeat, the later place in the file, whatever the plans' names.
    let e = fails_at(&text, "tenants.plans.assign.gold[0]");
    assert!(
        e.message
            .contains("tenant \"acme\" is already on plan \"pro\" (at 2:49)"),
        "{e:?}"
    );
    assert_eq!(errors(&text).len(), 1, "{:#?}", errors(&text));
    let text = text.replace(
        "{ pro: [acme], gold: [acme] }",
        "{ gold: [acme], pro: [acme] }",
    );
    let e = fails_at(&text, "tenants.plans.assign.pro[0]");
    assert!(e.message.contains("already on plan \"gold\""), "{e:?}");
    let empty = "{ plans: { pro: [] } }";
    fails_at(
        &with(&plans("{}"), empty),
        "policies.p.rate_limit.plans.pro",
    );
    fails_at(
        &with(&plans("{}"), "{ plans: { \"a b\": { rate: 1/s } } }"),
        "policies.p.rate_limit.plans.a b",
    );
}

#[test]
fn trust_plan_header_needs_a_plan_header() {
    let trusting = BASE.replace(
        "    listen: 127.0.0.1:8080\n",
        "    listen: 127.0.0.1:8080\n    trust_plan_header: true\n",
    );
    fails_at(&trusting, "listeners[0].trust_plan_header");
    ok(&format!(
        "tenants:\n  plans: {{ plan_header: x-plan }}\n{trusting}"
    ));
}

#[test]
fn routes_take_tenant_optional_or_required() {
    ok(&BASE.replace(
        "        policy: p\n",
        "        policy: p\n        tenant: optional\n",
    ));
    ok(&BASE.replace(
        "        policy: p\n",
        "        policy: p\n        tenant: required\n",
    ));
    fails_at(
        &BASE.replace(
            "        policy: p\n",
            "        policy: p\n        tenant: maybe\n",
        ),
        "listeners[0].routes[0].tenant",
    );
}

#[test]
fn calendar_windows_count_per_minute_hour_or_day() {
    let p = |limit: &str| {
        BASE.replace(
            "  p: {}",
            &format!("  p: {{ rate_limit: {{ per_tenant: {limit} }} }}"),
        )
    };
    ok(&p("{ rate: 10000/d, window: calendar }"));
    ok(&p("[ { rate: 5/s }, { rate: 100/h, window: calendar } ]"));
    ok(&p("{ rate: 10/s, window: smooth }"));
    fails_at(
        &p("{ rate: 10/s, window: calendar }"),
        "policies.p.rate_limit.per_tenant.rate",
    );
    fails_at(
        &p("{ rate: 10/d, burst: 5, window: calendar }"),
        "policies.p.rate_limit.per_tenant.burst",
    );
    fails_at(
        &p("{ rate: 10/d, window: weekly }"),
        "policies.p.rate_limit.per_tenant.window",
    );
}

#[test]
fn a_plan_no_tenant_can_be_on_draws_a_warning() {
    let rl = "{ per_tenant: { rate: 1/s }, plans: { pro: { rate: 5/s } } }";
    let paths = |text: &str| -> Vec<String> {
        warnings(text)
            .iter()
            .filter(|w| w.message.contains("no tenant can be on plan"))
            .map(|w| w.path.clone())
            .collect()
    };
    // Nothing names a plan: `pro` does nothing.
    assert_eq!(
        paths(&with("  fallback: reject", rl)),
        ["policies.p.rate_limit.plans.pro"]
    );
    // Listed in `assign`, named by a header, or by a token's claim: it acts.
    let assign = "  plans: { assign: { pro: [acme] } }";
    assert!(paths(&with(assign, rl)).is_empty());
    let header = "  plans: { plan_header: x-plan }";
    assert!(paths(&with(header, rl)).is_empty());
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("jwks.json");
    std::fs::write(&good, JWKS).expect("write");
    let good = good.display().to_string();
    assert!(paths(&with(&jwt(", plan_claim: plan", &good), rl)).is_empty());
    assert_eq!(
        paths(&with(&jwt("", &good), rl)),
        ["policies.p.rate_limit.plans.pro"]
    );
}

/// A token's plan claim names a plan only when a policy gives it limits: with no
/// `rate_limit.plans` anywhere it can name none, and is warned about at its place.
#[test]
fn a_plan_claim_with_no_plan_to_name_draws_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("jwks.json");
    std::fs::write(&good, JWKS).expect("write");
    let good = good.display().to_string();
    let claim = jwt(", plan_claim: plan", &good);
    let at = |text: &str| -> Vec<String> {
        warnings(text)
            .iter()
            .filter(|w| w.message.contains("never names one"))
            .map(|w| w.path.clone())
            .collect()
    };
    assert_eq!(
        at(&with(&claim, "{ per_tenant: { rate: 1/s } }")),
        ["tenants.from[0].jwt.plan_claim"]
    );
    let rl = "{ per_tenant: { rate: 1/s }, plans: { pro: { rate: 5/s } } }";
    assert!(at(&with(&claim, rl)).is_empty());
    assert!(at(&with(&jwt("", &good), "{ per_tenant: { rate: 1/s } }")).is_empty());
}

/// A JWKS file is read as the TLS files are: one past the bound is refused by its size,
/// without being read whole, and one that would wait for data (a FIFO with a silent writer)
/// is an error, not a hang of `validate`.
#[test]
fn a_jwks_file_is_read_bounded_and_never_waited_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rl = "{ per_tenant: { rate: 1/s } }";
    let big = dir.path().join("big.json");
    let f = std::fs::File::create(&big).expect("create");
    f.set_len(crate::tenant::jwt::MAX_JWKS_BYTES as u64 + 1)
        .expect("a sparse file one byte past the bound");
    let e = fails_at(
        &with(&jwt("", &big.display().to_string()), rl),
        "tenants.from[0].jwt.jwks",
    );
    assert!(
        e.message
            .contains("a JWKS file may be at most 1048576 bytes"),
        "{e:?}"
    );
    let fifo = dir.path().join("jwks.fifo");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .expect("mkfifo");
    // A writer that holds the FIFO open and writes nothing: a blocking read would wait.
    let _writer = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open the FIFO");
    let text = with(&jwt("", &fifo.display().to_string()), rl);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(crate::config::Config::from_str(&text, "t.yaml").is_err());
    });
    let refused = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("validate must not wait on a FIFO");
    assert!(refused, "a FIFO is no JWKS file");
}

/// A load serves the JWKS its validation read: the file is read once per load, so one
/// replaced between validation and the build of the load's generation (here by a file half
/// written) leaves the validated keys in force, not none.
#[test]
fn a_load_serves_the_jwks_its_validation_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, JWKS).expect("write");
    let text = with(
        &jwt("", &file.display().to_string()),
        "{ per_tenant: { rate: 1/s } }",
    );
    let config = crate::config::Config::from_str(&text, "t.yaml").expect("it validates");
    std::fs::write(&file, &JWKS[..20]).expect("a half-written JWKS");
    let gen = crate::generation::Generation::empty(std::sync::Arc::new(config));
    assert!(
        gen.identify.is_ready(),
        "the keys validation read are in force"
    );
}
