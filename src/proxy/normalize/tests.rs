use super::*;

/// The normal form of `p` (runs of `/` merged), `p` itself when it is in it already.
fn norm(p: &str) -> Result<String, Unfit> {
    Ok(path(p, true)?.unwrap_or_else(|| p.to_owned()))
}

/// The normal form of `p` without merging runs of `/`.
fn unmerged(p: &str) -> Result<String, Unfit> {
    Ok(path(p, false)?.unwrap_or_else(|| p.to_owned()))
}

#[test]
fn paths_in_the_form_are_left_alone() {
    for p in [
        "/",
        "/orders",
        "/a/b/c/",
        "/.well-known/x",
        "/a/..b/b..",
        "/a/.../b",
        "/a%2Fb",
        "/a%5Cb",
        "/caf%C3%A9",
        "/a;x=1/b",
        "/%25",
        "*",
        "",
    ] {
        assert_eq!(path(p, true), Ok(None), "{p}");
        assert_eq!(path(p, false), Ok(None), "{p}");
    }
}

#[test]
fn the_bypass_forms_take_their_normal_form() {
    for (sent, normal) in [
        ("/healthz/../orders", "/orders"),
        ("/healthz/%2e%2e/orders", "/orders"),
        ("/healthz/%2E%2E/orders", "/orders"),
        ("/healthz/.%2e/orders", "/orders"),
        ("/x/../admin/x", "/admin/x"),
        ("//admin/x", "/admin/x"),
        ("/%61dmin/x", "/admin/x"),
        ("/./admin/x", "/admin/x"),
        ("/admin//x///", "/admin/x/"),
        ("/a//../b", "/b"),
        ("/%7euser/%2d%5f%30", "/~user/-_0"),
    ] {
        assert_eq!(norm(sent).as_deref(), Ok(normal), "{sent}");
    }
}

