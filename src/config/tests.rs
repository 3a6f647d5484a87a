//! Tests of the policy file: serde errors, every semantic check, and the shipped files.

mod checks;
mod global;
mod logs;
mod never;
mod nulls;
mod onepass;
mod plans;
mod ranges;
mod resilience;
mod slips;
mod tracing;

use std::path::Path;

use super::{Config, ConfigError};

/// The SPEC §2 example, verbatim.
const SPEC_EXAMPLE: &str = include_str!("tests/spec_example.yaml");

/// A small valid file; tests add to it or change one line.
const BASE: &str = "\
version: 1
upstreams:
  app:
    endpoints: [127.0.0.1:3000]
policies:
  p: {}
listeners:
  - name: inbound
    direction: inbound
    listen: 127.0.0.1:8080
    routes:
      - upstream: app
        policy: p
";

fn errors(text: &str) -> Vec<ConfigError> {
    match Config::from_str(text, "t.yaml") {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    }
}

/// The single error of `text`; fails if there are none or several.
fn one(text: &str) -> ConfigError {
    let mut all = errors(text);
    assert_eq!(
        all.len(),
        1,
        "expected exactly one error in:\n{text}\ngot: {all:#?}"
    );
    all.remove(0)
}

/// `text` must fail with an error at `path` (and may have others).
fn fails_at(text: &str, path: &str) -> ConfigError {
    let all = errors(text);
    match all.iter().find(|e| e.path == path) {
        Some(e) => e.clone(),
        None => panic!("expected an error at {path} in:\n{text}\ngot: {all:#?}"),
    }
}

fn ok(text: &str) {
    let all = errors(text);
    assert!(
        all.is_empty(),
        "expected no error in:\n{text}\ngot: {all:#?}"
    );
}

/// BASE with the policy `p` given `body`, a one-line flow mapping of its sections.
fn policy(body: &str) -> String {
    BASE.replace("  p: {}", &format!("  p: {body}"))
}

/// BASE with upstream `app` given `body` (a flow mapping).
fn upstream(body: &str) -> String {
    BASE.replace(
        "  app:\n    endpoints: [127.0.0.1:3000]",
        &format!("  app: {body}"),
    )
}

/// The warnings of `text`, which must be valid.
fn warnings(text: &str) -> Vec<ConfigError> {
    match Config::from_str(text, "t.yaml") {
        Ok(c) => c.warnings,
        Err(e) => panic!("expected a valid file, got:\n{e}"),
    }
}

fn spot(e: &ConfigError) -> (usize, usize, &str) {
    (e.line, e.column, e.path.as_str())
}

/// The line and column (from 1) where `needle` first stands in `text`.
fn found(text: &str, needle: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, c + 1)))
        .unwrap_or_else(|| panic!("{needle:?} is not in the text"))
}

// === whole files ===

#[test]
fn base_is_valid() {
    ok(BASE);
}

#[test]
fn a_byte_order_mark_before_the_text_is_passed_over() {
    // YAML 1.2 §5.2; it was read as part of the first key (`\u{feff}version`).
    ok(&format!("\u{feff}{BASE}"));
    let e = one(&format!(
        "\u{feff}{}",
        BASE.replace("[127.0.0.1:3000]", "[nohost]")
    ));
    assert_eq!(e.path, "upstreams.app.endpoints[0]", "{e:?}");
    assert_eq!((e.line, e.column), (4, 17), "{e:?}");
}

#[test]
fn spec_example_parses_and_only_its_tls_files_are_missing() {
    // The example names TLS files under /etc/rampart, which this machine does not have.
    let all = errors(SPEC_EXAMPLE);
    let paths: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "upstreams.payments.tls.ca",
            "listeners[0].tls.cert",
            "listeners[0].tls.key"
        ]
    );
    assert!(
        all[0]
            .message
            .starts_with("cannot read ca bundle \"/etc/rampart/ca.pem\""),
        "{all:#?}"
    );
    assert_eq!((all[0].line, all[0].column), (26, 48));
    assert_eq!((all[1].line, all[1].column), (64, 18));
}

