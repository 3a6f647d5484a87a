//! Checks of SPEC §13: `jwt` tenant sources, `tenants.plans`, `rate_limit.plans` references
//! and `trust_plan_header`.
//!
//! A plan is a name used in three places (a token or header names it, `assign` lists its
//! tenants, a policy gives it limits); a name in `assign` that no policy gives limits to is a
//! typo that would silently leave those tenants on `per_tenant`, so it is an error.

use std::collections::HashMap;
use std::path::Path;

use super::super::file::{redact_url, File, JwtSource, Limit, LimitWindow};
use super::super::locate::{KeyPath, Target};
use super::{syntax, Report};
use crate::tenant::jwt;

/// Shortest `jwks_refresh`.
const MIN_JWKS_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

/// Checks the `jwt:` source at `p`, `tenants.from[i]`; a JWKS file's bytes are kept for the
/// load to serve (`FilesRead::jwks`).
pub(super) fn jwt_source(j: &JwtSource, i: usize, p: &KeyPath, r: &mut Report<'_>) {
    if let Err(m) = syntax::header_name(&j.header) {
        r.value(&p.key("header"), m);
    }
    claim_path(&j.claim, &p.key("claim"), r);
    if let Some(pc) = &j.plan_claim {
        claim_path(pc, &p.key("plan_claim"), r);
    }
    r.positive(&p.key("jwks_refresh"), j.jwks_refresh.0);
    if !j.jwks_refresh.0.is_zero() && j.jwks_refresh.0 < MIN_JWKS_REFRESH {
        // 1ms fetched an https JWKS 227 times in 3 s: keys do not rotate that fast.
        r.value(
            &p.key("jwks_refresh"),
            format!(
                "{} is too short: the JWKS is fetched (or read) again this often; the least is 1s",
                j.jwks_refresh
            ),
        );
    }
    let jp = p.key("jwks");
    if jwt::is_url(&j.jwks) {
        match j.jwks.parse::<http::Uri>() {
            Ok(u) if u.host().is_some_and(|h| !h.is_empty()) => {
                // The keys that decide whose request it is, in clear from off this machine:
                // anyone on the way can hand out keys of their own and sign for any tenant.
                if u.scheme_str() == Some("http") && !u.host().is_some_and(syntax::is_loopback_host)
                {
                    r.warn(
                        &jp,
                        "the JWKS is fetched in clear from off this machine: anyone on the way can swap in keys of their own and sign tokens for any tenant; use an https:// url",
                    );
                }
            }
            _ => r.value(&jp, format!("invalid JWKS url {:?}", redact_url(&j.jwks))),
        }
    } else if j.jwks.contains("://") {
        r.value(&jp, "a JWKS url must be http:// or https://");
    } else {
        r.readable(&jp, Path::new(&j.jwks), "JWKS file");
        // Read as the refresh reads it: bounded, never waited on. A file `readable` refused
        // is not read again.
        if !r.has_error_under(&jp) {
            match crate::tls::pem::read_capped(
                Path::new(&j.jwks),
                jwt::MAX_JWKS_BYTES as u64,
                "a JWKS file",
            ) {
                Ok(bytes) => match jwt::check_jwks(&bytes) {
                    Ok(()) => {
                        r.read.jwks.insert(i, jwt::JwksRead::File(bytes.into()));
                    }
                    Err(m) => r.value(&jp, format!("JWKS file {:?}: {m}", j.jwks)),
                },
                Err(e) => r.value(&jp, e.to_string()),
            }
        }
    }
    if let Some(ca) = &j.jwks_ca {
        if j.jwks.starts_with("https://") {
            r.readable(&p.key("jwks_ca"), ca, "JWKS ca bundle");
        } else {
            r.value(
                &p.key("jwks_ca"),
                "jwks_ca only applies to an https:// jwks",
            );
        }
    }
    for (key, list) in [("issuers", &j.issuers), ("audiences", &j.audiences)] {
        // Left out, the claim is not checked; written empty (`[]`, or null: its items
        // commented out, `~`) it would look like a check and be none (SPEC §13 gives an empty
        // list no meaning).
        let claim = if key == "issuers" { "iss" } else { "aud" };
        if list.is_empty() && r.doc_has_index(&p.key(key)) {
            r.value(
                &p.key(key),
                format!("an empty list checks no `{claim}`: list the accepted values, or omit `{key}` to skip the check"),
            );
        } else if r.is_null(&p.key(key)) {
            r.key(
                &p.key(key),
                format!("is empty (null), which would be read as not written and check no `{claim}`: list the accepted values, or omit `{key}` to skip the check"),
            );
        }
        for (i, v) in list.iter().enumerate() {
            if v.trim().is_empty() {
                r.value(
                    &p.key(key).idx(i),
                    "an empty or blank value matches no token: remove it, or write the accepted value",
                );
            } else if v.trim() != v {
                // Compared byte for byte: a space written around the value matches only a
                // token whose claim carries the same space.
                r.warn(
                    &p.key(key).idx(i),
                    format!("{v:?} has spaces around it and matches only a `{claim}` that has them too; write the value without them"),
                );
            } else if list[..i].contains(v) {
                r.warn(
                    &p.key(key).idx(i),
                    format!("{v:?} is listed twice; remove one"),
                );
            }
        }
    }
}

