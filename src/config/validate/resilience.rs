//! Checks of `policies.NAME.fault`, `.fallback` and `.idempotency` (SPEC §10).

use std::collections::HashSet;

use super::super::file::{Fallback, Fault, Idempotency};
use super::super::locate::KeyPath;
use super::super::units::Size;
use super::{syntax, Report};

/// Largest `fault.delay.duration`: a drill that holds requests longer tests nothing new.
const MAX_FAULT_DELAY: std::time::Duration = std::time::Duration::from_secs(300);
/// Largest `idempotency.max_body`: every kept answer may hold this much.
pub(super) const MAX_IDEMPOTENT_BODY: u64 = 16 << 20;

/// Largest `idempotency.max_bytes`: the memory one route's kept answers may take.
pub(super) const MAX_IDEMPOTENT_BYTES: u64 = 4 << 30;

/// Most `idempotency.max_entries`: 100 times the default. A key without a kept answer costs
/// some hundreds of bytes beside `max_bytes`, so this keeps one route's table to a few GB;
/// 18446744073709551615 was accepted, a bound in name only.
pub(super) const MAX_IDEMPOTENT_ENTRIES: u64 = 10_000_000;

/// Checks `fault` at `p`, a policy that outbound listener `tunnels` (if any) carries
/// CONNECTs with.
pub(super) fn fault(f: &Fault, p: &KeyPath, tunnels: Option<&str>, r: &mut Report<'_>) {
    if let Some(h) = &f.header {
        if let Err(m) = syntax::header_name(h) {
            r.value(&p.key("header"), m);
        }
    }
    if f.delay.is_none() && f.abort.is_none() {
        r.value(
            p,
            "a fault without delay or abort injects nothing; give one or remove the section",
        );
    }
    // A share of 0% is valid (a drill switched off by one number) but injects nothing: said,
    // where it stands, as other settings that do nothing are.
    for (kind, percent) in [
        ("delay", f.delay.as_ref().map(|d| d.percent.0)),
        ("abort", f.abort.as_ref().map(|a| a.percent.0)),
    ] {
        if percent == Some(0.0) {
            r.warn(
                &p.key(kind).key("percent"),
                format!("0% of requests get this {kind}: it is never injected and does nothing; give a share above 0%, or remove `{kind}`"),
            );
        }
    }
    if let Some(d) = &f.delay {
        let dp = p.key("delay");
        r.positive(&dp.key("duration"), d.duration.0);
        if d.duration.0 > MAX_FAULT_DELAY {
            r.value(
                &dp.key("duration"),
                format!("{} is too long: the most is 5m", d.duration),
            );
        }
    }
    if let Some(a) = &f.abort {
        // A 1xx is an interim answer, never a request's last: as for `fallback.static`.
        if !(200..=599).contains(&a.status) {
            r.value(
                &p.key("abort").key("status"),
                format!("{} cannot be an injected abort: use 200 to 599", a.status),
            );
        } else if a.status < 400 {
            // Acts (the answer is that status, marked `fault_injected`), but a drill's abort
            // with a success or redirect status is almost surely a typo (200 for 500).
            let mut msg = format!(
                "{} is not an error status: an injected abort answers it as if the request had succeeded (or been redirected) without reaching the upstream; use 400 to 599",
                a.status
            );
            if let Some(l) = tunnels.filter(|_| a.status < 300) {
                // A 2xx to CONNECT says the tunnel is open (RFC 9110 §9.3.6): what rampart
                // does with one is said where it is configured.
                msg.push_str(&format!(
                    ". Listener {l} takes CONNECTs through this policy, and a 2xx says a tunnel is open (RFC 9110 section 9.3.6): an aborted CONNECT gets it with no content, and its connection (an HTTP/2 stream) is closed right after, as by a target that closes at once"
                ));
            }
            r.warn(&p.key("abort").key("status"), msg);
        }
    }
}