#[test]
fn tls_files_that_exist_are_accepted() {
    use crate::tls::tests::support::{Ca, Files};
    let (ca, files) = (Ca::new("test ca"), Files::new());
    let (cert, key) = files.pair("x", &ca.server(1));
    let text = SPEC_EXAMPLE
        .replace(
            "    tls: { server_name: payments.internal, ca: /etc/rampart/ca.pem }",
            "",
        )
        .replace("/etc/rampart/tls/cert.pem", &cert.display().to_string());
    let dir = key.parent().expect("a temp dir").display().to_string();
    let e = one(&text.replace("/etc/rampart/tls/key.pem", &dir));
    assert_eq!(e.path, "listeners[0].tls.key");
    assert!(e.message.contains("is not a regular file"), "{e:?}");
    ok(&text.replace("/etc/rampart/tls/key.pem", &key.display().to_string()));
    // Their contents are read too: a key that is not the certificate's is refused.
    let (_, other) = files.pair("y", &ca.server(2));
    let e = one(&text.replace("/etc/rampart/tls/key.pem", &other.display().to_string()));
    assert_eq!(e.path, "listeners[0].tls.key");
    assert!(e.message.contains("key does not match"), "{e:?}");
}

/// An X.509 v1 certificate (what `openssl x509 -req` makes without an extension file) as a
/// listener's cert is refused in words that say what it is and how to make one rustls takes,
/// never as a "peer" certificate nor in rustls's `Debug` text.
#[test]
fn a_v1_listener_certificate_is_refused_in_words() {
    use std::process::Command;
    let dir = tempfile::tempdir().expect("temp dir");
    let (key, csr, cert) = (
        dir.path().join("v1-key.pem"),
        dir.path().join("v1.csr"),
        dir.path().join("v1.pem"),
    );
    let openssl = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("openssl").args(args).output().expect(
            "the openssl command is needed (Debian package openssl; scripts/test.sh installs it)",
        );
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let s = |t: &'static str| std::ffi::OsStr::new(t);
    openssl(&[
        s("req"),
        s("-new"),
        s("-newkey"),
        s("ec"),
        s("-pkeyopt"),
        s("ec_paramgen_curve:P-256"),
        s("-nodes"),
        s("-subj"),
        s("/CN=localhost"),
        s("-keyout"),
        key.as_os_str(),
        s("-out"),
        csr.as_os_str(),
    ]);
    openssl(&[
        s("x509"),
        s("-req"),
        s("-in"),
        csr.as_os_str(),
        s("-signkey"),
        key.as_os_str(),
        s("-days"),
        s("30"),
        s("-out"),
        cert.as_os_str(),
    ]);
    let text = SPEC_EXAMPLE
        .replace(
            "    tls: { server_name: payments.internal, ca: /etc/rampart/ca.pem }",
            "",
        )
        .replace("/etc/rampart/tls/cert.pem", &cert.display().to_string())
        .replace("/etc/rampart/tls/key.pem", &key.display().to_string());
    let e = one(&text);
    assert_eq!(e.path, "listeners[0].tls.cert", "{e:?}");
    let want = format!(
        "{}: certificate is X.509 v1; rustls accepts only v3 certificates (make it with a v3 \
         extension, e.g. openssl's -extfile / -addext)",
        cert.display()
    );
    assert_eq!(e.message, want);
}

/// The policy files under `config/`.
fn shipped_files() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("config/ must be readable") {
            let p = entry.expect("config/ entries must be readable").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                files.push(p);
            }
        }
    }
    files
}

#[test]
fn every_shipped_file_validates() {
    let files = shipped_files();
    assert!(
        files.len() >= 5,
        "expected rampart.yaml, demo.yaml and examples, found {files:?}"
    );
    for f in files {
        if let Err(e) = Config::load(&f) {
            panic!("{} must validate:\n{e}", f.display());
        }
    }
}

