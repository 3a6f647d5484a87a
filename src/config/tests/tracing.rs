//! `tracing:`: defaults, and every setting this build would not act on refused at its place.

use super::{fails_at, one, spot, BASE};
use crate::config::file::{OtlpCompression, OtlpProtocol};
use crate::config::Config;
use crate::tls::tests::support::{Ca, Files};

/// BASE with a `tracing:` section whose `otlp` mapping is `otlp` and extra lines `rest`.
fn traced(otlp: &str, rest: &str) -> String {
    format!("{BASE}tracing:\n  otlp: {otlp}\n{rest}")
}

/// BASE with `otlp` as the `otlp` mapping must fail once, at `path`, saying `says`.
fn refused(otlp: &str, path: &str, says: &str) {
    let e = one(&traced(otlp, ""));
    assert_eq!(e.path, path, "{otlp}: {e:?}");
    assert!(e.message.contains(says), "{otlp}: {e:?}");
}

/// The `tracing` section of `text`, which must be valid.
fn tracing_of(text: &str) -> crate::config::file::Tracing {
    Config::from_str(text, "t.yaml")
        .unwrap_or_else(|e| panic!("{text}\n{e}"))
        .file
        .tracing
        .expect("tracing on")
}

#[test]
fn a_minimal_section_takes_the_otlp_defaults() {
    let t = tracing_of(&traced("{ endpoint: \"http://127.0.0.1:4318\" }", ""));
    assert_eq!(t.otlp.protocol, OtlpProtocol::HttpProtobuf);
    assert_eq!(t.sample.0, 1.0, "the SDK default: every new trace");
    assert_eq!(t.service_name, "rampart");
    assert_eq!(t.otlp.flush_every.0.as_secs(), 1);
    assert_eq!(t.otlp.timeout.0.as_secs(), 10);
    let full = traced(
        "{ endpoint: \"http://collector.local:4318/base/\", protocol: http/json, flush_every: 200ms, timeout: 2s }",
        "  sample: 10%\n  service_name: edge\n",
    );
    let t = tracing_of(&full);
    assert_eq!(t.otlp.protocol, OtlpProtocol::HttpJson);
    assert_eq!(t.otlp.compression, OtlpCompression::None);
    assert_eq!(t.sample.0, 0.1);
    let gz = traced(
        "{ endpoint: \"http://127.0.0.1:4317\", protocol: grpc, compression: gzip }",
        "",
    );
    let t = tracing_of(&gz);
    assert_eq!(t.otlp.compression, OtlpCompression::Gzip);
    refused(
        "{ endpoint: \"http://127.0.0.1:4318\", compression: zstd }",
        "tracing.otlp.compression",
        "none, gzip",
    );
    assert!(Config::from_str(BASE, "t.yaml")
        .expect("valid")
        .file
        .tracing
        .is_none());
}

#[test]
fn grpc_is_taken_on_an_endpoint_without_a_path() {
    for endpoint in ["http://127.0.0.1:4317", "http://collector.local:4317/"] {
        let text = traced(
            &format!("{{ endpoint: \"{endpoint}\", protocol: grpc }}"),
            "",
        );
        let t = tracing_of(&text);
        assert_eq!(t.otlp.protocol, OtlpProtocol::Grpc);
    }
    // A path would be dropped (gRPC's path is the method's): refused, not ignored.
    refused(
        "{ endpoint: \"http://127.0.0.1:4317/otlp\", protocol: grpc }",
        "tracing.otlp.endpoint",
        "a gRPC endpoint has no path",
    );
    refused(
        "{ endpoint: \"http://127.0.0.1:4318\", protocol: http/xml }",
        "tracing.otlp.protocol",
        "expected one of: http/protobuf, http/json, grpc",
    );
}

