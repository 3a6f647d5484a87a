//! SPEC §9 keys: `global_store` and `rate_limit.scope`, `on_store_error`, `lease`, `lease_ttl`.

use super::{errors, fails_at, ok, policy, spot, BASE};
use crate::tls::tests::support::{Ca, Files};

const STORE: &str = "global_store:\n  redis: { url: \"redis://127.0.0.1:6379/0\", key_prefix: \"rampart:\", timeout: 25ms }\n";

/// BASE with a store (`store`, a whole section) and policy `p` given `body`.
fn with(store: &str, body: &str) -> String {
    format!("{store}{}", policy(body))
}

fn warnings(text: &str) -> Vec<(usize, usize, String)> {
    super::warnings(text)
        .iter()
        .map(|w| {
            let (l, c, p) = spot(w);
            (l, c, p.to_owned())
        })
        .collect()
}

#[test]
fn the_spec_section_is_accepted() {
    ok(&with(
        STORE,
        "{ rate_limit: { per_tenant: { rate: 100/s, burst: 200 }, scope: global, on_store_error: local } }",
    ));
    ok(&with(
        STORE,
        "{ rate_limit: { per_tenant: { rate: 1/s }, total: { rate: 9/s }, scope: global, on_store_error: deny, lease: 1, lease_ttl: 200ms } }",
    ));
    ok(&with(
        "global_store:\n  redis: { url: \"redis://:secret@redis.internal:6380\" }\n",
        "{ rate_limit: { per_tenant: { rate: 1/s }, scope: global, on_store_error: allow } }",
    ));
}

#[test]
fn scope_global_without_a_store_is_refused_at_its_scope() {
    let text = policy("{ rate_limit: { per_tenant: { rate: 1/s }, scope: global } }");
    let e = fails_at(&text, "policies.p.rate_limit.scope");
    assert!(e.message.contains("global_store"), "{e:?}");
    assert_eq!((e.line, e.column), (6, 56), "{e:?}");
}

#[test]
fn store_keys_are_checked_at_their_values() {
    let store = |redis: &str| format!("global_store:\n  redis: {redis}\n");
    let rl = "{ rate_limit: { per_tenant: { rate: 1/s }, scope: global } }";
    for (redis, path) in [
        (
            "{ url: \"http://127.0.0.1:6379\" }",
            "global_store.redis.url",
        ),
        (
            "{ url: \"rediss://127.0.0.1:6379#insecure\" }",
            "global_store.redis.url",
        ),
        (
            "{ url: \"unix:///run/redis.sock\" }",
            "global_store.redis.url",
        ),
        ("{ url: \"redis://\" }", "global_store.redis.url"),
        ("{ url: \"redis://h:1/zero\" }", "global_store.redis.url"),
        (
            "{ url: \"redis://h\", key_prefix: \"a{b}\" }",
            "global_store.redis.key_prefix",
        ),
        (
            "{ url: \"redis://h\", key_prefix: \"a b\" }",
            "global_store.redis.key_prefix",
        ),
        (
            "{ url: \"redis://h\", timeout: 0s }",
            "global_store.redis.timeout",
        ),
        (
            "{ url: \"redis://h\", timeout: 10s }",
            "global_store.redis.timeout",
        ),
    ] {
        fails_at(&with(&store(redis), rl), path);
    }
    let e = fails_at(&with(&store("{ key_prefix: x }"), rl), "global_store.redis");
    assert!(e.message.contains("url"), "{e:?}");
    assert!(!errors(&with(&store("{ url: \"redis://h\", colour: blue }"), rl)).is_empty());
}

#[test]
fn lease_bounds_are_checked() {
    let rl = |extra: &str| {
        format!("{{ rate_limit: {{ per_tenant: {{ rate: 1/s }}, scope: global{extra} }} }}")
    };
    fails_at(
        &with(STORE, &rl(", lease: 0")),
        "policies.p.rate_limit.lease",
    );
    fails_at(
        &with(STORE, &rl(", lease_ttl: 0s")),
        "policies.p.rate_limit.lease_ttl",
    );
    fails_at(
        &with(STORE, &rl(", lease_ttl: 2m")),
        "policies.p.rate_limit.lease_ttl",
    );
    fails_at(
        &with(STORE, &rl(", on_store_error: maybe")),
        "policies.p.rate_limit.on_store_error",
    );
    fails_at(
        &with(STORE, &rl(", scope: planet")),
        "policies.p.rate_limit.scope",
    );
}