/// What `/config` shows (the file model as JSON) is a file that validates to the same model:
/// every duration is shown in a form that reads back (0.5ms was accepted, shown as `0ms`).
#[test]
fn the_model_shown_reads_back_to_itself() {
    let mut texts: Vec<(String, String)> = shipped_files()
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("a shipped file is readable");
            (f.display().to_string(), text)
        })
        .collect();
    texts.push((
        "durations".into(),
        BASE.replace(
            "  p: {}",
            "  p: { timeout: { request: 1.5s, per_try: 1001ms }, retry: { attempts: 2, backoff: { base: 0.025s, max: 0.5m } } }",
        ) + "runtime: { shutdown_grace: 0.01h, body_idle_timeout: 90s }\n",
    ));
    for (name, text) in texts {
        let c = Config::from_str(&text, &name).unwrap_or_else(|e| panic!("{name}: {e}"));
        let shown = serde_json::to_string_pretty(&c.file).expect("the model serializes");
        let again = Config::from_str(&shown, "shown")
            .unwrap_or_else(|e| panic!("{name} as shown does not validate:\n{e}\n{shown}"));
        assert_eq!(again.file, c.file, "{name} as shown:\n{shown}");
    }
}

#[test]
fn display_is_file_line_column_path_message() {
    let e = one(&BASE.replace("upstream: app", "upstream: ap"));
    assert_eq!(
        e.to_string(),
        "t.yaml:12:19: listeners[0].routes[0].upstream: no upstream named \"ap\" (known: app)"
    );
}

// === serde errors ===

#[test]
fn unknown_key_names_the_key_and_suggests() {
    let e = one(&BASE.replace(
        "    endpoints: [127.0.0.1:3000]\n",
        "    endpoints: [127.0.0.1:3000]\n    connect_timout: 1s\n",
    ));
    assert_eq!(spot(&e), (5, 5, "upstreams.app.connect_timout"));
    assert_eq!(
        e.message,
        "unknown key \"connect_timout\"; did you mean \"connect_timeout\"?"
    );
}

/// A policy (or an upstream) written inline on a route, where its name goes, is told that a
/// name goes there and where such sections are defined, not only that text was expected.
#[test]
fn a_section_written_where_a_name_goes_says_so() {
    let e = one(&BASE.replace("policy: p", "policy: { retry: { attempts: 2 } }"));
    assert_eq!(e.path, "listeners[0].routes[0].policy", "{e:?}");
    assert_eq!(
        e.message,
        "invalid type: a mapping, expected a policy name: policies are defined under `policies:` and a route names one (`policy: NAME`)"
    );
    let e = one(&BASE.replace("upstream: app", "upstream: [app]"));
    assert_eq!(e.path, "listeners[0].routes[0].upstream", "{e:?}");
    assert!(
        e.message
            .starts_with("invalid type: a list, expected an upstream name: upstreams are defined under `upstreams:`"),
        "{e:?}"
    );
}

#[test]
fn unknown_top_level_key() {
    let e = one(&format!("{BASE}listners: []\n"));
    assert_eq!(spot(&e), (14, 1, "listners"));
    assert!(e.message.starts_with("unknown key \"listners\""), "{e:?}");
    let e = one(&format!("{BASE}zzz: 1\n"));
    assert!(
        e.message.contains("expected one of: version, admin"),
        "{e:?}"
    );
}

/// Top-level keys starting with `x-` are extension fields, as in docker-compose files: they
/// hold anchors that the file merges elsewhere, and are otherwise ignored, without a warning.
/// Any other unknown top-level key stays an error, as does an `x-` key below the top.
#[test]
fn top_level_x_keys_hold_anchors_and_are_ignored() {
    let text = BASE
        .replace(
            "version: 1\n",
            "version: 1\nx-common: &common\n  timeout: { request: 2s }\nx-note: anything at all\n",
        )
        .replace("  p: {}", "  p: { <<: *common, retry: { attempts: 2 } }");
    let f = Config::from_str(&text, "t.yaml").expect("valid").file;
    let want = Config::from_str(
        &policy("{ timeout: { request: 2s }, retry: { attempts: 2 } }"),
        "t.yaml",
    )
    .expect("valid")
    .file;
    assert_eq!(f.policies["p"], want.policies["p"]);
    assert!(warnings(&text).is_empty(), "{:#?}", warnings(&text));
    // An error inside the anchored text is placed where it is written, under the key merged.
    let e = one(&text.replace("request: 2s", "request: 2x"));
    assert_eq!(
        (e.line, e.path.as_str()),
        (3, "policies.p.timeout.request"),
        "{e:?}"
    );
    // Only at the top: below it an `x-` key is an unknown key like any other.
    fails_at(&policy("{ x-mine: 1 }"), "policies.p.x-mine");
}