/// Checks `fallback` at `p`.
pub(super) fn fallback(f: &Fallback, p: &KeyPath, r: &mut Report<'_>) {
    if f.on.is_empty() {
        r.value(
            &p.key("on"),
            "an empty list replaces nothing; remove the fallback section instead",
        );
    }
    let mut seen = HashSet::new();
    for (i, on) in f.on.iter().enumerate() {
        if !seen.insert(on) {
            r.value(&p.key("on").idx(i), "listed twice");
        }
    }
    if f.stale.is_none() && f.static_answer.is_none() {
        r.value(
            p,
            "a fallback needs stale, static or both; with neither it answers nothing",
        );
    }
    if let Some(s) = f.stale {
        r.positive(&p.key("stale"), s.0);
    }
    if let Some(s) = &f.static_answer {
        let sp = p.key("static");
        if !(200..=599).contains(&s.status) {
            r.value(
                &sp.key("status"),
                format!("{} cannot be a fallback answer: use 200 to 599", s.status),
            );
        }
        match &s.methods {
            // Acts (SPEC §10: for every method), but tells a write that never ran it succeeded.
            None if (200..300).contains(&s.status) => r.warn(
                &sp.key("status"),
                format!(
                    "a {} fallback also answers a POST, PUT, PATCH or DELETE whose refusal it replaces, telling its client the write succeeded though it never ran (or ran an unknown number of times); add `methods: [GET, HEAD]` to answer reads only (other methods then get rampart's own error), or use a 4xx or 5xx status",
                    s.status
                ),
            ),
            None => {}
            Some(ms) => {
                let mp = sp.key("methods");
                if ms.is_empty() {
                    r.value(
                        &mp,
                        "an empty list: the answer would stand in for no request; name methods, or remove `methods` for every method",
                    );
                }
                for (i, m) in ms.iter().enumerate() {
                    let at = mp.idx(i);
                    let upper = m.to_ascii_uppercase();
                    if http::Method::from_bytes(m.as_bytes()).is_err() {
                        r.value(&at, format!("{m:?} is not an HTTP method"));
                    } else if upper != *m && crate::otel::KNOWN_METHODS.contains(&upper.as_str()) {
                        // Methods are case-sensitive (RFC 9110 §9.1): `get` is no GET.
                        r.value(
                            &at,
                            format!("methods are case-sensitive: write {upper}, not {m}"),
                        );
                    } else if ms[..i].contains(m) {
                        r.value(&at, format!("{m} is listed twice"));
                    } else if m == "CONNECT" {
                        // Would never act: a CONNECT's refusal is always rampart's own
                        // (`stack.rs`), as a 2xx would read as an open tunnel.
                        r.value(
                            &at,
                            "a CONNECT never gets a fallback (a 2xx would read as an open tunnel): its refusal is always rampart's own; remove CONNECT",
                        );
                    }
                }
            }
        }
        if !s.body.is_empty()
            && http::StatusCode::from_u16(s.status).is_ok_and(crate::proxy::respond::contentless)
        {
            // Acts (the answer is that status), but goes without the body.
            r.warn(
                &sp.key("body"),
                format!(
                    "a {} answer carries no content: this body is never sent; remove it, or use a status that has a body",
                    s.status
                ),
            );
        }
        if http::HeaderValue::from_str(&s.content_type).is_err() {
            r.value(&sp.key("content_type"), "not a valid header value");
        }
    }
}

/// Checks `idempotency` at `p`.
pub(super) fn idempotency(i: &Idempotency, p: &KeyPath, r: &mut Report<'_>) {
    if let Err(m) = syntax::header_name(&i.header) {
        r.value(&p.key("header"), m);
    }
    r.positive(&p.key("ttl"), i.ttl.0);
    r.at_least_1(&p.key("max_entries"), i.max_entries);
    if i.max_entries > MAX_IDEMPOTENT_ENTRIES {
        r.value(
            &p.key("max_entries"),
            format!(
                "{} is too large: the most is {MAX_IDEMPOTENT_ENTRIES} (10M)",
                i.max_entries
            ),
        );
    }
    if i.max_body.0 == 0 {
        r.value(
            &p.key("max_body"),
            "must be at least 1 (got 0): a request body is digested up to max_body, so with 0 every keyed request with a body would run without the key's protection",
        );
    }
    if i.max_body.0 > MAX_IDEMPOTENT_BODY {
        r.value(
            &p.key("max_body"),
            format!("{} is too large: the most is 16MiB", i.max_body),
        );
    }
    if i.max_bytes.0 < i.max_body.0 {
        r.value(
            &p.key("max_bytes"),
            format!(
                "must be at least max_body ({}), got {}: an answer of max_body could never be kept",
                i.max_body, i.max_bytes
            ),
        );
    }
    if i.max_bytes.0 > MAX_IDEMPOTENT_BYTES {
        r.value(
            &p.key("max_bytes"),
            format!(
                "{} is too large: the most is {}",
                i.max_bytes,
                Size(MAX_IDEMPOTENT_BYTES)
            ),
        );
    }
}