#[test]
fn global_keys_on_a_local_limit_warn_where_they_stand() {
    let text = with(
        STORE,
        "{ rate_limit: { per_tenant: { rate: 1/s }, lease: 5, on_store_error: allow } }",
    );
    let w = warnings(&text);
    let paths: Vec<&str> = w.iter().map(|(_, _, p)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "global_store",
            "policies.p.rate_limit.lease",
            "policies.p.rate_limit.on_store_error"
        ],
        "{w:?}"
    );
}

/// A `lease` larger than a bucket lets one replica empty it in one call: accepted (it works),
/// but warned at the `lease`, naming the bucket; one that fits every bucket is not.
#[test]
fn a_lease_larger_than_a_bucket_warns_at_the_lease() {
    let rl = |lease: u64| {
        format!(
            "{{ rate_limit: {{ per_tenant: {{ rate: 100/s, burst: 50 }}, overrides: {{ z: {{ rate: 1/s, burst: 5 }} }}, scope: global, lease: {lease} }} }}"
        )
    };
    let w = warnings(&with(STORE, &rl(6)));
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].2, "policies.p.rate_limit.lease", "{w:?}");
    let all = super::warnings(&with(STORE, &rl(6)));
    let msg = &all[0].message;
    assert!(
        msg.contains("lease of 6") && msg.contains("5 token(s)") && msg.contains("overrides.z"),
        "{msg}"
    );
    assert!(msg.contains("whole bucket"), "{msg}");
    assert!(warnings(&with(STORE, &rl(5))).is_empty());
}

/// `store_unavailable` is the `limit` of a refusal by an unreachable store (`on_store_error:
/// deny`), so no limit may take it: the two would share one series.
#[test]
fn no_limit_may_be_named_as_the_store_refusal() {
    let e = fails_at(
        &policy("{ rate_limit: { per_tenant: { rate: 1/s, name: store_unavailable } } }"),
        "policies.p.rate_limit.per_tenant.name",
    );
    assert!(e.message.contains("reserved"), "{e:?}");
    ok(&policy(
        "{ rate_limit: { per_tenant: { rate: 1/s, name: store_unavailable2 } } }",
    ));
}

#[test]
fn a_store_nothing_uses_warns_and_none_warns_without_one() {
    let w = warnings(&format!("{STORE}{BASE}"));
    assert_eq!(w, [(1, 1, "global_store".to_owned())]);
    assert!(warnings(BASE).is_empty());
}

/// `rediss://` (in any case) is accepted with or without `tls`; `tls` is refused beside
/// `redis://` (the store would be spoken to in clear text), and its keys are checked where they
/// stand, as an upstream's are.
#[test]
fn a_rediss_store_takes_tls_and_a_redis_one_refuses_it() {
    let store = |redis: &str| format!("global_store:\n  redis: {redis}\n");
    let rl = "{ rate_limit: { per_tenant: { rate: 1/s }, scope: global } }";
    // Real files where they are read (their contents are judged by validate).
    let (ca, files) = (Ca::new("test ca"), Files::new());
    let ca_pem = files.ca("ca", &ca).display().to_string();
    let (cert, key) = files.pair("client", &ca.server(1));
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    for redis in [
        "{ url: \"rediss://redis.internal:6380/0\" }".to_owned(),
        "{ url: \"REDISS://:pw@redis.internal\" }".to_owned(),
        format!("{{ url: \"rediss://10.0.0.7:6380\", tls: {{ ca: {ca_pem}, server_name: redis.internal }} }}"),
        format!("{{ url: \"rediss://h\", tls: {{ ca: {ca_pem}, cert: {cert}, key: {key} }} }}"),
    ] {
        ok(&with(&store(&redis), rl));
    }
    for (redis, path, says) in [
        (
            "{ url: \"redis://h\", tls: { ca: /etc/hosts } }",
            "global_store.redis.tls",
            "needs a rediss:// url",
        ),
        (
            "{ url: \"rediss://h\", tls: { ca: /no/such/ca.pem } }",
            "global_store.redis.tls.ca",
            "cannot read",
        ),
        (
            "{ url: \"rediss://h\", tls: { cert: /etc/hosts } }",
            "global_store.redis.tls.cert",
            "needs its `key` too",
        ),
        (
            "{ url: \"rediss://h\", tls: { server_name: \"bad name\" } }",
            "global_store.redis.tls.server_name",
            "",
        ),
        (
            "{ url: \"rediss://h\", tls: { verify: false } }",
            "global_store.redis.tls.verify",
            "unknown key",
        ),
    ] {
        let e = fails_at(&with(&store(redis), rl), path);
        assert!(e.message.contains(says), "{redis}: {e:?}");
    }
}