/// A top-level `X-` key is no extension field (only lowercase `x-` is, as keys are
/// case-sensitive): it stays refused, and the message says which spelling is ignored, where it
/// used to list only the keys rampart knows. An `X-` key below the top gets the plain message.
#[test]
fn a_capital_x_top_level_key_is_refused_with_the_lowercase_spelling_named() {
    let text = BASE.replace("version: 1\n", "version: 1\nX-common: &common { a: 1 }\n");
    let e = one(&text);
    assert_eq!(spot(&e), (2, 1, "X-common"));
    assert_eq!(
        e.message,
        "unknown key \"X-common\"; top-level keys starting with `x-` (lowercase) are ignored, for anchors: did you mean \"x-common\"?"
    );
    let e = one(&policy("{ X-mine: 1 }"));
    assert_eq!(e.path, "policies.p.X-mine");
    assert!(!e.message.contains("lowercase"), "{e:?}");
}

#[test]
fn bad_duration_is_placed_on_the_value() {
    let e = one(&policy("{ timeout: { request: 5 sec } }"));
    assert_eq!(spot(&e), (6, 28, "policies.p.timeout.request"));
    assert!(e.message.starts_with("invalid duration \"5 sec\""), "{e:?}");
    assert!(!e.message.contains(" at line "), "{e:?}");
}

#[test]
fn wrong_type_and_missing_key() {
    let e = one(&BASE.replace("version: 1", "version: one"));
    assert_eq!(spot(&e), (1, 10, "version"));
    let e = one(&BASE.replace("    direction: inbound\n", ""));
    assert_eq!(spot(&e), (8, 5, "listeners[0]"));
    assert_eq!(e.message, "missing required key \"direction\"");
}

#[test]
fn syntax_errors_and_empty_files() {
    let e = one("version: 1\nlisteners: [\n");
    assert!(e.line >= 2 && e.column >= 1, "{e:?}");
    assert!(!e.message.is_empty());
    // Named under the key the parser was reading when it stopped.
    assert_eq!(e.path, "listeners[0]", "{e:?}");
    let e = one(&BASE.replace("upstream: app", "upstream: [app"));
    assert!(e.message.starts_with("invalid YAML: "), "{e:?}");
    assert!(
        e.path.starts_with("listeners[0].routes[0].upstream"),
        "{e:?}"
    );
    let e = one("version: 1\n\tbad: 2\n");
    assert_eq!((e.line, e.column), (2, 1));
    // A tab is looked for past where the parser stopped: no key is named for it.
    assert_eq!(e.path, "", "{e:?}");
    for empty in ["", "\n\n", "# only a comment\n", "---\n"] {
        let e = one(empty);
        assert!(e.message.starts_with("the policy file is empty"), "{e:?}");
    }
    let e = one("- 1\n");
    assert_eq!(
        e.message,
        "invalid type: sequence, expected a mapping with keys such as version and listeners"
    );
}