#[test]
fn reserved_escapes_stay_escaped_with_upper_case_hex() {
    for (sent, normal) in [
        ("/a%2fb", "/a%2Fb"),
        ("/a%2F..%2Fb", "/a%2F..%2Fb"),
        ("/a/%2F../b", "/a/%2F../b"),
        ("/a%5cb", "/a%5Cb"),
        ("/%3f%23", "/%3F%23"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/%25%32%65", "/%252e"),
    ] {
        assert_eq!(norm(sent).as_deref(), Ok(normal), "{sent}");
    }
}

/// RFC 3986 §5.4's examples, resolved against `http://a/b/c/d;p?q`: the base's directory
/// (`/b/c/`) joined to each reference is the path a client that did not resolve it would send.
#[test]
fn rfc_3986_dot_segment_examples() {
    for (reference, normal) in [
        ("g", "/b/c/g"),
        ("./g", "/b/c/g"),
        ("g/", "/b/c/g/"),
        (".", "/b/c/"),
        ("./", "/b/c/"),
        ("..", "/b/"),
        ("../", "/b/"),
        ("../g", "/b/g"),
        ("../..", "/"),
        ("../../", "/"),
        ("../../g", "/g"),
        ("g.", "/b/c/g."),
        (".g", "/b/c/.g"),
        ("g..", "/b/c/g.."),
        ("..g", "/b/c/..g"),
        ("./../g", "/b/g"),
        ("./g/.", "/b/c/g/"),
        ("g/./h", "/b/c/g/h"),
        ("g/../h", "/b/c/h"),
        ("g;x=1/./y", "/b/c/g;x=1/y"),
        ("g;x=1/../y", "/b/c/y"),
    ] {
        let sent = format!("/b/c/{reference}");
        assert_eq!(norm(&sent).as_deref(), Ok(normal), "{sent}");
    }
    // §5.2.4's own examples.
    assert_eq!(norm("/a/b/c/./../../g").as_deref(), Ok("/a/g"));
    assert_eq!(norm("/mid/content=5/../6").as_deref(), Ok("/mid/6"));
    // The "abnormal" ones RFC 3986 clamps at the root are refused here.
    for sent in [
        "/b/c/../../../g",
        "/b/c/../../../../g",
        "/../g",
        "/..",
        "/%2e%2e/x",
    ] {
        assert_eq!(norm(sent), Err(Unfit::AboveRoot), "{sent}");
    }
}

#[test]
fn an_escape_cut_short_is_refused() {
    for sent in ["/100%", "/a%2", "/a%zz", "/%%32%65", "/%g0/..", "/x/%2"] {
        assert_eq!(norm(sent), Err(Unfit::BadEscape), "{sent}");
    }
}

#[test]
fn the_form_is_kept_by_normalising_again() {
    for sent in [
        "/a/./b/../../c//d/%2e/%7E%2f",
        "/x/..",
        "/a/b/..",
        "/%41%2e%2E/q",
    ] {
        let once = norm(sent).expect("a normal form");
        assert_eq!(path(&once, true), Ok(None), "{sent} -> {once}");
        let once = unmerged(sent).expect("a normal form");
        assert_eq!(path(&once, false), Ok(None), "{sent} -> {once} unmerged");
    }
}

#[test]
fn the_query_scheme_and_authority_are_kept() {
    let mut req = Request::builder()
        .uri("http://svc:81/healthz/%2e%2e/orders?a=/../b&c=%2e")
        .body(())
        .expect("req");
    request(&mut req, true).expect("normalised");
    assert_eq!(req.uri(), "http://svc:81/orders?a=/../b&c=%2e");
    let mut req = Request::builder().uri("/a//b?").body(()).expect("req");
    request(&mut req, true).expect("normalised");
    assert_eq!(
        req.uri().path_and_query().map(|p| p.as_str()),
        Some("/a/b?")
    );
    let mut req = Request::builder().uri("*").body(()).expect("req");
    request(&mut req, true).expect("no path");
    assert_eq!(req.uri(), "*");
    let mut req = Request::builder().uri("/../x?q").body(()).expect("req");
    assert_eq!(request(&mut req, true), Err(Unfit::AboveRoot));
}

#[test]
fn prefixes_that_no_normal_path_starts_with() {
    for p in [
        "/", "/api", "/api/", "/api/.", "/api/..", "/a%2F", "/a%", "/a%4", "/.well",
    ] {
        assert!(prefix_can_match(p, true), "{p}");
    }
    for p in [
        "//api", "/a/./b", "/a/../b", "/%61pi", "/a%2f", "/a%e", "/a/.//", "/../x",
    ] {
        assert!(!prefix_can_match(p, true), "{p}");
    }
}

#[test]
fn without_merging_an_empty_segment_is_a_segment() {
    for (sent, normal) in [
        ("/a//../b", "/a/b"),
        ("//x", "//x"),
        ("/a/./b", "/a/b"),
        ("/bucket/a//b", "/bucket/a//b"),
        ("/proxy/http://example.com/a", "/proxy/http://example.com/a"),
        ("/a//", "/a//"),
        ("/a//.", "/a//"),
        ("/a//..", "/a/"),
        ("/a/.//b", "/a//b"),
        ("/.//x", "//x"),
        ("//..", "/"),
        ("/x/%2e%2e//%61", "//a"),
        ("/a/b/..", "/a/"),
        ("/%7e//k", "/~//k"),
    ] {
        assert_eq!(unmerged(sent).as_deref(), Ok(normal), "{sent}");
    }
    for sent in ["/../x", "/..", "/a/../../x", "/%2e%2e//x"] {
        assert_eq!(unmerged(sent), Err(Unfit::AboveRoot), "{sent}");
    }
    assert_eq!(unmerged("//a%2"), Err(Unfit::BadEscape));
    // A path with `//` and nothing else to change is in the form: not rebuilt.
    assert_eq!(path("/bucket/a//b", false), Ok(None));
    let mut req = Request::builder()
        .uri("http://s3:80/bucket/a//./b?x-id=1")
        .body(())
        .expect("req");
    request(&mut req, false).expect("normalised");
    assert_eq!(req.uri(), "http://s3:80/bucket/a//b?x-id=1");
    assert!(prefix_can_match("/a//b", false));
    assert!(prefix_can_match("//", false));
    assert!(!prefix_can_match("/a//b", true));
    assert!(!prefix_can_match("/a//./b", false));
}

/// RFC 9112 §3.2.1: an empty path is sent as `/`; before a query it was sent empty (`GET ?a=b`)
/// while routed and logged as `/`.
#[test]
fn an_empty_path_before_a_query_is_the_root() {
    for merge in [true, false] {
        let mut req = Request::builder()
            .uri("http://x?a=b")
            .body(())
            .expect("req");
        request(&mut req, merge).expect("normalised");
        assert_eq!(
            req.uri().path_and_query().map(|p| p.as_str()),
            Some("/?a=b"),
            "merge {merge}"
        );
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = Some(PathAndQuery::from_static("?a=b"));
        let mut req = Request::new(());
        *req.uri_mut() = Uri::from_parts(parts).expect("uri");
        request(&mut req, merge).expect("normalised");
        assert_eq!(req.uri(), "/?a=b", "merge {merge}");
        // No query: the path is empty, and goes as `/` already.
        let mut req = Request::builder().uri("http://x").body(()).expect("req");
        request(&mut req, merge).expect("left alone");
        assert_eq!(req.uri(), "http://x/");
    }
}

/// A byte a path may not hold raw (outside `pchar` and `/`) is escaped, with upper-case hex, so
/// the raw spelling and the escaped one meet in one form: `/café` (an HTTP/2 `:path` of raw
/// UTF-8) takes the route of `/caf%C3%A9`.
#[test]
fn bytes_outside_pchar_are_escaped() {
    for (sent, normal) in [
        ("/café", "/caf%C3%A9"),
        ("/caf%c3%a9", "/caf%C3%A9"),
        ("/a\"b", "/a%22b"),
        ("/{x}|y^z`", "/%7Bx%7D%7Cy%5Ez%60"),
        ("/<a>", "/%3Ca%3E"),
        ("/a\\b", "/a%5Cb"),
        ("/[v]", "/%5Bv%5D"),
        ("/é/../x", "/x"),
        ("//é", "/%C3%A9"),
        ("/%7e/é", "/~/%C3%A9"),
    ] {
        assert_eq!(norm(sent).as_deref(), Ok(normal), "{sent}");
        assert_eq!(path(normal, true), Ok(None), "{normal} is in the form");
    }
    // Every sub-delim, `:` and `@` stays as it is.
    assert_eq!(path("/a!$&'()*+,;=:@b", true), Ok(None));
    // The query is not touched.
    let mut req = Request::builder()
        .uri("/caf\u{e9}?q=\u{e9}|%e9")
        .body(())
        .expect("req");
    request(&mut req, true).expect("normalised");
    assert_eq!(
        req.uri().path_and_query().map(|p| p.as_str()),
        Some("/caf%C3%A9?q=\u{e9}|%e9")
    );
    // A path that escaping makes longer than a target may be.
    let long = format!("/{}", "é".repeat(12_000));
    let mut req = Request::builder().uri(long.as_str()).body(()).expect("req");
    assert_eq!(request(&mut req, true), Err(Unfit::TooLong));
}