fn claim_path(path: &str, p: &KeyPath, r: &mut Report<'_>) {
    if path.split('.').any(str::is_empty) {
        r.value(
            p,
            format!("invalid claim path {path:?}: name a claim, or nested ones as a.b"),
        );
    }
}

/// Checks `tenants.plans` against the policies' `rate_limit.plans`, and `trust_plan_header`.
pub(super) fn check(f: &File, r: &mut Report<'_>) {
    let tp = KeyPath::default().key("tenants").key("plans");
    let defined = crate::tenant::configured_plans(f);
    if defined.is_empty() {
        // A claim names a plan only when a policy gives it limits (`tenant::jwt`).
        for (i, s) in f.tenants.from.iter().enumerate() {
            if s.jwt.as_ref().is_some_and(|j| j.plan_claim.is_some()) {
                let at = KeyPath::default().key("tenants").key("from").idx(i);
                r.warn(
                    &at.key("jwt").key("plan_claim"),
                    "no policy has rate_limit.plans, and a token's claim names a plan only when a policy gives it limits: this claim never names one, and does nothing",
                );
            }
        }
    }
    let plans = f.tenants.plans.as_ref();
    if let Some(h) = plans.and_then(|p| p.plan_header.as_deref()) {
        if let Err(m) = syntax::header_name(h) {
            r.value(&tp.key("plan_header"), m);
        }
    }
    // Each tenant of `assign`, where it is written: a tenant on two plans is refused at the
    // repeat, the later place in the file (the model's plans are in name order, not the file's).
    let mut listed: Vec<((usize, usize), &str, &str, KeyPath)> = Vec::new();
    for (plan, tenants) in plans.map(|p| &p.assign).into_iter().flatten() {
        let ap = tp.key("assign").key(plan);
        if !defined.contains(plan.as_str()) {
            r.key(
                &ap,
                format!("no policy gives limits to plan {plan:?} (rate_limit.plans.{plan}); its tenants would get per_tenant"),
            );
        }
        for (i, t) in tenants.iter().enumerate() {
            let at = ap.idx(i);
            if let Err(m) = syntax::tenant_id(t) {
                r.value(&at, m);
            } else {
                let pos = r.doc.locate(&r.written(&at), Target::Value);
                listed.push((pos, t, plan, at));
            }
        }
    }
    listed.sort_by_key(|(pos, ..)| *pos);
    let mut seen: HashMap<&str, (&str, &KeyPath)> = HashMap::new();
    for (_, t, plan, at) in &listed {
        if let Some((other, first)) = seen.get(t) {
            let there = r.place(first);
            r.value(
                at,
                format!("tenant {t:?} is already on plan {other:?} (at {there}); a tenant is on one plan"),
            );
        } else {
            seen.insert(t, (plan, at));
        }
    }
    let header = plans.is_some_and(|p| p.plan_header.is_some());
    if header && !f.listeners.iter().any(|l| l.trust_plan_header) {
        r.warn(
            &tp.key("plan_header"),
            "no listener has `trust_plan_header: true`, so this header never names a plan: a client's lines of it are only removed before the upstream (or set to a token's plan_claim)",
        );
    }
    for (i, l) in f.listeners.iter().enumerate() {
        if l.trust_plan_header && !header {
            r.value(
                &KeyPath::default()
                    .key("listeners")
                    .idx(i)
                    .key("trust_plan_header"),
                "there is no tenants.plans.plan_header to trust",
            );
        }
    }
    // A plan a token or a header can name may be any; else only `assign` puts tenants on one.
    let named = header
        || f.tenants
            .from
            .iter()
            .any(|s| s.jwt.as_ref().is_some_and(|j| j.plan_claim.is_some()));
    let assigned = |plan: &str| plans.is_some_and(|p| p.assign.contains_key(plan));
    for (name, p) in &f.policies {
        let Some(rl) = &p.rate_limit else { continue };
        for plan in rl.plans.keys() {
            let pp = KeyPath::default().key("policies").key(name);
            let at = pp.key("rate_limit").key("plans").key(plan);
            if let Err(m) = syntax::limit_name(plan) {
                r.key(&at, m);
            } else if !named && !assigned(plan) {
                r.warn(
                    &at,
                    format!("no tenant can be on plan {plan:?}: no jwt source has a plan_claim, there is no tenants.plans.plan_header, and tenants.plans.assign does not list it; it does nothing"),
                );
            }
        }
    }
}

/// `window: calendar` needs a rate per minute, hour or day, and no burst (it admits the count).
pub(super) fn calendar_limit(l: &Limit, lp: &KeyPath, r: &mut Report<'_>) {
    if l.window != LimitWindow::Calendar {
        return;
    }
    if ![60, 3600, 86_400].contains(&l.rate.per.as_secs()) || l.rate.per.subsec_nanos() != 0 {
        r.value(
            &lp.key("rate"),
            format!("rate {}: a calendar window counts per UTC minute, hour or day (like 1000/h or 10000/d)", l.rate),
        );
    }
    if l.burst.is_some() {
        r.value(
            &lp.key("burst"),
            "a calendar window admits its count per window: leave burst out",
        );
    }
}