/// A key holding an escape sequence or a line break is shown escaped wherever an error names
/// it (its path, an unknown key, the names a reference could have meant, a syntax error under
/// it): a file cannot recolour the terminal or forge a log line through `validate` or a reload.
#[test]
fn control_characters_in_keys_are_escaped_in_errors() {
    let hostile = "\"x\\e[31m\\nfake: line\"";
    let texts = [
        // An unknown key at the top.
        format!("{BASE}{hostile}: 1\n"),
        // A bad value under it.
        BASE.replace(
            "  app:\n",
            &format!("  app:\n  {hostile}: {{endpoints: 5}}\n"),
        ),
        // A reference to a name that is not there, whose known names include it.
        BASE.replace(
            "  app:\n",
            &format!("  {hostile}:\n    endpoints: [127.0.0.1:1]\n  app:\n"),
        )
        .replace("upstream: app", "upstream: ap"),
        // A syntax error under it.
        BASE.replace("  app:\n", &format!("  {hostile}: [\n")),
    ];
    for text in &texts {
        let all = errors(text);
        assert!(!all.is_empty(), "no error for:\n{text}");
        for e in all {
            let shown = e.to_string();
            assert!(
                !shown.chars().any(char::is_control),
                "a raw control character in: {shown:?}"
            );
            if shown.contains("x\\u{1b}") {
                assert!(shown.contains("x\\u{1b}[31m\\nfake: line"), "{shown:?}");
            }
        }
    }
    let e = one(&format!("{BASE}{hostile}: 1\n"));
    assert_eq!(e.path, "x\\u{1b}[31m\\nfake: line");
    assert!(
        e.message
            .starts_with("unknown key \"x\\u{1b}[31m\\nfake: line\""),
        "{e:?}"
    );
}

/// The names that label metrics and log lines (listeners, routes, upstreams, policies) are
/// refused when empty or holding a control character, each at its own place; a name with
/// spaces or other printable characters is still a name.
#[test]
fn names_that_label_metrics_must_be_printable() {
    let cases = [
        (
            BASE.replace("name: inbound", "name: \"in\\nbound\""),
            "listeners[0].name",
            "invalid listener name \"in\\nbound\": '\\n' is a control character",
        ),
        (
            BASE.replace(
                "      - upstream: app\n",
                "      - upstream: app\n        name: \"r\\e[31m\"\n",
            ),
            "listeners[0].routes[0].name",
            "invalid route name \"r\\u{1b}[31m\": '\\u{1b}' is a control character",
        ),
        (
            BASE.replace("  app:\n", "  \"a\\tpp\":\n")
                .replace("upstream: app", "upstream: \"a\\tpp\""),
            "upstreams.a\\tpp",
            "invalid upstream name \"a\\tpp\": '\\t' is a control character",
        ),
        (
            BASE.replace("  p: {}", "  \"p\\r\": {}")
                .replace("policy: p", "policy: \"p\\r\""),
            "policies.p\\r",
            "invalid policy name \"p\\r\": '\\r' is a control character",
        ),
        (
            BASE.replace("  p: {}", "  \" \": {}")
                .replace("policy: p", "policy: \" \""),
            "policies. ",
            "the policy name is empty",
        ),
        (
            BASE.replace("name: inbound", "name: \" \""),
            "listeners[0].name",
            "the listener name is empty",
        ),
    ];
    for (text, path, message) in &cases {
        let e = one(text);
        assert_eq!(e.path, *path, "{e:?}");
        assert!(e.message.starts_with(message), "{e:?}");
        let shown = e.to_string();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
    }
    // The error for a key points at the key: line 3 is `"a\tpp":` under `upstreams:`.
    let e = one(&cases[2].0);
    assert_eq!((e.line, e.column), (3, 3), "{e:?}");
    ok(&BASE
        .replace("name: inbound", "name: \"in bound é\"")
        .replace("  app:\n", "  \"app v2\":\n")
        .replace("upstream: app", "upstream: \"app v2\""));
}

#[test]
fn duplicate_keys_are_refused() {
    let e = one(&BASE.replace(
        "policies:\n",
        "  app:\n    endpoints: [127.0.0.1:3001]\npolicies:\n",
    ));
    assert_eq!(spot(&e), (5, 3, "upstreams.app"));
    assert!(e.message.contains("first at 3:3"), "{e:?}");
    let e = one(&format!("{BASE}version: 1\n"));
    assert_eq!(spot(&e), (14, 1, "version"));
    assert!(e.message.contains("first at 1:1"), "{e:?}");
    // The first copy is not read (its error here goes unseen), so the repeat is refused,
    // naming where the first is.
    let e = one(&BASE.replace(
        "policies:\n",
        "    connect_timeout: 5x\n  app:\n    endpoints: [127.0.0.1:3001]\npolicies:\n",
    ));
    assert_eq!(spot(&e), (6, 3, "upstreams.app"));
    assert!(e.message.contains("first at 3:3"), "{e:?}");
    // A repeat whose own value is refused: both errors show. (Before, taking the refused
    // value out took every copy of the key, and the repeat went unreported.)
    let all = errors(&policy("{ timeout: { request: 2s }, timeout: 5 }"));
    assert_eq!(all.len(), 2, "{all:#?}");
    let again = all
        .iter()
        .find(|e| e.message.contains("given twice"))
        .unwrap_or_else(|| panic!("the repeat must be refused: {all:#?}"));
    assert_eq!(spot(again), (6, 34, "policies.p.timeout"));
    assert!(again.message.contains("first at 6:8"), "{again:?}");
    assert!(
        all.iter().any(|e| e.message.contains("invalid type")),
        "{all:#?}"
    );
}