#[test]
fn the_endpoint_is_an_http_or_https_base_url() {
    for (endpoint, says) in [
        (
            "ftp://collector:4318",
            "needs the http:// or https:// scheme",
        ),
        ("127.0.0.1:4318", "needs the http:// or https:// scheme"),
        ("http://127.0.0.1:4318/?x=1", "has a query"),
        ("http://", "invalid URL"),
        ("not a url", "invalid URL"),
    ] {
        let e = one(&traced(&format!("{{ endpoint: \"{endpoint}\" }}"), ""));
        assert_eq!(spot(&e), (15, 21, "tracing.otlp.endpoint"), "{endpoint}");
        assert!(e.message.contains(says), "{endpoint}: {e:?}");
    }
    // https is verified against `ca` (or the system's roots); a `ca` an http endpoint would never
    // read is refused, and so is one that is not there.
    Config::from_str(
        &traced("{ endpoint: \"https://collector.example:4318\" }", ""),
        "t.yaml",
    )
    .expect("https with the system's roots");
    // Real files where they are read (their contents are judged by validate).
    let (ca, files) = (Ca::new("test ca"), Files::new());
    let ca_pem = files.ca("ca", &ca).display().to_string();
    let (cert, key) = files.pair("client", &ca.server(1));
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    // The scheme in any case, as the URL parser reads it: a `ca` beside HTTPS:// is read.
    Config::from_str(
        &traced(
            &format!("{{ endpoint: \"HTTPS://collector.example:4318\", ca: {ca_pem} }}"),
            "",
        ),
        "t.yaml",
    )
    .expect("an upper-case https scheme takes its ca");
    let e = one(&traced(
        "{ endpoint: \"HTTPS://collector.example:4318\", ca: /etc/hosts }",
        "",
    ));
    assert_eq!(e.path, "tracing.otlp.ca", "{e:?}");
    assert!(e.message.ends_with("no certificate in it"), "{e:?}");
    refused(
        "{ endpoint: \"http://127.0.0.1:4318\", ca: /etc/hosts }",
        "tracing.otlp.ca",
        "only applies to an https://",
    );
    refused(
        "{ endpoint: \"https://collector.example:4318\", ca: /no/such/ca.pem }",
        "tracing.otlp.ca",
        "cannot read collector ca bundle",
    );
    // A client certificate (mutual TLS): https only, with its key.
    Config::from_str(
        &traced(
            &format!(
                "{{ endpoint: \"https://collector.example:4318\", cert: {cert}, key: {key} }}"
            ),
            "",
        ),
        "t.yaml",
    )
    .expect("a client certificate for an https collector");
    refused(
        "{ endpoint: \"http://127.0.0.1:4318\", key: /etc/hosts }",
        "tracing.otlp.key",
        "only applies to an https://",
    );
    refused(
        "{ endpoint: \"https://collector.example:4318\", cert: /etc/hosts }",
        "tracing.otlp.cert",
        "needs its `key` too",
    );
    // The key that is there is still read: each file's problem in the one pass.
    let text = traced(
        "{ endpoint: \"https://collector.example:4318\", cert: /no/such.pem, key: /etc/hosts }",
        "",
    );
    let c = fails_at(&text, "tracing.otlp.cert");
    assert!(
        c.message.contains("cannot read client certificate"),
        "{c:?}"
    );
    let k = fails_at(&text, "tracing.otlp.key");
    assert!(k.message.contains("no private key in it"), "{k:?}");
}

