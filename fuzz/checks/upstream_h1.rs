//! The upstream answer reader (`rampart::proxy::pool::h1`) on arbitrary bytes: the answer head
//! parser and the chunked body decoder, with the input fed whole and in pieces of a size the
//! input picks. Never a panic; the same input split differently reads the same answer (or the
//! same refusal); no answer has more headers than the bound, and no 1xx is final.

use bytes::BytesMut;
use rampart::proxy::pool::h1::{parse_head, Chunk, Chunked, Framing, Names, RawLines, MAX_HEAD};

/// The head (status and framing; `None`: the input ended first) or a refusal, the chunked
/// body decoded, and whether the body decoded without an error.
type Read = (Result<Option<(u16, Framing)>, ()>, Vec<u8>, bool);

/// What reading `data` in pieces of `step` bytes gives: the status and framing (or the
/// refusal), and the decoded chunked body when the answer is chunked. `names`: the header names
/// the connection kept from its last answer.
fn read(data: &[u8], step: usize, head_request: bool, names: &mut Names) -> Read {
    let mut buf = BytesMut::new();
    let mut input = data.chunks(step);
    // Interim answers skipped so far: counted over the reads, as the connection counts them.
    let mut interim = 0;
    let head = loop {
        let raw = &mut RawLines::default();
        match parse_head(&mut buf, head_request, &mut interim, names, raw) {
            Ok(Some(h)) => break h,
            Ok(None) => match input.next() {
                Some(c) => buf.extend_from_slice(c),
                None => return (Ok(None), Vec::new(), false),
            },
            Err(_) => return (Err(()), Vec::new(), false),
        }
    };
    // As many lines as fit the head's bytes, the shortest (`a:` and LF) three each.
    assert!(head.response.headers().len() <= MAX_HEAD / 3);
    let status = head.response.status().as_u16();
    assert!(!(100..200).contains(&status), "interim answers are skipped");
    let mut body = Vec::new();
    let mut ok = true;
    if head.framing == Framing::Chunked {
        let mut c = Chunked::new();
        loop {
            match c.decode(&mut buf) {
                Ok(Chunk::Data(d)) => {
                    assert!(!d.is_empty());
                    body.extend_from_slice(&d);
                }
                Ok(Chunk::Trailers(t)) => {
                    assert!(!t.is_empty(), "no empty trailers step");
                    assert!(c.is_done(), "trailers come last");
                }
                Ok(Chunk::End) => {
                    assert!(c.is_done());
                    break;
                }
                Ok(Chunk::More) => match input.next() {
                    Some(more) => buf.extend_from_slice(more),
                    None => break,
                },
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
    }
    (Ok(Some((status, head.framing))), body, ok)
}

/// One input; panics on a finding.
pub fn run(data: &[u8]) {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(first % 16) + 1;
    let head_request = first & 0x80 != 0;
    // The second read finds the names the first one kept: it must read the same answer.
    let mut names = Names::default();
    let whole = read(data, data.len().max(1), head_request, &mut names);
    let pieces = read(data, step, head_request, &mut names);
    assert_eq!(whole, pieces, "split in pieces of {step}");
    // The chunked decoder alone on the same bytes.
    let mut buf = BytesMut::from(data);
    let mut c = Chunked::new();
    let mut total = 0usize;
    for _ in 0..data.len() + 2 {
        match c.decode(&mut buf) {
            Ok(Chunk::Data(d)) => total += d.len(),
            Ok(Chunk::Trailers(_)) => {}
            Ok(Chunk::More) | Ok(Chunk::End) | Err(_) => break,
        }
    }
    assert!(total <= data.len());
}