// === references and several errors ===

#[test]
fn dangling_references_name_the_known_ones() {
    let e = one(&BASE.replace("upstream: app", "upstream: ap"));
    assert_eq!(spot(&e), (12, 19, "listeners[0].routes[0].upstream"));
    assert_eq!(e.message, "no upstream named \"ap\" (known: app)");
    let e = one(&BASE.replace("policy: p", "policy: standard"));
    assert_eq!(spot(&e), (13, 17, "listeners[0].routes[0].policy"));
    assert_eq!(e.message, "no policy named \"standard\" (known: p)");
}

#[test]
fn all_errors_are_reported_in_file_order() {
    let text = policy("{ retry: { attempts: 0 }, load_shed: { max_in_flight: 0 } }")
        .replace("upstream: app", "upstream: nope")
        + "tenants: { max_tracked: 0 }\n";
    let all = errors(&text);
    let paths: Vec<&str> = all.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "policies.p.retry.attempts",
            "policies.p.load_shed.max_in_flight",
            "listeners[0].routes[0].upstream",
            "tenants.max_tracked"
        ]
    );
    assert_eq!((all[0].line, all[0].column), (6, 27));
    let shown = super::ConfigErrors(all).to_string();
    assert_eq!(shown.lines().count(), 4, "one line per error:\n{shown}");
    assert!(
        shown.starts_with("t.yaml:6:27: policies.p.retry.attempts: 0 is out of range"),
        "{shown}"
    );
}

#[test]
fn missing_values_fall_back_to_the_nearest_key() {
    let e = one(&upstream("{ endpoints: [] }"));
    assert_eq!(spot(&e), (3, 21, "upstreams.app.endpoints"));
    let e = one(&format!("{BASE}tenants: {{ from: [ {{}} ] }}\n"));
    assert_eq!(spot(&e), (14, 20, "tenants.from[0]"));
}

#[test]
fn serde_messages_speak_yaml() {
    let e = one(&BASE.replace(
        "    endpoints: [127.0.0.1:3000]\n",
        "    endpoints: [127.0.0.1:3000]\n    balance: rr\n",
    ));
    assert_eq!(e.to_string(), "t.yaml:5:14: upstreams.app.balance: unknown value \"rr\"; expected one of: round_robin, p2c");
    let e = one(&policy(
        "{ rate_limit: { per_tenant: [ { rate: 1/s, brust: 3 } ] } }",
    ));
    assert_eq!(e.path, "policies.p.rate_limit.per_tenant[0].brust");
    assert_eq!(e.message, "unknown key \"brust\"; did you mean \"burst\"?");
    let e = one(&policy("{ timeout: { per_try: { auto: { mn: 1s } } } }"));
    assert_eq!(e.path, "policies.p.timeout.per_try.auto.mn");
    // The range is the one the checks take (1 to 10 tries), not the type's (0 to 2^32-1).
    let e = one(&policy("{ retry: { attempts: -1 } }"));
    assert!(
        e.message.ends_with("expected a whole number from 1 to 10"),
        "{e:?}"
    );
    let e = one(&BASE.replace("127.0.0.1:8080", "localhost:8080"));
    assert_eq!(
        (e.line, e.column, e.path.as_str()),
        (10, 13, "listeners[0].listen")
    );
    assert!(
        e.message.starts_with("invalid address \"localhost:8080\""),
        "{e:?}"
    );
    let e = one("version: 1\nlisteners: 5\n");
    assert_eq!(e.message, "invalid type: integer `5`, expected a list");
    let e = one("version: 1\n---\nversion: 1\n");
    assert_eq!((e.line, e.column), (2, 1));
    assert!(e.message.contains("more than one YAML document"), "{e:?}");
}