#[test]
fn other_values_and_keys_are_checked_in_place() {
    let typo = traced("{ endpont: \"http://127.0.0.1:4318\" }", "");
    let e = fails_at(&typo, "tracing.otlp.endpont");
    assert!(e.message.contains("did you mean \"endpoint\""), "{e:?}");
    let ok = "{ endpoint: \"http://127.0.0.1:4318\" }";
    let e = one(&traced(ok, "  sample: 150%\n"));
    assert_eq!(spot(&e), (16, 11, "tracing.sample"));
    let e = one(&traced(ok, "  service_name: \"\"\n"));
    assert_eq!(e.path, "tracing.service_name");
    let e = one(&traced(
        "{ endpoint: \"http://127.0.0.1:4318\", flush_every: 0s }",
        "",
    ));
    assert_eq!(e.path, "tracing.otlp.flush_every");
    let e = one(&traced(
        "{ endpoint: \"http://127.0.0.1:4318\", timeout: 0s }",
        "",
    ));
    assert_eq!(e.path, "tracing.otlp.timeout");
    let e = one(&format!("{BASE}tracing: {{ sample: 10% }}\n"));
    assert_eq!(e.path, "tracing");
    assert!(e.message.contains("missing required key \"otlp\""), "{e:?}");
    let e = one(&traced(ok, "  zipkin: true\n"));
    assert_eq!(e.path, "tracing.zipkin");
}

/// `otlp.headers`: any header line a collector may want (a vendor's key), none the exporter
/// writes itself, each checked at its place; in clear off this machine they draw a warning;
/// `/config` shows their names, never their values.
#[test]
fn export_headers_are_checked_warned_in_clear_and_redacted() {
    let with = |endpoint: &str, headers: &str| {
        traced(
            &format!("{{ endpoint: \"{endpoint}\", headers: {headers} }}"),
            "",
        )
    };
    let good = with(
        "http://127.0.0.1:4318",
        "{ authorization: \"Bearer s3cret\", x-scope: edge }",
    );
    let cfg = Config::from_str(&good, "t.yaml").expect("valid");
    assert!(cfg.warnings.is_empty(), "loopback: {:?}", cfg.warnings);
    let shown = serde_json::to_string(&cfg.file).expect("serializes");
    assert!(shown.contains("\"authorization\":\"***\""), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
    let far = with(
        "http://collector.example:4318",
        "{ authorization: \"Bearer s3cret\" }",
    );
    let w = super::warnings(&far);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].path, "tracing.otlp.headers");
    assert!(w[0].message.contains("go in clear"), "{w:?}");
    assert!(super::warnings(&with(
        "https://collector.example:4318",
        "{ authorization: \"Bearer s3cret\" }"
    ))
    .is_empty());
    for (headers, path, says) in [
        (
            "{ \"bad name\": x }",
            "tracing.otlp.headers.bad name",
            "invalid header name",
        ),
        (
            "{ content-type: text/plain }",
            "tracing.otlp.headers.content-type",
            "set by the exporter",
        ),
        (
            "{ TE: trailers }",
            "tracing.otlp.headers.TE",
            "set by the exporter",
        ),
        (
            "{ x-key: \"a\\nb\" }",
            "tracing.otlp.headers.x-key",
            "invalid header value",
        ),
        (
            "{ X-Key: a, x-key: b }",
            "tracing.otlp.headers.x-key",
            "given twice",
        ),
    ] {
        let e = one(&with("http://127.0.0.1:4318", headers));
        assert_eq!(e.path, path, "{headers}: {e:?}");
        assert!(e.message.contains(says), "{headers}: {e:?}");
    }
}

/// The endpoint's password (userinfo) is shown nowhere: `/config` shows `***`, and an error
/// about the endpoint echoes it without.
#[test]
fn the_endpoints_password_is_shown_nowhere() {
    let cfg = Config::from_str(
        &traced("{ endpoint: \"http://user:otlppass@127.0.0.1:4318\" }", ""),
        "t.yaml",
    )
    .expect("valid");
    let shown = serde_json::to_string(&cfg.file).expect("serializes");
    assert!(
        shown.contains("\"http://user:***@127.0.0.1:4318\""),
        "{shown}"
    );
    assert!(!shown.contains("otlppass"), "{shown}");
    for (otlp, says) in [
        (
            "{ endpoint: \"ftp://user:otlppass@127.0.0.1:4318\" }",
            "\"ftp://user:***@127.0.0.1:4318\" needs the http:// or https:// scheme",
        ),
        (
            "{ endpoint: \"http://user:otlppass@127.0.0.1:4318/?a=1\" }",
            "\"http://user:***@127.0.0.1:4318/?a=***\" has a query",
        ),
        (
            "{ endpoint: \"http://user:otlppass@127.0.0.1:4317/x\", protocol: grpc }",
            "\"http://user:***@127.0.0.1:4317/x\": a gRPC endpoint has no path",
        ),
        (
            "{ endpoint: \"http://user:otlp pass@127.0.0.1:4318\" }",
            "invalid URL \"http://user:***@127.0.0.1:4318\"",
        ),
    ] {
        let e = one(&traced(otlp, ""));
        assert!(e.message.contains(says), "{otlp}: {e:?}");
        assert!(!e.message.contains("otlp"), "{otlp}: {e:?}");
    }
}

