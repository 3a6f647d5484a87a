use super::*;

/// Parses a head off `buf` with its map made whole, as the request path sees it once it reads
/// the answer's headers (`body::whole_headers`); `interim`: the interim answers skipped by
/// earlier calls for the same answer.
fn parse_whole(
    buf: &mut BytesMut,
    head_request: bool,
    interim: &mut u8,
    names: &mut Names,
) -> Result<Option<Head>, Malformed> {
    let mut raw = RawLines::default();
    let mut h = parse_head(buf, head_request, interim, names, &mut raw)?;
    if let Some(h) = h.as_mut() {
        raw.fill(h.response.headers_mut());
    }
    Ok(h)
}

/// Parses `bytes` fed whole; the head and what is left after it.
fn head(bytes: &[u8], head_request: bool) -> Result<Option<(Head, Vec<u8>)>, Malformed> {
    let mut buf = BytesMut::from(bytes);
    let h = parse_whole(&mut buf, head_request, &mut 0, &mut Names::default())?;
    Ok(h.map(|h| (h, buf.to_vec())))
}

fn whole(bytes: &[u8]) -> Head {
    match head(bytes, false) {
        Ok(Some((h, _))) => h,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
    }
}

fn malformed(bytes: &[u8]) -> Malformed {
    match head(bytes, false) {
        Err(e) => e,
        other => panic!(
            "{:?} must be refused: {other:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

/// A whole answer (head and body) read the way the connection reads it: a head, then the
/// body's pieces, from a buffer that receives `step` bytes at a time.
fn read_answer(
    bytes: &[u8],
    step: usize,
    head_request: bool,
) -> Result<(Head, Vec<u8>, Vec<u8>), Malformed> {
    let mut buf = BytesMut::new();
    let mut input = bytes.chunks(step.max(1));
    let mut interim = 0;
    let h = loop {
        if let Some(h) = parse_whole(&mut buf, head_request, &mut interim, &mut Names::default())? {
            break h;
        }
        match input.next() {
            Some(c) => buf.extend_from_slice(c),
            None => return Err(Malformed("test: input ended inside the head")),
        }
    };
    let mut body = Vec::new();
    match h.framing {
        Framing::Empty => {}
        Framing::Length(mut left) => {
            while left > 0 {
                if buf.is_empty() {
                    match input.next() {
                        Some(c) => buf.extend_from_slice(c),
                        None => return Err(Malformed("test: input ended inside the body")),
                    }
                }
                let n = (buf.len() as u64).min(left) as usize;
                body.extend_from_slice(&buf.split_to(n));
                left -= n as u64;
            }
        }
        Framing::Chunked => {
            let mut c = Chunked::new();
            loop {
                match c.decode(&mut buf)? {
                    Chunk::Data(d) => body.extend_from_slice(&d),
                    Chunk::Trailers(_) => {}
                    Chunk::End => break,
                    Chunk::More => match input.next() {
                        Some(more) => buf.extend_from_slice(more),
                        None => return Err(Malformed("test: input ended inside the body")),
                    },
                }
            }
        }
        Framing::Close => {
            body.extend_from_slice(&buf.split());
            for c in input.by_ref() {
                body.extend_from_slice(c);
            }
        }
    }
    let mut rest = buf.to_vec();
    for c in input {
        rest.extend_from_slice(c);
    }
    Ok((h, body, rest))
}

/// Every split of `bytes` (one byte at a time, and a few other steps) reads the same answer.
fn every_split(bytes: &[u8]) -> (Head, Vec<u8>, Vec<u8>) {
    let whole = read_answer(bytes, bytes.len(), false).expect("reads whole");
    for step in [1, 2, 3, 5, 7, 64] {
        let (h, body, rest) = read_answer(bytes, step, false).expect("reads in pieces");
        assert_eq!(
            h.response.status(),
            whole.0.response.status(),
            "step {step}"
        );
        assert_eq!(
            h.response.headers(),
            whole.0.response.headers(),
            "step {step}"
        );
        assert_eq!(
            (h.framing, h.keep_alive),
            (whole.0.framing, whole.0.keep_alive)
        );
        assert_eq!(body, whole.1, "step {step}");
        assert_eq!(rest, whole.2, "step {step}");
    }
    whole
}

#[test]
fn a_content_length_answer_at_every_split() {
    let (h, body, rest) =
        every_split(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello");
    assert_eq!(h.response.status(), 200);
    assert_eq!(h.response.version(), Version::HTTP_11);
    assert_eq!(h.framing, Framing::Length(5));
    assert!(h.keep_alive);
    let xa: Vec<_> = h.response.headers().get_all("x-a").iter().collect();
    assert_eq!(xa, ["1", "2"], "repeated headers are kept in order");
    assert_eq!(body, b"hello");
    assert!(rest.is_empty());
}

#[test]
fn a_chunked_answer_with_extensions_and_trailers_at_every_split() {
    let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
        5;name=value;x=\"q\"\r\nhello\r\n1 ; ext\r\n \r\n6\r\nworld!\r\n\
        0;last\r\nx-trailer: t\r\nother: 2\r\n\r\n";
    let (h, body, rest) = every_split(answer);
    assert_eq!(h.framing, Framing::Chunked);
    assert!(h.keep_alive);
    assert_eq!(body, b"hello world!");
    assert!(rest.is_empty(), "nothing after the final empty line");
}

#[test]
fn a_chunked_answer_without_trailers_and_with_upper_case_sizes() {
    let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, Chunked\r\n\r\nA\r\n".to_vec();
    answer.extend_from_slice(&[b'x'; 10]);
    answer.extend_from_slice(b"\r\n0\r\n\r\n");
    let (h, body, _) = every_split(&answer);
    assert_eq!(h.framing, Framing::Chunked);
    assert_eq!(body, [b'x'; 10]);
}

#[test]
fn the_last_chunk_is_known_to_be_last_when_its_end_is_read() {
    let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\n"[..]);
    let mut c = Chunked::new();
    assert_eq!(
        c.decode(&mut buf),
        Ok(Chunk::Data(Bytes::from_static(b"abc")))
    );
    c.skip_framing(&mut buf).expect("well-formed");
    assert!(c.is_done());
    assert!(buf.is_empty());
    assert_eq!(c.decode(&mut buf), Ok(Chunk::End));
}

#[test]
fn broken_chunked_bodies_are_refused() {
    for bad in [
        &b"zz\r\n"[..],
        b"\r\n",
        b"5\nhello\r\n",
        b"5\r\nhelloX\r\n",
        b"5\r\nhello\rX",
        b"1 x\r\n",
        b"11111111111111111\r\n",
        b"0\r\nbad\ntrailer\r\n\r\n",
        b"2;a\x01b\r\n",
    ] {
        let mut buf = BytesMut::from(bad);
        let mut c = Chunked::new();
        let r = (0..8).try_for_each(|_| c.decode(&mut buf).map(|_| ()));
        assert!(
            r.is_err(),
            "{:?} must be refused",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn chunk_size_lines_and_trailers_are_bounded() {
    let mut line = b"1;".to_vec();
    line.extend(std::iter::repeat_n(b'x', MAX_CHUNK_LINE));
    let mut c = Chunked::new();
    assert!(c.decode(&mut BytesMut::from(&line[..])).is_err());
    let mut trailers = b"0\r\n".to_vec();
    for _ in 0..(MAX_HEAD / 10 + 1) {
        trailers.extend_from_slice(b"x-t: 1234\r\n");
    }
    let mut c = Chunked::new();
    let mut buf = BytesMut::from(&trailers[..]);
    assert!(c.decode(&mut buf).is_err(), "trailers beyond 64 KiB");
}

#[test]
fn a_close_delimited_answer_reads_everything() {
    let (h, body, _) = every_split(b"HTTP/1.1 200 OK\r\nserver: x\r\n\r\nall of it");
    assert_eq!(h.framing, Framing::Close);
    assert!(
        !h.keep_alive,
        "a close-delimited answer ends its connection"
    );
    assert_eq!(body, b"all of it");
}

/// A `transfer-encoding` whose last coding is not `chunked` is refused, not read until the
/// upstream closes (one that keeps its connection open never ends such a body), and so is one
/// that lists `chunked` twice. An answer without a body (to HEAD, 1xx, 204, 304) ends at its
/// head whatever it says, and its `transfer-encoding` is not passed on.
#[test]
fn a_transfer_encoding_not_ending_in_one_chunked_is_malformed() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\ncontent-length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: ,\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
    ] {
        let e = malformed(bad);
        assert_eq!(
            e.0,
            "transfer-encoding whose last coding is not chunked, or chunked twice"
        );
    }
    for good in [
        &b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n",
    ] {
        assert_eq!(whole(good).framing, Framing::Chunked);
    }
    // No body: the head is the whole answer, and the coding goes nowhere.
    for (bytes, head_request) in [
        (
            &b"HTTP/1.1 204 No Content\r\ntransfer-encoding: identity\r\n\r\n"[..],
            false,
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\netag: \"a\"\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: identity\r\n\r\n",
            true,
        ),
    ] {
        let (h, rest) = head(bytes, head_request)
            .expect("parses")
            .expect("complete");
        assert_eq!(h.framing, Framing::Empty);
        assert!(rest.is_empty());
        assert!(
            !h.response.headers().contains_key("transfer-encoding"),
            "{:?}",
            h.response.headers()
        );
    }
}

/// `content-length` lines that differ frame no body on a 304 or an answer to HEAD (RFC 9112
/// §6.3): the first value is kept, one line, and the connection is not used again; on an
/// answer with a body they stay malformed.
#[test]
fn differing_lengths_are_malformed_only_where_they_frame_a_body() {
    for (bytes, head_request) in [
        (
            &b"HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"[..],
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            true,
        ),
    ] {
        let (h, rest) = head(bytes, head_request)
            .expect("parses")
            .expect("complete");
        assert_eq!(h.framing, Framing::Empty);
        assert!(rest.is_empty());
        assert!(!h.keep_alive, "a connection that said two lengths goes");
        let lengths: Vec<_> = h
            .response
            .headers()
            .get_all("content-length")
            .iter()
            .collect();
        assert_eq!(lengths, ["5"], "{:?}", h.response.headers());
    }
    let e = malformed(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n");
    assert_eq!(e.0, "conflicting content-length values");
}

#[test]
fn interim_answers_are_skipped() {
    let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n\
        HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n\
        HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok";
    let (h, body, _) = every_split(answer);
    assert_eq!(h.response.status(), 201);
    assert!(
        h.response.headers().get("link").is_none(),
        "only the final head's headers"
    );
    assert_eq!(body, b"ok");
}

/// More than [`MAX_INTERIM`] interim answers are refused, whether they come in one read or
/// in many (each read's call counts on from the last one's); as many as that are skipped.
#[test]
fn too_many_interim_answers_are_refused() {
    let answer = |interim: u8| {
        let mut answer = Vec::new();
        for _ in 0..interim {
            answer.extend_from_slice(b"HTTP/1.1 102 Processing\r\n\r\n");
        }
        answer.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        answer
    };
    let too_many = answer(MAX_INTERIM + 1);
    let mut step = 1;
    while step <= too_many.len() {
        let e = read_answer(&too_many, step, false).expect_err("refused");
        assert!(e.0.contains("interim"), "step {step}: {e}");
        step = step * 2 + 1;
    }
    assert!(head(&too_many, false).is_err());
    let (h, _, _) = every_split(&answer(MAX_INTERIM));
    assert_eq!(h.response.status(), 200);
}

#[test]
fn switching_protocols_is_refused() {
    let e = malformed(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n");
    assert!(e.0.contains("101"), "{e}");
}

/// A request that asked to switch (`connection: upgrade`) takes a 101 as its final answer:
/// no body, never reused, its headers in the map, and the bytes after its head (the new
/// protocol's) left in the buffer; an interim 100 before it is skipped as usual.
#[test]
fn switching_protocols_answers_a_request_that_asked_to_upgrade() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
           Connection: Upgrade\r\nSec-WebSocket-Accept: abc\r\n\r\n\x81\x05hello"[..],
    );
    let mut raw = RawLines::default();
    // Asked to upgrade: the answer as the request path reads it.
    let mut answer = |buf: &mut BytesMut| {
        parse_answer(buf, false, true, &mut 0, &mut Names::default(), &mut raw)
            .expect("well formed")
            .expect("whole")
    };
    let h = answer(&mut buf);
    assert_eq!(h.response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(h.framing, Framing::Empty);
    assert!(!h.keep_alive, "the connection is the new protocol's");
    let map = h.response.headers();
    assert_eq!(map[header::UPGRADE], "websocket");
    assert_eq!(map["sec-websocket-accept"], "abc");
    assert_eq!(&buf[..], b"\x81\x05hello");
    // Asked or not, any other status is a normal answer.
    let mut buf =
        BytesMut::from(&b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n"[..]);
    let h = answer(&mut buf);
    assert_eq!(h.response.status(), StatusCode::UPGRADE_REQUIRED);
    assert!(h.keep_alive);
}

/// A request head with `connection: upgrade` says it asked to switch; one without does not.
#[test]
fn a_request_head_with_connection_upgrade_asks_to_switch() {
    let (_, w) = request(
        Method::GET,
        "/chat",
        &[("upgrade", "websocket"), ("connection", "Upgrade")],
        BodyKind::Empty,
    );
    assert!(w.upgrade && !w.close, "{w:?}");
    let (_, w) = request(
        Method::GET,
        "/",
        &[("upgrade", "websocket")],
        BodyKind::Empty,
    );
    assert!(!w.upgrade, "{w:?}");
}

#[test]
fn bodyless_answers_have_no_body_whatever_they_say() {
    for (answer, head_request) in [
        (
            &b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"[..],
            false,
        ),
        (
            b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
        ),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n", true),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false),
    ] {
        let (h, rest) = head(answer, head_request)
            .expect("parses")
            .expect("complete");
        assert_eq!(
            h.framing,
            Framing::Empty,
            "{:?}",
            String::from_utf8_lossy(answer)
        );
        assert!(h.keep_alive);
        assert!(rest.is_empty());
        // A 204 says no length (an HTTP/2 client resets a stream that has one); a HEAD's
        // answer keeps the length of what a GET would get.
        let length = h.response.headers().get("content-length");
        let want = (head_request || answer.starts_with(b"HTTP/1.1 200")).then_some(());
        assert_eq!(
            length.map(drop),
            want,
            "{:?}",
            String::from_utf8_lossy(answer)
        );
    }
    let (h, _) = head(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n", true)
        .expect("parses")
        .expect("complete");
    assert_eq!(
        h.response.headers()["content-length"],
        "1000",
        "a HEAD answer keeps its length"
    );
}

#[test]
fn keep_alive_follows_version_and_connection() {
    let cases: [(&[u8], bool); 6] = [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", true),
        (
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: Upgrade, Close\r\ncontent-length: 0\r\n\r\n",
            false,
        ),
        (b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false),
        (
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
            false,
        ),
    ];
    for (answer, keep) in cases {
        assert_eq!(
            whole(answer).keep_alive,
            keep,
            "{:?}",
            String::from_utf8_lossy(answer)
        );
    }
    assert_eq!(
        whole(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n")
            .response
            .version(),
        Version::HTTP_10
    );
}

#[test]
fn a_connection_header_naming_no_other_header_is_read_but_not_kept() {
    let head = whole(
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nConnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n",
    );
    assert!(head.keep_alive);
    assert!(head.response.headers().get("connection").is_none());
    assert_eq!(head.response.headers()["server"], "nginx");
    let head = whole(b"HTTP/1.1 200 OK\r\nconnection: close, \r\ncontent-length: 0\r\n\r\n");
    assert!(!head.keep_alive);
    assert!(head.response.headers().get("connection").is_none());
    // One that names another header is kept, so the way through removes that header too.
    let head = whole(
        b"HTTP/1.1 200 OK\r\nconnection: keep-alive, x-hop\r\nx-hop: 1\r\ncontent-length: 0\r\n\r\n",
    );
    assert!(head.keep_alive);
    assert_eq!(head.response.headers()["connection"], "keep-alive, x-hop");
}

#[test]
fn a_connection_value_is_read_in_one_pass() {
    let read = ConnectionTokens::read;
    let t = |close, keep_alive, others| ConnectionTokens {
        close,
        keep_alive,
        others,
        upgrade: false,
    };
    assert_eq!(read(b"keep-alive"), t(false, true, false));
    assert_eq!(read(b"Keep-Alive"), t(false, true, false));
    assert_eq!(read(b" Close ,, "), t(true, false, false));
    assert_eq!(read(b"Keep-Alive, close"), t(true, true, false));
    assert_eq!(read(b"keep-alive, x-hop"), t(false, true, true));
    let upgrade = ConnectionTokens {
        upgrade: true,
        ..t(false, false, true)
    };
    assert_eq!(read(b"upgrade"), upgrade);
    assert_eq!(
        read(b"Keep-Alive, Upgrade"),
        ConnectionTokens {
            keep_alive: true,
            ..upgrade
        }
    );
    assert_eq!(read(b"upgrades"), t(false, false, true));
    // Near misses are other tokens, never `close` or `keep-alive`.
    assert_eq!(read(b"closed, keep-alives"), t(false, false, true));
    assert_eq!(read(b""), t(false, false, false));
}

#[test]
fn content_length_values_must_agree() {
    assert_eq!(
        whole(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\n").framing,
        Framing::Length(3)
    );
    assert_eq!(
        whole(b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n").framing,
        Framing::Length(3)
    );
    // Passed on as one line of the value, to any client (plain: the lines stay raw).
    for repeated in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-a: 1\r\ncontent-length: 3\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\nx-a: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 3 ,003\r\nx-a: 1\r\n\r\n",
    ] {
        let mut raw = RawLines::default();
        let mut buf = BytesMut::from(repeated);
        let h = parse_head(&mut buf, false, &mut 0, &mut Names::default(), &mut raw)
            .expect("parses")
            .expect("complete");
        assert_eq!(h.framing, Framing::Length(3));
        assert!(h.response.headers().is_empty(), "plain: the lines stay raw");
        let mut written = Vec::new();
        raw.write(&mut written);
        assert_eq!(written, b"content-length: 3\r\nx-a: 1\r\n");
        let map = whole(repeated).response.headers().clone();
        let lengths: Vec<_> = map.get_all("content-length").iter().collect();
        assert_eq!(lengths, ["3"], "{}", String::from_utf8_lossy(repeated));
    }
    malformed(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n");
    malformed(b"HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n");
    malformed(b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n");
    malformed(b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\n");
    malformed(b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n");
    malformed(b"HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n");
}

#[test]
fn malformed_heads_are_refused() {
    for bad in [
        &b"garbage\r\n\r\n"[..],
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nname : spaced\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx: a\x01b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx: 1\r\n folded\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        malformed(bad);
    }
}

#[test]
fn an_incomplete_head_asks_for_more_until_its_limit() {
    assert!(head(b"HTTP/1.1 200 OK\r\ncontent-le", false)
        .expect("fine so far")
        .is_none());
    assert!(head(b"", false).expect("fine so far").is_none());
    let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
    while big.len() <= MAX_HEAD {
        big.extend_from_slice(b"x-filler: ");
        big.extend_from_slice(&[b'v'; 1000]);
        big.extend_from_slice(b"\r\n");
    }
    let e = malformed(&big);
    assert!(e.0.contains("64 KiB"), "{e}");
    big.extend_from_slice(b"\r\n");
    malformed(&big);
    // Lines as short as they come: the head is refused for its length, not its count.
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    while many.len() <= MAX_HEAD {
        many.extend_from_slice(b"a:\n");
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(malformed(&many).0, "answer head larger than 64 KiB");
    assert_eq!(
        malformed(&many[..MAX_HEAD + 1]).0,
        "answer head larger than 64 KiB"
    );
}

/// A head of more lines than the stack's slots (`MAX_HEADERS`) is read whole, in pieces or
/// not, its lines in order; up to the most that fit `MAX_HEAD` (its shortest lines).
#[test]
fn an_answer_of_more_header_lines_than_the_stack_holds_is_read_whole() {
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=2 * MAX_HEADERS {
        many.extend_from_slice(format!("x-{i}: v{i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"content-length: 2\r\n\r\nok");
    let (h, body, rest) = every_split(&many);
    let seen: Vec<(String, String)> = h
        .response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    assert_eq!(seen.len(), 2 * MAX_HEADERS + 2);
    for (i, (n, v)) in seen.iter().take(2 * MAX_HEADERS + 1).enumerate() {
        assert_eq!(
            (n.as_str(), v.as_str()),
            (&*format!("x-{i}"), &*format!("v{i}"))
        );
    }
    assert_eq!(
        (h.framing, &body[..], &rest[..]),
        (Framing::Length(2), &b"ok"[..], &b""[..])
    );

    // As many of the shortest lines as fit the limit.
    let mut most = b"HTTP/1.1 204 No Content\r\n".to_vec();
    while most.len() + 5 <= MAX_HEAD {
        most.extend_from_slice(b"a:\r\n");
    }
    most.extend_from_slice(b"\r\n");
    let h = whole(&most);
    assert_eq!(h.response.headers().len(), (most.len() - 27) / 4);
    // An interim answer of many lines is skipped as one of few is.
    let mut interim = b"HTTP/1.1 103 Early Hints\r\n".to_vec();
    for i in 0..150 {
        interim.extend_from_slice(format!("link: </{i}>\r\n").as_bytes());
    }
    interim.extend_from_slice(b"\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
    let h = whole(&interim);
    assert_eq!(h.response.status(), 200);
    assert!(h.response.headers().get("link").is_none());
}

/// Trailers of more lines than the stack's slots are all passed on.
#[test]
fn trailers_of_many_lines_are_passed_on() {
    let mut body = b"2\r\nok\r\n0\r\n".to_vec();
    for i in 0..150 {
        body.extend_from_slice(format!("x-t{i}: {i}\r\n").as_bytes());
    }
    body.extend_from_slice(b"\r\n");
    let mut buf = BytesMut::from(&body[..]);
    let mut c = Chunked::new();
    assert_eq!(
        c.decode(&mut buf),
        Ok(Chunk::Data(Bytes::from_static(b"ok")))
    );
    c.skip_framing(&mut buf).expect("well-formed");
    let Ok(Chunk::Trailers(map)) = c.decode(&mut buf) else {
        panic!("trailers expected");
    };
    assert_eq!(map.len(), 150, "{map:?}");
    assert_eq!(map["x-t149"], "149");
}

#[test]
fn bytes_after_the_head_stay_in_the_buffer() {
    let (h, rest) = head(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP", false)
        .expect("parses")
        .expect("complete");
    assert_eq!(h.framing, Framing::Length(2));
    assert_eq!(rest, b"okHTTP");
}

fn request(
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: BodyKind,
) -> (String, Written) {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    let uri: http::Uri = uri.parse().expect("uri");
    let mut dst = Vec::new();
    let w = encode_head(&mut dst, &method, &uri, &map, None, body);
    (String::from_utf8(dst).expect("ascii"), w)
}

#[test]
fn request_heads_are_origin_form_with_headers_in_order() {
    let (text, w) = request(
        Method::GET,
        "/a/b?c=1&d",
        &[
            ("host", "svc:8080"),
            ("x-b", "1"),
            ("x-a", "2"),
            ("x-b", "3"),
        ],
        BodyKind::Empty,
    );
    assert_eq!(
        text,
        "GET /a/b?c=1&d HTTP/1.1\r\nhost: svc:8080\r\nx-b: 1\r\nx-b: 3\r\nx-a: 2\r\n\r\n"
    );
    assert_eq!(
        w,
        Written {
            body: Out::None,
            close: false,
            upgrade: false
        }
    );
    let (text, _) = request(Method::OPTIONS, "*", &[], BodyKind::Empty);
    assert!(text.starts_with("OPTIONS * HTTP/1.1\r\n"), "{text}");
    let (text, _) = request(Method::GET, "http://h/", &[], BodyKind::Empty);
    assert!(text.starts_with("GET / HTTP/1.1\r\n"), "{text}");
}

/// Several `cookie` fields go out as one line, joined with "; " where the first was
/// (RFC 9113 §8.2.3); one goes as it is.
#[test]
fn cookies_go_out_on_one_line() {
    let (text, _) = request(
        Method::GET,
        "/",
        &[
            ("cookie", "a=1"),
            ("x-a", "1"),
            ("cookie", "b=2"),
            ("cookie", "c=3"),
            ("x-b", "2"),
        ],
        BodyKind::Empty,
    );
    assert_eq!(
        text,
        "GET / HTTP/1.1\r\ncookie: a=1; b=2; c=3\r\nx-a: 1\r\nx-b: 2\r\n\r\n"
    );
    let (text, _) = request(Method::GET, "/", &[("cookie", "a=1")], BodyKind::Empty);
    assert_eq!(text, "GET / HTTP/1.1\r\ncookie: a=1\r\n\r\n");
}

/// A body that may end in trailers goes chunked, its `content-length` left out (never both)
/// and kept as what the body is held to.
#[test]
fn a_body_that_may_end_in_trailers_goes_chunked_whatever_its_length() {
    let (text, w) = request(
        Method::POST,
        "/",
        &[("content-length", "7"), ("trailer", "x-sum")],
        BodyKind::Trailed,
    );
    assert_eq!(
        text,
        "POST / HTTP/1.1\r\ntrailer: x-sum\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert_eq!(w.body, Out::ChunkedExact(7));
    let (text, w) = request(Method::POST, "/", &[], BodyKind::Trailed);
    assert_eq!(
        text,
        "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert_eq!(w.body, Out::Chunked);
}

#[test]
fn request_body_framing_follows_the_body() {
    let (text, w) = request(Method::POST, "/", &[], BodyKind::Exact(1048576));
    assert!(text.ends_with("content-length: 1048576\r\n\r\n"), "{text}");
    assert_eq!(w.body, Out::Length(1048576));
    let (text, w) = request(Method::POST, "/", &[], BodyKind::Unknown);
    assert!(
        text.ends_with("transfer-encoding: chunked\r\n\r\n"),
        "{text}"
    );
    assert_eq!(w.body, Out::Chunked);
    let (text, w) = request(
        Method::POST,
        "/",
        &[("content-length", "0")],
        BodyKind::Empty,
    );
    assert_eq!(
        text, "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
        "the client's own length is kept"
    );
    assert_eq!(w.body, Out::None);
    let (text, w) = request(
        Method::PUT,
        "/",
        &[("content-length", "7")],
        BodyKind::Exact(7),
    );
    assert_eq!(text, "PUT / HTTP/1.1\r\ncontent-length: 7\r\n\r\n");
    assert_eq!(w.body, Out::Length(7));
    let (text, w) = request(Method::GET, "/", &[], BodyKind::Exact(0));
    assert_eq!(text, "GET / HTTP/1.1\r\n\r\n");
    assert_eq!(w.body, Out::Length(0));
    let (text, w) = request(
        Method::POST,
        "/",
        &[("content-length", "9"), ("transfer-encoding", "gzip")],
        BodyKind::Unknown,
    );
    assert_eq!(
        text,
        "POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
    );
    assert_eq!(w.body, Out::Chunked);
    let (text, _) = request(
        Method::GET,
        "/",
        &[("transfer-encoding", "chunked")],
        BodyKind::Empty,
    );
    assert_eq!(text, "GET / HTTP/1.1\r\n\r\n", "no body, no framing");
    let (_, w) = request(
        Method::GET,
        "/",
        &[("connection", "close")],
        BodyKind::Empty,
    );
    assert!(w.close);
}

#[test]
fn chunk_lines_are_lower_case_hex() {
    for (n, line) in [
        (0, "0\r\n"),
        (10, "a\r\n"),
        (255, "ff\r\n"),
        (65536, "10000\r\n"),
    ] {
        let mut dst = Vec::new();
        chunk_line(&mut dst, n);
        assert_eq!(dst, line.as_bytes());
    }
}

#[test]
fn trailers_are_passed_on_as_headers_without_framing_fields() {
    let mut buf = BytesMut::from(
        &b"2\r\nok\r\n0\r\nx-checksum: abc\r\nContent-Length: 5\r\nx-two: 2\r\nSet-Cookie: a=b\r\n\r\n"[..],
    );
    let mut c = Chunked::new();
    assert_eq!(
        c.decode(&mut buf),
        Ok(Chunk::Data(Bytes::from_static(b"ok")))
    );
    c.skip_framing(&mut buf).expect("well-formed");
    assert!(!c.is_done(), "the trailers are still to be handed on");
    let Ok(Chunk::Trailers(map)) = c.decode(&mut buf) else {
        panic!("trailers expected");
    };
    assert_eq!(map.len(), 2, "{map:?}");
    assert_eq!(map["x-checksum"], "abc");
    assert_eq!(map["x-two"], "2");
    assert!(c.is_done());
    assert_eq!(c.decode(&mut buf), Ok(Chunk::End));
    // A body without trailers ends without a trailers step.
    let mut buf = BytesMut::from(&b"0\r\n\r\n"[..]);
    let mut c = Chunked::new();
    assert_eq!(c.decode(&mut buf), Ok(Chunk::End));
}

#[test]
fn names_kept_from_the_last_answer_are_reused_only_where_they_match() {
    let mut names = Names::default();
    let mut parse = |bytes: &[u8]| {
        let mut buf = BytesMut::from(bytes);
        let h = parse_whole(&mut buf, false, &mut 0, &mut names)
            .unwrap()
            .unwrap();
        let seen: Vec<(String, Vec<u8>)> = h
            .response
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        (seen, h.framing)
    };
    let first = parse(b"HTTP/1.1 200 OK\r\nX-Sample: a\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(first.0[0], ("x-sample".into(), b"a".to_vec()));
    assert_eq!(first.1, Framing::Empty);
    // The same names in other cases, then another name at a kept place: each read as sent.
    let second = parse(b"HTTP/1.1 200 OK\r\nx-SAMPLE: b\r\ncontent-length: 2\r\n\r\nhi");
    assert_eq!(second.0[0], ("x-sample".into(), b"b".to_vec()));
    assert_eq!(second.1, Framing::Length(2));
    let third = parse(
        b"HTTP/1.1 200 OK\r\nx-other: c\r\nx-sample: d\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(
        third.0,
        [
            ("x-other".into(), b"c".to_vec()),
            ("x-sample".into(), b"d".to_vec()),
            ("transfer-encoding".into(), b"chunked".to_vec()),
        ]
    );
    assert_eq!(third.1, Framing::Chunked);
    // A name one byte off a kept one (at the same place) is not taken for it, nor is a name
    // that differs in case only: read from its bytes, it is the same name.
    let again = parse(
        b"HTTP/1.1 200 OK\r\nX-Other: c\r\nx-sample: d\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    assert_eq!(again.0, third.0);
    let fourth =
        parse(b"HTTP/1.1 200 OK\r\nx-other2: e\r\nx-samplf: f\r\ncontent-length: 0\r\n\r\n");
    assert_eq!(fourth.0[0].0, "x-other2");
    assert_eq!(fourth.0[1].0, "x-samplf");
}

#[test]
fn content_length_values_are_digits_or_a_list_of_equal_ones() {
    for (raw, want) in [
        ("0", Some(0)),
        ("42", Some(42)),
        ("007", Some(7)),
        ("1234567890123456789", Some(1_234_567_890_123_456_789)),
        ("5, 5", Some(5)),
        ("5,5,5", Some(5)),
        (" 5 ", Some(5)),
        ("5\t,\t5", Some(5)),
        // Twenty digits could overflow: refused, as is anything but digits.
        ("12345678901234567890", None),
        ("", None),
        (",", None),
        ("5,", None),
        ("5,6", None),
        ("+5", None),
        ("-1", None),
        ("1a", None),
        ("0x10", None),
        ("5 5", None),
    ] {
        assert_eq!(parse_length_list(raw.as_bytes()), want, "{raw:?}");
    }
}

/// Reads `bytes` as the connection does, keeping the lines raw where it may: the head, and its
/// raw lines as the lean server would write them (`None` when they went into the map).
fn raw_head(bytes: &[u8]) -> (Head, Option<(String, RawLines)>) {
    let mut buf = BytesMut::from(bytes);
    let mut raw = RawLines::default();
    let h = parse_head(&mut buf, false, &mut 0, &mut Names::default(), &mut raw)
        .unwrap()
        .unwrap();
    if !raw.pending() {
        return (h, None);
    }
    let mut out = Vec::new();
    raw.write(&mut out);
    (h, Some((String::from_utf8(out).unwrap(), raw)))
}

/// A plain answer's lines stay as they came (names spelled as sent), but for the upstream's
/// `x-request-id` (the answer carries the request's), its map stays empty, and what the lean
/// server needs to know of them is said beside them.
#[test]
fn a_plain_answer_keeps_its_lines_as_they_came() {
    let (h, raw) = raw_head(
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Thu, 03 Dec 2026 07:29:02 GMT\r\n\
          Content-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\
          X-Request-Id: up-1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nok\n",
    );
    assert!(h.response.headers().is_empty());
    assert_eq!(h.framing, Framing::Length(3));
    assert!(h.keep_alive);
    let (lines, raw) = raw.expect("kept raw");
    assert_eq!(
        lines,
        "Server: nginx\r\nDate: Thu, 03 Dec 2026 07:29:02 GMT\r\nContent-Type: text/plain\r\n\
         Content-Length: 3\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n",
        "every line but the connection's own and the upstream's id, in order"
    );
    assert!(raw.length && raw.date);
    // An answer read until the upstream closes has no length to announce.
    let (_, raw) = raw_head(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n");
    let (lines, raw) = raw.expect("kept raw");
    assert_eq!(lines, "X-A: 1\r\n");
    assert!(!raw.length && !raw.date);
}

/// Anything the request path reads or changes in an answer's headers puts them in the map at
/// once, as the connection reads it: so does an answer without a body (its connection goes
/// back before the answer is written). A repeated `content-length` no longer does: it is kept
/// raw as one line (`content_length_values_must_agree`).
#[test]
fn answers_that_are_not_plain_go_into_the_map_whole() {
    for bytes in [
        &b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nKeep-Alive: timeout=5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nConnection: x-a\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nUpgrade: h2c\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nX-A: 1\r\n\r\n",
    ] {
        let text = String::from_utf8_lossy(bytes);
        let (h, raw) = raw_head(bytes);
        assert!(raw.is_none(), "{text}: lines left raw");
        assert_eq!(h.response.headers()["x-a"], "1", "{text}");
    }
    // An upstream's `x-rampart-reason` is an ordinary header now that rampart knows its own
    // answers by their body (`respond::mark_own`): such an answer stays plain, the line as it
    // came.
    let (h, raw) = raw_head(
        b"HTTP/1.1 503 No\r\nX-A: 1\r\nContent-Length: 2\r\nX-Rampart-Reason: shed\r\n\r\n",
    );
    assert!(h.response.headers().is_empty());
    let (lines, _) = raw.expect("kept raw");
    assert_eq!(
        lines,
        "X-A: 1\r\nContent-Length: 2\r\nX-Rampart-Reason: shed\r\n"
    );
}

/// `trailer` announces trailer fields end to end (RFC 9110 §6.6.2): not hop-by-hop, so an
/// answer that carries it stays plain, its lines passed on as they came.
#[test]
fn a_trailer_announcement_is_passed_on_as_it_came() {
    let (_, raw) =
        raw_head(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Length: 2\r\nTrailer: x-b\r\n\r\n");
    let (lines, _) = raw.expect("kept raw");
    assert_eq!(lines, "X-A: 1\r\nContent-Length: 2\r\nTrailer: x-b\r\n");
}

/// Lines moved into a map go after what it holds, in the order they came, and only once.
#[test]
fn raw_lines_fill_a_map_once_in_order() {
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 200 OK\r\nX-B: 1\r\nX-A: 2\r\nx-b: 3\r\nContent-Length: 1\r\n\r\nz"[..],
    );
    let mut raw = RawLines::default();
    parse_head(&mut buf, false, &mut 0, &mut Names::default(), &mut raw)
        .unwrap()
        .unwrap();
    let mut map = HeaderMap::new();
    map.insert("x-request-id", HeaderValue::from_static("mine"));
    raw.fill(&mut map);
    raw.fill(&mut map);
    assert!(!raw.pending());
    let all: Vec<_> = map
        .iter()
        .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
        .collect();
    assert_eq!(
        all,
        [
            "x-request-id=mine",
            "x-b=1",
            "x-b=3",
            "x-a=2",
            "content-length=1"
        ]
    );
    raw.release();
    assert!(!raw.pending());
}

/// The request's id kept beside lines that hold none follows them, written or moved into a map,
/// once; a head let go takes it along, so the connection's next answer starts without one.
#[test]
fn an_id_kept_beside_the_lines_follows_them_once() {
    let bytes = &b"HTTP/1.1 200 OK\r\nX-A: 2\r\nContent-Length: 1\r\n\r\nz"[..];
    let mut raw = RawLines::default();
    let mut buf = BytesMut::from(bytes);
    parse_head(&mut buf, false, &mut 0, &mut Names::default(), &mut raw)
        .unwrap()
        .unwrap();
    raw.id = Some(HeaderValue::from_static("id-1"));
    let mut written = Vec::new();
    raw.write(&mut written);
    assert_eq!(
        written,
        b"X-A: 2\r\nContent-Length: 1\r\nx-request-id: id-1\r\n"
    );
    let mut map = HeaderMap::new();
    raw.fill(&mut map);
    raw.fill(&mut map);
    let all: Vec<_> = map
        .iter()
        .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
        .collect();
    assert_eq!(all, ["x-a=2", "content-length=1", "x-request-id=id-1"]);
    let mut buf = BytesMut::from(bytes);
    parse_head(&mut buf, false, &mut 0, &mut Names::default(), &mut raw)
        .unwrap()
        .unwrap();
    raw.id = Some(HeaderValue::from_static("id-2"));
    let mut buf = BytesMut::from(bytes);
    parse_head(&mut buf, false, &mut 0, &mut Names::default(), &mut raw)
        .unwrap()
        .unwrap();
    assert_eq!(raw.id, None, "a new head starts without one");
    raw.id = Some(HeaderValue::from_static("id-3"));
    raw.release();
    assert_eq!(raw.id, None, "let go with its head");
}

/// The raw lines' values are not checked again: that holds only if httparse refuses exactly the
/// bytes `HeaderValue` refuses. Every byte, in the middle of a value.
#[test]
fn a_value_is_taken_exactly_when_a_header_value_would_be() {
    for b in 0..=255u8 {
        let mut bytes = b"HTTP/1.1 200 OK\r\nX-A: a".to_vec();
        bytes.push(b);
        bytes.extend_from_slice(b"b\r\nContent-Length: 1\r\n\r\nz");
        let mut buf = BytesMut::from(&bytes[..]);
        let parsed = parse_head(
            &mut buf,
            false,
            &mut 0,
            &mut Names::default(),
            &mut RawLines::default(),
        );
        let valid = HeaderValue::from_bytes(&[b'a', b, b'b']).is_ok();
        assert_eq!(
            matches!(parsed, Ok(Some(_))),
            valid,
            "byte {b:#04x}: httparse and HeaderValue disagree"
        );
    }
}

/// What a name means for the answer (framing, plainness) is kept with the name at its place:
/// a different name there is read for what it is, and the same name again means the same.
#[test]
fn a_kept_name_s_meaning_follows_the_name_at_its_place() {
    let mut names = Names::default();
    let mut raw = RawLines::default();
    let mut read = |bytes: &[u8]| {
        let mut buf = BytesMut::from(bytes);
        let h = parse_head(&mut buf, false, &mut 0, &mut names, &mut raw)
            .unwrap()
            .unwrap();
        (h.framing, raw.pending(), raw.date)
    };
    let length = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: x\r\n\r\nok";
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Request-Id: a\r\n\r\n";
    let hop = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nUpgrade: h2c\r\n\r\nok";
    assert_eq!(read(length), (Framing::Length(2), true, true));
    assert_eq!(read(chunked), (Framing::Chunked, false, false));
    assert_eq!(read(length), (Framing::Length(2), true, true));
    assert_eq!(read(hop), (Framing::Length(2), false, false));
    assert_eq!(read(length), (Framing::Length(2), true, true));
}