#[test]
fn locate_falls_back_to_the_nearest_written_parent() {
    use super::locate::{Doc, KeyPath, Target};
    let doc = Doc::parse(BASE);
    let routes = KeyPath::default().key("listeners").idx(0).key("routes");
    assert_eq!(
        doc.locate(&routes.idx(0).key("upstream"), Target::Value),
        (12, 19)
    );
    assert_eq!(
        doc.locate(&routes.idx(0).key("upstream"), Target::Key),
        (12, 9)
    );
    // routes[5] is not written: the `routes` key is the nearest place that is.
    assert_eq!(
        doc.locate(&routes.idx(5).key("policy"), Target::Value),
        (11, 5)
    );
    // tls is not written in listeners[0]: the item itself (its first key).
    let tls = KeyPath::default()
        .key("listeners")
        .idx(0)
        .key("tls")
        .key("cert");
    assert_eq!(doc.locate(&tls, Target::Key), (8, 5));
    assert_eq!(
        doc.locate(&KeyPath::default().key("nothing"), Target::Key),
        (1, 1)
    );
    assert_eq!(
        KeyPath::parse("listeners[0].routes[12].upstream").to_string(),
        "listeners[0].routes[12].upstream"
    );
    // An unparsable text still answers.
    assert_eq!(Doc::parse("{[").locate(&tls, Target::Value), (1, 1));
}

#[test]
fn serde_paths_with_spaces_are_kept() {
    let e = one(&policy(
        "{ rate_limit: { overrides: { \"bad tenant\": { rate: 5 } } } }",
    ));
    assert_eq!(e.path, "policies.p.rate_limit.overrides.bad tenant.rate");
    assert!(
        e.message.starts_with("invalid rate: 5 has no unit"),
        "{e:?}"
    );
}

#[test]
fn crlf_text_is_located_like_lf() {
    let e = one(&BASE
        .replace("upstream: app", "upstream: ap")
        .replace('\n', "\r\n"));
    assert_eq!(spot(&e), (12, 19, "listeners[0].routes[0].upstream"));
}

#[test]
fn access_log_short_and_long_forms() {
    use super::file::LogTo;
    let with = |v: &str| {
        BASE.replace(
            "    listen: 127.0.0.1:8080\n",
            &format!("    listen: 127.0.0.1:8080\n    access_log: {v}\n"),
        )
    };
    let log = |v: &str| {
        Config::from_str(&with(v), "t.yaml")
            .expect("valid")
            .file
            .listeners[0]
            .access_log
            .clone()
    };
    let on = log("true").expect("on");
    assert_eq!((on.to, on.sample_ok.0), (LogTo::Stdout, 1.0));
    assert!(log("false").is_none());
    // `stderr` is the stream, as `stdout` is, not a file of that name in the working
    // directory; such a file is written `./stderr`.
    let err = log("{ to: stderr }").expect("on");
    assert_eq!(err.to, LogTo::Stderr);
    let file = log("{ to: ./stderr }").expect("on");
    assert_eq!(file.to, LogTo::File("./stderr".into()));
    let dir = std::env::temp_dir();
    let path = dir.join("access.jsonl");
    let long = log(&format!("{{ to: {}, sample_ok: 10% }}", path.display())).expect("on");
    assert_eq!((long.to, long.sample_ok.0), (LogTo::File(path), 0.1));
    fails_at(
        &with("{ to: /no/such/dir/a.jsonl }"),
        "listeners[0].access_log.to",
    );
    fails_at(
        &with("{ to: stdout, sample: 1% }"),
        "listeners[0].access_log.sample",
    );
    fails_at(
        &with("{ to: stdout, sample_ok: 150% }"),
        "listeners[0].access_log.sample_ok",
    );
}