/// The endpoint's `user:password@` is sent as HTTP Basic `authorization`: beside an
/// `authorization` of `headers` it is refused at that header's place (FILE:LINE:COL), and in
/// clear to a collector off this machine it draws a warning at the endpoint.
#[test]
fn the_endpoints_userinfo_is_one_authorization_and_warned_in_clear() {
    let both = traced(
        "{ endpoint: \"http://user:otlppass@127.0.0.1:4318\", headers: { Authorization: \"Bearer x\" } }",
        "",
    );
    let e = one(&both);
    assert_eq!(e.path, "tracing.otlp.headers.Authorization", "{e:?}");
    assert!(e.message.contains("user:password too"), "{e:?}");
    assert!(!e.message.contains("otlppass"), "{e:?}");
    assert!(e.line > 0 && e.column > 0, "{e:?}");
    let near = traced("{ endpoint: \"http://user:otlppass@127.0.0.1:4318\" }", "");
    assert!(super::warnings(&near).is_empty());
    let far = traced(
        "{ endpoint: \"http://user:otlppass@collector.example:4318\" }",
        "",
    );
    let w = super::warnings(&far);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].path, "tracing.otlp.endpoint");
    assert!(w[0].message.contains("in clear"), "{w:?}");
    assert!(!w[0].message.contains("otlppass"), "{w:?}");
    let tls = traced(
        "{ endpoint: \"https://user:otlppass@collector.example:4318\" }",
        "",
    );
    assert!(super::warnings(&tls).is_empty());
}

/// An endpoint that already ends in `/v1/traces` (the full URL another exporter takes) draws a
/// warning at `endpoint`: rampart appends the path, so spans would go to
/// `/v1/traces/v1/traces`. Where they go is unchanged; a gRPC endpoint, which has no path, is
/// refused as before.
#[test]
fn an_endpoint_ending_in_the_traces_path_draws_a_warning() {
    for endpoint in ["http://h:4318/v1/traces", "http://h:4318/base/v1/traces/"] {
        let text = traced(&format!("{{ endpoint: \"{endpoint}\" }}"), "");
        let cfg = Config::from_str(&text, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
        let w: Vec<_> = cfg.warnings.iter().map(|w| (spot(w), &w.message)).collect();
        assert_eq!(w.len(), 1, "{endpoint}: {w:#?}");
        assert_eq!(w[0].0 .2, "tracing.otlp.endpoint", "{w:#?}");
        assert_eq!((w[0].0 .0, w[0].0 .1), (15, 11), "{w:#?}");
        assert!(w[0].1.contains("/v1/traces/v1/traces"), "{w:#?}");
        assert!(w[0].1.contains("appends /v1/traces"), "{w:#?}");
    }
    for endpoint in [
        "http://h:4318",
        "http://h:4318/base/",
        "http://h:4318/v1/traces-x",
    ] {
        let text = traced(&format!("{{ endpoint: \"{endpoint}\" }}"), "");
        let cfg = Config::from_str(&text, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
        assert!(cfg.warnings.is_empty(), "{endpoint}: {:#?}", cfg.warnings);
    }
}
