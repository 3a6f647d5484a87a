//! Slips a file may hold that were once passed over or half reported: route errors behind a
//! bad listener address, a repeated endpoint, an empty `timeout`, a range message that did not
//! match its check, and the reserved tenant id `_other`.

use super::{errors, policy, warnings, BASE};

// === the reserved tenant id ===

/// `_other` is the metrics label of the tenants folded past `metrics_labels`: a tenant named
/// so would be counted with them, so the file may not name one.
#[test]
fn the_folded_tenants_label_is_no_tenant_id() {
    let reserved = |text: &str, path: &str| {
        let all = errors(text);
        let e = all.iter().find(|e| e.path == path);
        let e = e.unwrap_or_else(|| panic!("an error at {path}: {all:#?}"));
        assert!(
            e.message.contains("\"_other\" is reserved")
                && e.message.contains("folded past tenants.metrics_labels"),
            "{e:?}"
        );
    };
    reserved(
        &format!("{BASE}tenants: {{ fallback: _other }}\n"),
        "tenants.fallback",
    );
    reserved(
        &policy(
            "{ rate_limit: { per_tenant: { rate: 1/s }, overrides: { _other: { rate: 2/s } } } }",
        ),
        "policies.p.rate_limit.overrides._other",
    );
    let plans = format!(
        "tenants:\n  plans: {{ plan_header: x-plan, assign: {{ pro: [acme, _other] }} }}\n{BASE}"
    )
    .replace(
        "  p: {}",
        "  p: { rate_limit: { per_tenant: { rate: 1/s }, plans: { pro: { rate: 5/s } } } }",
    );
    reserved(&plans, "tenants.plans.assign.pro[1]");
    // Only that spelling: labels are case-sensitive, and `other` is a name like any.
    for id in ["_Other", "other", "_others"] {
        assert!(
            warnings(&format!("{BASE}tenants: {{ fallback: {id} }}\n")).is_empty(),
            "{id}"
        );
    }
}