/// A password in a `redis://` URL to a host off this machine travels in clear: a warning at the
/// URL. On loopback, or over `rediss://`, or without credentials, none.
#[test]
fn a_password_sent_in_clear_off_this_machine_warns() {
    let rl = "{ rate_limit: { per_tenant: { rate: 1/s }, scope: global } }";
    let warned = |url: &str| {
        let text = with(
            &format!("global_store:\n  redis: {{ url: \"{url}\" }}\n"),
            rl,
        );
        warnings(&text)
            .into_iter()
            .map(|(_, _, p)| p)
            .collect::<Vec<_>>()
    };
    for url in [
        "redis://:pw@redis.internal:6379",
        "redis://app:pw@10.0.0.7/1",
        "redis://token@redis.internal",
    ] {
        assert_eq!(warned(url), ["global_store.redis.url"], "{url}");
    }
    for url in [
        "redis://:pw@127.0.0.1:6379",
        "redis://:pw@localhost",
        "redis://:pw@[::1]:6379",
        "redis://:pw@[::ffff:127.0.0.1]:6379",
        "rediss://:pw@redis.internal",
        "redis://redis.internal:6379/0",
    ] {
        assert!(warned(url).is_empty(), "{url}: {:?}", warned(url));
    }
}

/// A store URL that is refused is echoed without its password (the error goes to the log, to
/// `POST /reload`'s answer and to the audit trail); `/config` shows it as `***` too.
#[test]
fn a_refused_url_is_echoed_without_its_password() {
    let rl = "{ rate_limit: { per_tenant: { rate: 1/s }, scope: global } }";
    for (url, shown) in [
        (
            "redis://user:pw@127.0.0.1:notaport/0",
            "\"redis://user:***@127.0.0.1:notaport/0\" is not a valid URL",
        ),
        (
            "redis://user:pw@127.0.0.1/x",
            "\"redis://user:***@127.0.0.1/x\": the database",
        ),
        ("http://:pw@h:1", "\"http://:***@h:1\" is not a redis://"),
        ("user:pw@h:1", "\"***@h:1\" is not a redis://"),
        ("redis://u:pa/ss@h", "\"redis://u:***@h\""),
    ] {
        let text = with(
            &format!("global_store:\n  redis: {{ url: \"{url}\" }}\n"),
            rl,
        );
        let e = fails_at(&text, "global_store.redis.url");
        assert!(e.message.contains(shown), "{url}: {e:?}");
        assert!(
            !e.message.contains("pw") && !e.message.contains("pa/ss"),
            "{url}: {e:?}"
        );
    }
    let cfg = crate::config::Config::from_str(
        &with(
            "global_store:\n  redis: { url: \"redis://u:s3cret@127.0.0.1:6379/0\" }\n",
            rl,
        ),
        "t.yaml",
    )
    .expect("valid");
    let shown = serde_json::to_string(&cfg.file).expect("serializes");
    assert!(shown.contains("redis://u:***@127.0.0.1:6379/0"), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
}
