//! Who a request is for: tenant identification (SPEC `tenants`) and bounded metric labels.
//!
//! A tenant id comes from the first configured source that yields a value (a header, a query
//! parameter, the client certificate, a verified token or the client's address); requests
//! without one get the fallback tenant, or are refused with 401 when the fallback is `reject`.
//! Ids are checked against `[A-Za-z0-9._:@-]{1,128}` before they reach any table or label, so a
//! client cannot inject label syntax or grow memory with giant keys.
//!
//! What the upstream reads about who is calling must be what rampart used (SPEC §13,
//! [`Identify::vouch`]): when a verified token named the tenant, the `header` sources' lines
//! are set to it, so a client's own `x-tenant-id` cannot claim another tenant downstream; and a
//! plan header is passed on only where the listener believes it, or set to the token's plan.
//!
//! Labels are bounded separately: the first `metrics_labels` distinct tenants seen get their
//! own `tenant` label value, every later one is counted as `_other`. Tenants the policy names
//! (`rate_limit.overrides`) are pinned: they always keep their own label and take no place
//! under the cap, because they are the ones an operator asks about (SPEC §12).

pub mod jwt;
pub mod tracked;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use parking_lot::Mutex;

use self::jwt::{JwksRead, Jwt, Rejudge, Reread, Verified};
use crate::clock::{MonotonicClock, WallClock};
use crate::config::file::{
    ClientCertField, ClientIp, ClientIpFrom, File, JwtSource, TenantSource, Tenants, NO_TENANT,
};
use crate::error::Reason;
use crate::proxy::forward::remove_aliases;
use crate::throttle::{Throttle, WARN_EVERY};
use crate::tls::SystemRoots;

/// Longest tenant id accepted, in bytes.
pub const MAX_TENANT_LEN: usize = 128;
/// The label of tenants past the `metrics_labels` cap, an id no tenant may have.
pub const OTHER_LABEL: &str = crate::config::file::FOLDED_TENANTS;
/// Most bytes of a refused plan header a warning shows.
const SHOWN_PLAN: usize = 40;

/// The plan of `plans` (those some policy gives limits to) that `value` is, byte for byte: the
/// one test of what a token's `plan_claim` and a trusted `plan_header` may name. A few plans
/// at most, so a scan.
pub(crate) fn configured_plan<'a>(plans: &'a [Box<str>], value: &[u8]) -> Option<&'a str> {
    plans.iter().map(|p| &**p).find(|p| p.as_bytes() == value)
}

/// A request's tenant, borrowed from the request where possible (no allocation).
#[derive(Clone, Debug)]
pub enum TenantId {
    /// Taken from a header value (cheap to clone: shares the request's bytes).
    Header(HeaderValue),
    /// Taken from the query string.
    Query(Arc<str>),
    /// The configured fallback tenant.
    Fallback(Arc<str>),
    /// Taken from the verified client certificate (may contain `/`, e.g. a SPIFFE id).
    Cert(Arc<str>),
    /// Taken from a verified bearer token, with the plan it names.
    Jwt(Arc<Verified>),
    /// The client's IP address as text (the connection's, shared; or the one a proxy in front
    /// forwarded).
    Ip(HeaderValue),
}

/// What a verified client certificate says about its holder (SPEC §8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertIds {
    /// The first subject CN.
    pub cn: Option<Arc<str>>,
    /// The first URI SAN (e.g. `spiffe://example.org/ns/prod/sa/billing`).
    pub uri_san: Option<Arc<str>>,
}

/// The identification rules of one config generation.
#[derive(Debug)]
pub struct Identify {
    sources: Vec<Source>,
    fallback: Option<Arc<str>>,
    /// `tenants.plans.plan_header`.
    plan_header: Option<http::HeaderName>,
    /// The plans some policy gives limits to ([`configured_plans`]): the only
    /// ones a trusted `plan_header` (or a token's `plan_claim`) may name. The same list the
    /// `jwt` sources share.
    plans: Arc<[Box<str>]>,
    /// A trusted `plan_header` naming none of `plans` is warned about at most every
    /// [`WARN_EVERY`]; taken only for such a request.
    unplanned: Mutex<Throttle>,
    /// The `header` sources' names, set to the tenant a verified token named before a request
    /// goes upstream. Empty without a `jwt` source; never a token's own header.
    vouched: Box<[HeaderName]>,
    /// What [`Identify::vouch`] says it wrote, so the hop-by-hop removal spares those lines
    /// (`forward::prepare_request`): nothing; `vouched`; `vouched` and `plan_header`.
    written: [Written; 3],
    /// Whether [`Identify::vouch`] has anything to do (names in `vouched`, or a
    /// `plan_header`): settled once per generation, so a request costs one test without them.
    rewrites: bool,
    /// Whether a name of `vouched` or `plan_header` has `_`: its spellings a CGI-style
    /// upstream reads as it may then have none, so [`Identify::vouch`] walks the head's names
    /// for them whatever the head's names are.
    underscored: bool,
    /// `tenants.plans.assign`, by tenant.
    assign: HashMap<Box<str>, Arc<str>>,
    /// The tenant of requests on `tenant: optional` routes that name none.
    none: Arc<str>,
}

/// The names of the lines [`Identify::vouch`] wrote into a request, which a `connection` list
/// does not remove. Handed down behind one thin reference: a slice's two words in the
/// request's context made a plain connection's future 32 bytes larger (4,848 against 4,816 in a
/// test build of rustc 1.95); this, none.
/// It also carries the identity's names (every `header` source's, and `plan_header`, each
/// also with `_` for `-`), which a client's request trailers lose (`body::ClientBody`).
#[derive(Debug, Default)]
pub struct Written(Box<[HeaderName]>, Option<Arc<[HeaderName]>>);

impl Written {
    /// The names.
    pub fn names(&self) -> &[HeaderName] {
        &self.0
    }

    /// The names the identity is read from (the `header` sources', `plan_header`): `None`
    /// without any. The trailers lose these and every spelling a CGI-style upstream reads as
    /// one of them (`x_tenant-id`: `forward::cgi_alias`).
    pub fn identity(&self) -> Option<&Arc<[HeaderName]>> {
        self.1.as_ref()
    }
}

#[derive(Debug)]
enum Source {
    Header(http::HeaderName),
    Query(String),
    Cert(ClientCertField),
    Jwt(Box<Jwt>),
    ClientIp {
        from: ClientIpFrom,
        /// `trusted_hops`: the client is this many entries from the end of x-forwarded-for.
        hops: usize,
        /// `ipv6_prefix`: the bits of an IPv6 address that name its client.
        v6_bits: u8,
    },
}

/// Tenant label folding, shared across reloads so a label, once given, stays stable.
#[derive(Debug)]
pub struct Labels {
    cap: AtomicUsize,
    /// Places under the cap taken: labels given (pinned ones not counted) and those being
    /// given now ([`Labels::take_place`]).
    counted: AtomicUsize,
    given: DashMap<Box<str>, Arc<str>, foldhash::fast::RandomState>,
    pinned: ArcSwap<HashSet<Box<str>, foldhash::fast::RandomState>>,
    other: Arc<str>,
}

// === impl TenantId ===

impl TenantId {
    /// The id as text (validated: ASCII from the allowed set).
    pub fn as_str(&self) -> &str {
        match self {
            TenantId::Header(v) | TenantId::Ip(v) => v.to_str().unwrap_or(""),
            TenantId::Query(s) | TenantId::Fallback(s) | TenantId::Cert(s) => s,
            TenantId::Jwt(v) => &v.tenant,
        }
    }

    /// Whether a verified credential named the tenant (a token's claim, a client
    /// certificate), not a value the client may write as it likes (a header, the query, an
    /// address) nor the fallback. Keys that hold a tenant's stored answers (idempotency) are
    /// kept apart by it: where a `header` source follows a `jwt` one, a client without a token
    /// can name a verified tenant's id.
    pub fn is_verified(&self) -> bool {
        matches!(self, TenantId::Jwt(_) | TenantId::Cert(_))
    }

    /// The id's bytes when it was checked against the allowed set (see [`is_valid_id`]): taken
    /// from a header, the query or a token. `None` for the others (a fallback from the file, a
    /// certificate's name), which may hold any text.
    pub fn checked_bytes(&self) -> Option<&[u8]> {
        match self {
            TenantId::Header(v) | TenantId::Ip(v) => Some(v.as_bytes()),
            TenantId::Query(s) => Some(s.as_bytes()),
            TenantId::Jwt(v) => Some(v.tenant.as_bytes()),
            TenantId::Fallback(_) | TenantId::Cert(_) => None,
        }
    }
}

/// The plans of `file` a tenant can be on: those some policy gives limits to
/// (`rate_limit.plans`). A token's `plan_claim` naming any other names no plan.
pub fn configured_plans(file: &File) -> BTreeSet<&str> {
    file.policies
        .values()
        .filter_map(|p| p.rate_limit.as_ref())
        .flat_map(|rl| rl.plans.keys().map(String::as_str))
        .collect()
}

/// Whether `id` is a valid tenant id: 1 to 128 bytes of `[A-Za-z0-9._:@-]`, and not the
/// reserved [`OTHER_LABEL`] or `-` (the tenant of a `tenant: optional` route's request that
/// names none): either would share its series with requests that are not that tenant's.
pub fn is_valid_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TENANT_LEN
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
        && id != OTHER_LABEL.as_bytes()
        && id != crate::config::file::NO_TENANT.as_bytes()
}

/// The message of an `invalid_tenant` answer for an id of a header or the query.
const INVALID_ID: &str = "tenant id must be one value of 1 to 128 characters of [A-Za-z0-9._:@-]";
/// ... for a client certificate's id ([`crate::tls::is_valid_cert_tenant`]).
const INVALID_CERT_ID: &str =
    "a client certificate's tenant id must be 1 to 2048 printable ASCII characters (spaces inside, not first or last)";
/// ... for a verified token's tenant claim.
const INVALID_TOKEN_ID: &str = "the bearer token's tenant is not a valid tenant id: 1 to 128 characters of [A-Za-z0-9._:@-], not '_other' or '-'";
/// ... for the reserved ids.
const RESERVED_OTHER: &str =
    "tenant id '_other' is reserved: it labels the tenants folded past tenants.metrics_labels";
const RESERVED_NONE: &str =
    "tenant id '-' is reserved: it is the tenant of a request that names none";

/// ... for the fallback tenant's name, claimed by a source.
const RESERVED_FALLBACK: &str =
    "this tenant id is reserved: it is tenants.fallback, the tenant of requests that name none";

/// The message for a refused header or query id `id`.
fn id_message(id: &[u8]) -> &'static str {
    if id == OTHER_LABEL.as_bytes() {
        RESERVED_OTHER
    } else if id == crate::config::file::NO_TENANT.as_bytes() {
        RESERVED_NONE
    } else {
        INVALID_ID
    }
}

// === impl Identify ===

impl Identify {
    /// Rules from the `tenants` section (validated already), on the system clock; `plans` are
    /// the plans a token may name ([`configured_plans`]).
    pub fn new(cfg: &Tenants, plans: &BTreeSet<&str>) -> Self {
        let clock: crate::clock::SharedClock = Arc::new(MonotonicClock::new());
        Self::build(
            cfg,
            plans,
            None,
            &WallClock::system(clock),
            &HashMap::new(),
            &SystemRoots::new(),
        )
    }

    /// Rules from the `tenants` section, tokens naming only `plans`; `jwt` sources whose
    /// JWKS is one of `prev`'s keep its keys ([`Jwt::new`]), new ones
    /// serve what this config load's validation read for them (`read`, by their index in
    /// `tenants.from`: a JWKS file's bytes, an https JWKS's client), and without that read the
    /// file, or fetch an https JWKS without `jwks_ca` trusting `system` (this load's roots).
    pub fn build(
        cfg: &Tenants,
        plans: &BTreeSet<&str>,
        prev: Option<&Identify>,
        wall: &WallClock,
        read: &HashMap<usize, JwksRead>,
        system: &SystemRoots,
    ) -> Self {
        let known: Arc<[Box<str>]> = plans.iter().map(|&p| Box::from(p)).collect();
        // A source of the same JWKS, read the same way if one is: its keys serve on.
        let prev_jwt = |c: &JwtSource| {
            prev?
                .sources
                .iter()
                .filter_map(|s| match s {
                    Source::Jwt(j) if j.config().jwks == c.jwks => Some(&**j),
                    _ => None,
                })
                .min_by_key(|j| !jwt::same_key_source(j.config(), c))
        };
        let sources: Vec<Source> = cfg
            .from
            .iter()
            .enumerate()
            .filter_map(|(i, s): (usize, &TenantSource)| {
                if let Some(j) = &s.jwt {
                    Some(Source::Jwt(Box::new(Jwt::new(
                        j,
                        known.clone(),
                        prev_jwt(j),
                        wall.clone(),
                        read.get(&i),
                        system,
                    ))))
                } else if let Some(h) = &s.header {
                    http::HeaderName::from_bytes(h.as_bytes())
                        .ok()
                        .map(Source::Header)
                } else if let Some(f) = s.client_cert {
                    Some(Source::Cert(f))
                } else if let Some(ClientIp {
                    from,
                    trusted_hops,
                    ipv6_prefix,
                }) = s.client_ip
                {
                    Some(Source::ClientIp {
                        from,
                        hops: usize::from(trusted_hops.unwrap_or(1).max(1)),
                        v6_bits: ipv6_prefix.unwrap_or(128).clamp(1, 128),
                    })
                } else {
                    s.query.clone().map(Source::Query)
                }
            })
            .collect();
        let vouched = vouched(&sources);
        let fallback = (cfg.fallback != "reject").then(|| Arc::from(cfg.fallback.as_str()));
        let plans = cfg.plans.as_ref();
        let plan_header = plans
            .and_then(|p| p.plan_header.as_deref())
            .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok());
        let mut assign = HashMap::new();
        for (plan, tenants) in plans.map(|p| &p.assign).into_iter().flatten() {
            let plan: Arc<str> = Arc::from(plan.as_str());
            for t in tenants {
                assign.insert(Box::from(t.as_str()), plan.clone());
            }
        }
        let mut identity: Vec<HeaderName> = Vec::new();
        for name in sources
            .iter()
            .filter_map(|s| match s {
                Source::Header(n) => Some(n),
                _ => None,
            })
            .chain(plan_header.iter())
        {
            // The trailers lose the name and every spelling a CGI-style upstream reads as it
            // (`forward::strip_request_trailers`).
            if !identity.contains(name) {
                identity.push(name.clone());
            }
        }
        let identity: Option<Arc<[HeaderName]>> =
            (!identity.is_empty()).then(|| Arc::from(identity));
        Identify {
            rewrites: !vouched.is_empty() || plan_header.is_some(),
            underscored: vouched
                .iter()
                .chain(plan_header.iter())
                .any(|n| n.as_str().contains('_')),
            written: [
                Written(Box::default(), identity.clone()),
                Written(vouched.clone(), identity.clone()),
                Written(
                    vouched.iter().chain(plan_header.iter()).cloned().collect(),
                    identity,
                ),
            ],
            vouched,
            sources,
            fallback,
            plan_header,
            plans: known,
            unplanned: Mutex::new(Throttle::new(WARN_EVERY)),
            assign,
            none: Arc::from(NO_TENANT),
        }
    }

    /// Whether a `jwt` source names tenants: a request naming none is then challenged for a
    /// bearer token.
    pub fn takes_tokens(&self) -> bool {
        self.sources.iter().any(|s| matches!(s, Source::Jwt(_)))
    }

    /// Whether every `jwt` source has keys (a JWKS URL is fetched in the background).
    pub fn is_ready(&self) -> bool {
        self.sources.iter().all(|s| match s {
            Source::Jwt(j) => j.is_ready(),
            _ => true,
        })
    }

    /// The plan of `tenant` (SPEC §13): the token's `plan_claim`, else `plan_header` when the
    /// listener trusts it, else `tenants.plans.assign`.
    ///
    /// A trusted `plan_header` names a plan only as a token's claim does: when its value is,
    /// byte for byte, a plan some policy gives limits to. Any other value (`platinum` that no
    /// policy has, `Gold`, ` gold`, empty) names none, the plan comes from `assign`, and
    /// rampart warns at most every [`WARN_EVERY`] with how many requests since. The test is a
    /// look-up in the generation's plans ([`configured_plan`], as a token's claim); the header's line itself is left to
    /// [`Identify::vouch`] (a trusted one passes as sent).
    pub fn plan<'a>(
        &'a self,
        tenant: &'a TenantId,
        headers: &'a HeaderMap,
        trust_header: bool,
    ) -> Option<&'a str> {
        if let TenantId::Jwt(v) = tenant {
            if let Some(p) = &v.plan {
                return Some(p);
            }
        }
        let header = self.plan_header.as_ref().filter(|_| trust_header);
        if let Some(h) = header {
            let mut lines = headers.get_all(h).iter();
            if let Some(v) = lines.next() {
                // Lines that disagree name no plan: which one the sender meant is not known
                // (as two tenant lines are refused). The same value repeated names it.
                let agreed = lines.all(|o| o == v);
                match configured_plan(&self.plans, v.as_bytes()).filter(|_| agreed) {
                    Some(p) => return Some(p),
                    None => self.unplanned(v),
                }
            }
        }
        if self.assign.is_empty() {
            return None;
        }
        self.assign.get(tenant.as_str()).map(|p| &**p)
    }

    /// Notes a trusted plan header that names no configured plan, and warns when due.
    #[cold]
    fn unplanned(&self, value: &HeaderValue) {
        let since = self.unplanned.lock().note(1, tokio::time::Instant::now());
        if let Some(n) = since {
            let bytes = value.as_bytes();
            let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN_PLAN)]);
            tracing::warn!(
                header = self.plan_header.as_ref().map_or("", HeaderName::as_str),
                plan = ?shown,
                requests = n,
                "a trusted plan_header names no plan of rate_limit.plans (or its lines disagree); the tenant's plan comes from tenants.plans.assign (requests: how many since the last warning)"
            );
        }
    }

    /// Makes the identity lines of a request about to go upstream say what rampart used, so
    /// the upstream is not told what the client claimed (SPEC §13). `tenant` is the request's,
    /// `trust_header` its listener's `trust_plan_header`.
    ///
    /// - A tenant a verified token named: each `header` source's name gets one line, the
    ///   verified tenant (the client's lines of that name go).
    /// - A plan the token's `plan_claim` named: `plan_header` gets one line, that plan (the
    ///   claim outranks the header even where it is trusted, so the client's line goes).
    /// - Otherwise, on a listener that does not trust `plan_header`: the client's lines of it
    ///   go, since rampart did not believe them.
    ///
    /// A tenant from any other source, and a plan header the listener trusts, pass as sent:
    /// that one even when it names no configured plan and [`Identify::plan`] did not use it, as
    /// whoever the listener trusts to send it may mean a plan rampart sets no limits for.
    /// Without a `jwt` source beside a `header` source and without a `plan_header`, this is
    /// one test of a flag: no line is looked up.
    ///
    /// Returns the names whose lines are now rampart's, not the client's: the hop-by-hop
    /// removal (`forward::prepare_request`) spares them, so a client's `connection:
    /// x-tenant-id` (RFC 9110 §7.6.1) cannot take the verified line away. Empty unless a token
    /// named the tenant.
    ///
    /// `any_underscore` says whether some name in `headers` has `_` (`forward::Sent`, noted as
    /// the head was read). Without one, and with no `_` in the names rewritten, no line is
    /// one of their spellings with `_` ([`cgi_alias`](crate::proxy::forward::cgi_alias)), and
    /// the names are not walked to find one (about 350 instructions a request for a browser's
    /// head of nine lines, counted by callgrind).
    pub fn vouch(
        &self,
        tenant: &TenantId,
        headers: &mut HeaderMap,
        trust_header: bool,
        any_underscore: bool,
    ) -> &Written {
        if !self.rewrites {
            return &self.written[0];
        }
        let aliases = any_underscore || self.underscored;
        let verified = match tenant {
            TenantId::Jwt(v) => Some(&**v),
            _ => None,
        };
        if let Some(v) = verified {
            // CGI-style upstreams read `x_tenant_id`, `x-tenant_id` and `x_tenant-id` as
            // `x-tenant-id` (`HTTP_X_TENANT_ID`): the client's lines of those go too.
            if aliases {
                remove_aliases(headers, &self.vouched);
            }
            for name in &*self.vouched {
                // The value was made once, with the token's verdict; a clone shares its bytes.
                match &v.tenant_value {
                    Some(value) => {
                        headers.insert(name.clone(), value.clone());
                    }
                    None => {
                        headers.remove(name);
                    }
                }
            }
        }
        let Some(name) = &self.plan_header else {
            return &self.written[usize::from(verified.is_some())];
        };
        let claimed = verified.filter(|v| v.plan.is_some());
        if aliases && (claimed.is_some() || !trust_header) {
            remove_aliases(headers, std::slice::from_ref(name));
        }
        match claimed {
            Some(v) => match &v.plan_value {
                Some(value) => {
                    headers.insert(name.clone(), value.clone());
                }
                // A claimed plan no header line can carry: the client's line still goes.
                None => {
                    headers.remove(name);
                }
            },
            None if !trust_header => {
                headers.remove(name);
            }
            None => {}
        }
        match (verified, claimed) {
            (_, Some(_)) => &self.written[2],
            (Some(_), None) => &self.written[1],
            (None, None) => &self.written[0],
        }
    }

    /// As [`Identify::identify`], for a route whose `tenant` is `optional` when `optional`:
    /// there, a request that names no tenant is served as `-` instead of the fallback.
    pub fn identify_for(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        conn: Conn<'_>,
        optional: bool,
    ) -> Result<TenantId, Reason> {
        match self.find(headers, uri, conn)? {
            // The fallback's name is the unidentified traffic's: a client naming it would join
            // that bucket and label, so it is refused as `_other` and `-` are.
            Some(t) if self.is_fallback(&t) => Err(Reason::InvalidTenant),
            Some(t) => Ok(t),
            None if optional => Ok(TenantId::Fallback(self.none.clone())),
            None => match &self.fallback {
                Some(f) => Ok(TenantId::Fallback(f.clone())),
                None => Err(Reason::TenantRequired),
            },
        }
    }

    /// Whether a source named the fallback tenant (`tenants.fallback`), which is reserved.
    fn is_fallback(&self, t: &TenantId) -> bool {
        self.fallback.as_deref().is_some_and(|f| f == t.as_str())
    }

    /// The tenant of a request, or the reason to refuse it; `conn` is what its connection says
    /// (the verified client certificate, if any, and the peer's address).
    pub fn identify(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        conn: Conn<'_>,
    ) -> Result<TenantId, Reason> {
        self.identify_for(headers, uri, conn, false)
    }

    /// What a request [`Identify::identify_for`] refused as [`Reason::InvalidTenant`] got wrong,
    /// for its answer's message: only the refusal path asks, and walks the sources again as
    /// `find` did, so the request path keeps one verdict and makes no text. A reserved id
    /// (`_other`, `-`) is told it is reserved, not a rule it meets; a certificate's id the
    /// certificate rule.
    pub fn invalid_message(&self, headers: &HeaderMap, uri: &Uri, conn: Conn<'_>) -> &'static str {
        if let Ok(Some(t)) = self.find(headers, uri, conn) {
            if self.is_fallback(&t) {
                return RESERVED_FALLBACK;
            }
        }
        for source in &self.sources {
            match source {
                Source::Header(name) => match named(headers, name) {
                    (Some(_), true) => return INVALID_ID,
                    (Some(v), false) if !v.is_empty() => return id_message(v.as_bytes()),
                    _ => {}
                },
                Source::Query(key) => match query_param(uri, key) {
                    Err(_) => return INVALID_ID,
                    Ok(Some(v)) => return id_message(v.as_bytes()),
                    Ok(None) => {}
                },
                Source::Cert(field) => {
                    let id = conn.cert.and_then(|c| match field {
                        ClientCertField::Cn => c.cn.as_ref(),
                        ClientCertField::UriSan => c.uri_san.as_ref(),
                    });
                    if let Some(id) = id {
                        return match id_message(id.as_bytes()) {
                            INVALID_ID => INVALID_CERT_ID,
                            reserved => reserved,
                        };
                    }
                }
                Source::Jwt(j) => {
                    if let Some(Err(Reason::InvalidTenant)) = j.check(headers) {
                        return INVALID_TOKEN_ID;
                    }
                }
                Source::ClientIp { .. } => {}
            }
        }
        INVALID_ID
    }

    /// The message of a request [`Identify::identify_for`] refused as [`Reason::InvalidToken`],
    /// asked only on the refusal path: lines that carry a token but not as one (two tokens,
    /// text after one, other credentials beside it; `jwt/bearer.rs`) are told what is wrong,
    /// not that verification failed.
    pub fn invalid_token_message(&self, headers: &HeaderMap) -> &'static str {
        self.sources
            .iter()
            .find_map(|s| match s {
                Source::Jwt(j) => j.malformed(headers),
                _ => None,
            })
            .unwrap_or("the bearer token failed verification")
    }

    /// For a request [`Identify::identify_for`] judged `found`: when it refused it as
    /// [`Reason::InvalidToken`] and its token names a key (`kid`) that no `jwt` source has,
    /// perhaps one its issuer has just rotated in, the wait for the early JWKS reads under way
    /// for it (each source asks for one, at most one per interval: `jwt/early.rs`), bounded
    /// and never past `deadline`. The caller awaits it when [`Rejudge::is_due`] and, if the
    /// keys changed, identifies the request again; otherwise the refusal stands. Looks at
    /// nothing unless the request was refused so.
    pub fn unknown_key(
        &self,
        found: &Result<TenantId, Reason>,
        headers: &HeaderMap,
        deadline: Option<tokio::time::Instant>,
    ) -> Rejudge {
        if !matches!(found, Err(Reason::InvalidToken)) {
            return Rejudge::none();
        }
        let mut reread = Reread::default();
        for source in &self.sources {
            if let Source::Jwt(j) = source {
                j.unknown_key(headers, &mut reread);
            }
        }
        Rejudge::new(reread, deadline)
    }

    /// The first source's tenant, `None` when no source names one.
    fn find(
        &self,
        headers: &HeaderMap,
        uri: &Uri,
        conn: Conn<'_>,
    ) -> Result<Option<TenantId>, Reason> {
        let cert = conn.cert;
        // A token the first `jwt` source refused, or could not judge yet (its keys not yet
        // loaded): the later `jwt` sources may verify it (two issuers on one header); the
        // other sources never stand in for a bad token. Unjudged outranks refused.
        let mut refused: Option<Reason> = None;
        for source in &self.sources {
            if refused.is_some() && !matches!(source, Source::Jwt(_)) {
                continue;
            }
            match source {
                Source::ClientIp {
                    from: ClientIpFrom::Peer,
                    v6_bits,
                    ..
                } => match conn.addr {
                    // The connection's own text, shared: no allocation a request.
                    Some(IpAddr::V6(v6)) if *v6_bits < 128 => {
                        return Ok(Some(TenantId::Ip(ip_text(IpAddr::V6(v6), *v6_bits))));
                    }
                    _ => {
                        if let Some(ip) = conn.ip {
                            return Ok(Some(TenantId::Ip(ip.clone())));
                        }
                    }
                },
                Source::ClientIp {
                    from: ClientIpFrom::XForwardedFor,
                    hops,
                    v6_bits,
                } => {
                    if let Some(ip) = forwarded_ip(headers, *hops) {
                        return Ok(Some(TenantId::Ip(ip_text(ip, *v6_bits))));
                    }
                }
                Source::Jwt(j) => match j.check(headers) {
                    Some(Err(r @ (Reason::InvalidToken | Reason::JwksUnavailable)))
                        if refused != Some(Reason::JwksUnavailable) =>
                    {
                        refused = Some(r);
                    }
                    Some(Err(Reason::InvalidToken | Reason::JwksUnavailable)) => {}
                    Some(v) => return v.map(|v| Some(TenantId::Jwt(v))),
                    None => {}
                },
                Source::Header(name) => {
                    if let (Some(v), more) = named(headers, name) {
                        if more {
                            // Two tenants named: charging either would be a guess.
                            return Err(Reason::InvalidTenant);
                        }
                        if v.is_empty() {
                            continue;
                        }
                        return if is_valid_id(v.as_bytes()) {
                            Ok(Some(TenantId::Header(v.clone())))
                        } else {
                            Err(Reason::InvalidTenant)
                        };
                    }
                }
                Source::Cert(field) => {
                    let id = cert.and_then(|c| match field {
                        ClientCertField::Cn => c.cn.as_ref(),
                        ClientCertField::UriSan => c.uri_san.as_ref(),
                    });
                    if let Some(id) = id {
                        return if crate::tls::is_valid_cert_tenant(id) {
                            Ok(Some(TenantId::Cert(id.clone())))
                        } else {
                            Err(Reason::InvalidTenant)
                        };
                    }
                }
                Source::Query(key) => {
                    if let Some(v) = query_param(uri, key)? {
                        return if is_valid_id(v.as_bytes()) {
                            Ok(Some(TenantId::Query(Arc::from(v))))
                        } else {
                            Err(Reason::InvalidTenant)
                        };
                    }
                }
            }
        }
        match refused {
            Some(r) => Err(r),
            None => Ok(None),
        }
    }
}

/// The names read by the `header` sources among `sources`, which [`Identify::vouch`] sets to a
/// verified tenant: none without a `jwt` source, each once, and never the header a `jwt` source reads
/// its token from (the upstream may need the token itself).
fn vouched(sources: &[Source]) -> Box<[HeaderName]> {
    let tokens: Vec<&HeaderName> = sources
        .iter()
        .filter_map(|s| match s {
            Source::Jwt(j) => Some(j.header()),
            _ => None,
        })
        .collect();
    if tokens.is_empty() {
        return Box::default();
    }
    let mut names: Vec<HeaderName> = Vec::new();
    for s in sources {
        if let Source::Header(n) = s {
            if !tokens.contains(&n) && !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    names.into_boxed_slice()
}

/// What a request's connection says about who sent it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Conn<'a> {
    /// What its verified client certificate says, if it has one.
    pub cert: Option<&'a CertIds>,
    /// The peer's IP address as text (made once per connection; IPv4 dotted, IPv6 as Rust
    /// writes it, an IPv4-mapped one as IPv4).
    pub ip: Option<&'a HeaderValue>,
    /// The same address (canonical: an IPv4-mapped one as IPv4).
    pub addr: Option<IpAddr>,
}

/// The client's address as a proxy in front forwarded it: the entry `hops` from the end of
/// `x-forwarded-for` (its lines read as one list, as each proxy appends), if it is an IP
/// address (canonical: `::ffff:1.2.3.4` is `1.2.3.4`; a zone, a port or a name is not one).
/// Fewer entries than `hops`, or anything else there, names no one.
fn forwarded_ip(headers: &HeaderMap, hops: usize) -> Option<IpAddr> {
    let entry = headers
        .get_all(crate::proxy::forward::X_FORWARDED_FOR)
        .iter()
        .rev()
        .flat_map(|line| line.to_str().unwrap_or("").rsplit(','))
        .nth(hops.checked_sub(1)?)?;
    entry
        .trim()
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical())
}

/// `ip` as a tenant id: an IPv6 address cut to its first `v6_bits` bits (the rest zero),
/// written as `x-forwarded-for` writes addresses (within the id's character set: digits,
/// letters, `.` and `:`).
fn ip_text(ip: IpAddr, v6_bits: u8) -> HeaderValue {
    let ip = match ip {
        IpAddr::V6(v6) if v6_bits < 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(v6_bits)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        ip => ip,
    };
    crate::proxy::forward::ip_text(ip)
}

/// The value of the query parameter `key`, percent-decoded (`?tenant=a%40b` names `a@b`), if
/// it is given and not empty. Given twice, two tenants are named and charging either would be a
/// guess, as with a repeated header: refused, as is a value that decodes to no UTF-8. Names are
/// compared decoded too, as the service's framework reads them: `ten%61nt` is `tenant`.
fn query_param<'a>(uri: &'a Uri, key: &str) -> Result<Option<Cow<'a, str>>, Reason> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    let mut found = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let named = k == key
            || (k.contains('%')
                && percent_encoding::percent_decode_str(k)
                    .decode_utf8()
                    .is_ok_and(|k| k == key));
        if !named || v.is_empty() {
            continue;
        }
        if found.replace(v).is_some() {
            return Err(Reason::InvalidTenant);
        }
    }
    found
        .map(|v| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| Reason::InvalidTenant)
        })
        .transpose()
}

// === impl Labels ===

impl Labels {
    /// A label table giving at most `cap` tenants their own label.
    pub fn new(cap: usize) -> Self {
        Labels {
            cap: AtomicUsize::new(cap),
            counted: AtomicUsize::new(0),
            given: DashMap::default(),
            pinned: ArcSwap::default(),
            other: Arc::from(OTHER_LABEL),
        }
    }

    /// Changes the cap (on reload); labels already given stay.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// Pins `tenants` (those the policy names, on every load): each always gets its own label.
    pub fn pin<'a>(&self, tenants: impl IntoIterator<Item = &'a str>) {
        self.pinned
            .store(Arc::new(tenants.into_iter().map(Box::from).collect()));
    }

    /// Whether `label` (from [`label`](Self::label)) is the series shared by tenants past the
    /// cap (no tenant is named `_other`: [`is_valid_id`] refuses it).
    pub fn is_other(&self, label: &str) -> bool {
        label == &*self.other
    }

    /// The metric label of `tenant`: its own id while under the cap or pinned, else `_other`.
    pub fn label(&self, tenant: &str) -> Arc<str> {
        if let Some(l) = self.given.get(tenant) {
            return l.clone();
        }
        let place = self.take_place(tenant);
        self.give(tenant, place)
    }

    /// First step for a tenant without a label: takes a place for its own label, if the cap
    /// leaves one (a pinned tenant needs none). The place is counted here, by one
    /// compare-and-swap, before the label is inserted: two workers meeting new tenants at
    /// the cap at once cannot both see the last place free.
    fn take_place(&self, tenant: &str) -> Place {
        if self.pinned.load().contains(tenant) {
            return Place::Pinned;
        }
        let cap = self.cap.load(Ordering::Relaxed);
        let took = self
            .counted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            });
        if took.is_ok() {
            Place::Counted
        } else {
            Place::None
        }
    }

    /// Second step: the label `place` allows. A place taken for a tenant another worker has
    /// labelled meanwhile is given back.
    fn give(&self, tenant: &str, place: Place) -> Arc<str> {
        if place == Place::None {
            return self.other.clone();
        }
        match self.given.entry(Box::from(tenant)) {
            Entry::Occupied(e) => {
                if place == Place::Counted {
                    self.counted.fetch_sub(1, Ordering::AcqRel);
                }
                e.get().clone()
            }
            Entry::Vacant(e) => e.insert(Arc::from(tenant)).clone(),
        }
    }
}

/// What [`Labels::take_place`] found for a new tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Pinned: its own label, outside the cap.
    Pinned,
    /// One of the `metrics_labels` places.
    Counted,
    /// No place left: `_other`.
    None,
}

/// Heads with at most this many distinct names are searched name by name (see [`named`]).
const SCAN_NAMES: usize = 8;

/// The first line named `name` in `headers`, and whether there is another. Most requests
/// carry no tenant header at all, and this lookup is on every request's path: in a short head,
/// a name that is not there is found missing by comparing it with each name, which costs less
/// than hashing it; a name that is there, and any name in a longer head, is looked up by hash.
pub(crate) fn named<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> (Option<&'a HeaderValue>, bool) {
    if headers.keys_len() <= SCAN_NAMES && !headers.keys().any(|n| n == name) {
        return (None, false);
    }
    let mut all = headers.get_all(name).iter();
    (all.next(), all.next().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rules that read `x-tenant-id`, then `then`, else `fallback`.
    fn header_then(then: TenantSource, fallback: &str) -> Identify {
        Identify::new(
            &Tenants {
                from: vec![
                    TenantSource {
                        header: Some("x-tenant-id".into()),
                        ..TenantSource::default()
                    },
                    then,
                ],
                fallback: fallback.into(),
                max_tracked: 10,
                metrics_labels: 2,
                plans: None,
            },
            &BTreeSet::new(),
        )
    }

    fn rules(fallback: &str) -> Identify {
        let query = TenantSource {
            query: Some("tenant".into()),
            ..TenantSource::default()
        };
        header_then(query, fallback)
    }

    /// A refused id's message says what is wrong with it: a reserved one that it is reserved, a
    /// certificate's the certificate rule, any other the header and query rule.
    #[test]
    fn an_invalid_tenants_message_names_its_fault() {
        let uri: Uri = "/?tenant=-".parse().expect("uri");
        let bare: Uri = "/".parse().expect("uri");
        let r = rules("anonymous");
        let said = |h: &HeaderMap, u: &Uri| r.invalid_message(h, u, Conn::default());
        assert_eq!(said(&headers("_other"), &bare), RESERVED_OTHER);
        assert_eq!(said(&HeaderMap::new(), &uri), RESERVED_NONE);
        assert_eq!(said(&headers("a b"), &uri), INVALID_ID, "the header first");
        let cert = TenantSource {
            client_cert: Some(ClientCertField::Cn),
            ..TenantSource::default()
        };
        let r = header_then(cert, "anonymous");
        let ids = |cn: &str| CertIds {
            cn: Some(Arc::from(cn)),
            uri_san: None,
        };
        for (cn, want) in [
            (" a b", INVALID_CERT_ID),
            ("a b ", INVALID_CERT_ID),
            ("-", RESERVED_NONE),
            ("_other", RESERVED_OTHER),
        ] {
            let ids = ids(cn);
            let conn = Conn {
                cert: Some(&ids),
                ..Conn::default()
            };
            let h = HeaderMap::new();
            assert_eq!(
                r.identify(&h, &bare, conn).err(),
                Some(Reason::InvalidTenant),
                "{cn}"
            );
            assert_eq!(r.invalid_message(&h, &bare, conn), want, "{cn}");
        }
    }

    /// The fallback's name, claimed by a header, is refused with its own message: it would join
    /// the unidentified traffic's bucket and label.
    #[test]
    fn the_fallbacks_name_cannot_be_claimed() {
        let bare: Uri = "/".parse().expect("uri");
        let r = rules("anonymous");
        let h = headers("anonymous");
        assert_eq!(
            r.identify(&h, &bare, Conn::default()).err(),
            Some(Reason::InvalidTenant)
        );
        assert_eq!(
            r.invalid_message(&h, &bare, Conn::default()),
            RESERVED_FALLBACK
        );
        let none = r.identify(&HeaderMap::new(), &bare, Conn::default());
        assert_eq!(none.expect("the fallback").as_str(), "anonymous");
        assert!(r.identify(&headers("acme"), &bare, Conn::default()).is_ok());
    }

    /// `named` answers alike whether it compares the names of a short head or looks the name
    /// up by hash (a long head).
    #[test]
    fn a_named_line_is_found_alike_in_short_and_long_heads() {
        let name = HeaderName::from_static("x-tenant-id");
        for extra in [0, 3, SCAN_NAMES, SCAN_NAMES + 5] {
            let mut h = HeaderMap::new();
            for i in 0..extra {
                h.append(
                    HeaderName::from_bytes(format!("x-other-{i}").as_bytes()).expect("a name"),
                    HeaderValue::from_static("v"),
                );
            }
            assert_eq!(named(&h, &name), (None, false), "{extra} other names");
            h.append(name.clone(), HeaderValue::from_static("acme"));
            h.append("x-last", HeaderValue::from_static("z"));
            assert_eq!(
                named(&h, &name),
                (Some(&HeaderValue::from_static("acme")), false),
                "{extra} other names"
            );
            h.append(name.clone(), HeaderValue::from_static("globex"));
            assert_eq!(
                named(&h, &name),
                (Some(&HeaderValue::from_static("acme")), true),
                "{extra} other names"
            );
        }
    }

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-tenant-id",
            HeaderValue::from_str(v).expect("test header must be valid"),
        );
        h
    }

    #[test]
    fn first_source_wins_then_fallback() {
        let r = rules("anonymous");
        let uri: Uri = "/x?tenant=q1".parse().expect("uri");
        assert_eq!(
            r.identify(&headers("acme"), &uri, Conn::default())
                .expect("header")
                .as_str(),
            "acme"
        );
        assert_eq!(
            r.identify(&HeaderMap::new(), &uri, Conn::default())
                .expect("query")
                .as_str(),
            "q1"
        );
        let bare: Uri = "/x".parse().expect("uri");
        assert_eq!(
            r.identify(&HeaderMap::new(), &bare, Conn::default())
                .expect("fallback")
                .as_str(),
            "anonymous"
        );
    }

    /// A query id is percent-decoded, as a URL carries it; naming two tenants is refused, as a
    /// repeated header is.
    #[test]
    fn query_ids_are_decoded_and_a_repeated_one_is_refused() {
        let r = rules("anonymous");
        let id = |q: &str| {
            let uri: Uri = format!("/x?{q}").parse().expect("uri");
            r.identify(&HeaderMap::new(), &uri, Conn::default())
                .map(|t| t.as_str().to_owned())
        };
        assert_eq!(id("tenant=a%40b").as_deref(), Ok("a@b"));
        assert_eq!(id("x=1&tenant=acme&y=2").as_deref(), Ok("acme"));
        assert_eq!(id("tenant=&other=1").as_deref(), Ok("anonymous"));
        assert_eq!(id("ten%61nt=acme").as_deref(), Ok("acme"));
        for bad in [
            "tenant=a&tenant=b",
            "tenant=a&tenant=a",
            "ten%61nt=victim&tenant=attacker",
            "tenant=a%20b",
            "tenant=%ff",
            "tenant=a%2",
            "tenant=_other",
        ] {
            assert_eq!(id(bad), Err(Reason::InvalidTenant), "{bad}");
        }
    }

    #[test]
    fn reject_and_invalid() {
        let r = rules("reject");
        let bare: Uri = "/".parse().expect("uri");
        assert_eq!(
            r.identify(&HeaderMap::new(), &bare, Conn::default())
                .unwrap_err(),
            Reason::TenantRequired
        );
        let long = "a".repeat(129);
        assert_eq!(
            r.identify(&headers(&long), &bare, Conn::default())
                .unwrap_err(),
            Reason::InvalidTenant
        );
        assert_eq!(
            r.identify(&headers("a b"), &bare, Conn::default())
                .unwrap_err(),
            Reason::InvalidTenant
        );
        assert_eq!(
            r.identify(&headers("a/b"), &bare, Conn::default())
                .unwrap_err(),
            Reason::InvalidTenant
        );
        // The label of the folded tenants: a client naming it would be counted as them.
        assert_eq!(
            r.identify(&headers(OTHER_LABEL), &bare, Conn::default())
                .unwrap_err(),
            Reason::InvalidTenant
        );
        assert!(r
            .identify(&headers("_Other"), &bare, Conn::default())
            .is_ok());
        let ok = "a".repeat(128);
        assert!(r.identify(&headers(&ok), &bare, Conn::default()).is_ok());
        assert!(r
            .identify(&headers("user@acme.io:eu-1_x"), &bare, Conn::default())
            .is_ok());
    }

    #[test]
    fn a_repeated_tenant_header_is_refused() {
        let mut h = headers("acme");
        h.append("x-tenant-id", HeaderValue::from_static("globex"));
        let uri: Uri = "/".parse().expect("uri");
        assert_eq!(
            rules("anonymous")
                .identify(&h, &uri, Conn::default())
                .unwrap_err(),
            Reason::InvalidTenant
        );
    }

    #[test]
    fn labels_fold_past_the_cap() {
        let l = Labels::new(2);
        assert_eq!(&*l.label("a"), "a");
        assert_eq!(&*l.label("b"), "b");
        assert_eq!(&*l.label("c"), OTHER_LABEL);
        assert_eq!(&*l.label("a"), "a");
    }

    /// Two workers each meet a new tenant with one place left, and both take their first
    /// step before either inserts: only one may get its own label.
    #[test]
    fn a_new_label_holds_its_place_before_it_is_inserted() {
        let l = Labels::new(1);
        let (a, b) = (l.take_place("a"), l.take_place("b"));
        let given = [l.give("a", a), l.give("b", b)];
        let own = given.iter().filter(|g| ***g != *OTHER_LABEL).count();
        assert_eq!(own, 1, "one place, one own label: {given:?}");
        assert_eq!(&*l.label("c"), OTHER_LABEL);
        // The same new tenant twice at once: the second place is given back.
        let l = Labels::new(2);
        let (x1, x2) = (l.take_place("x"), l.take_place("x"));
        assert_eq!((&*l.give("x", x1), &*l.give("x", x2)), ("x", "x"));
        assert_eq!(&*l.label("y"), "y", "x holds one place, not two");
        assert_eq!(&*l.label("z"), OTHER_LABEL);
    }

    /// Workers racing new tenants at the boundary never give more own labels than the cap.
    #[test]
    fn racing_workers_never_overshoot_the_label_cap() {
        const CAP: usize = 2;
        const WORKERS: usize = 8;
        for round in 0..200 {
            let l = Labels::new(CAP);
            let start = std::sync::Barrier::new(WORKERS);
            std::thread::scope(|s| {
                for w in 0..WORKERS {
                    let (l, start) = (&l, &start);
                    s.spawn(move || {
                        start.wait();
                        for i in 0..4 {
                            let _ = l.label(&format!("t{w}-{i}"));
                        }
                    });
                }
            });
            let own = l.given.len();
            assert!(own <= CAP, "round {round}: {own} own labels, cap {CAP}");
            assert_eq!(l.counted.load(Ordering::Relaxed), own, "round {round}");
        }
    }

    #[test]
    fn pinned_tenants_keep_their_label_past_the_cap_and_take_no_place() {
        let l = Labels::new(1);
        l.pin(["vip"]);
        assert_eq!(&*l.label("a"), "a");
        assert_eq!(&*l.label("b"), OTHER_LABEL);
        assert_eq!(
            &*l.label("vip"),
            "vip",
            "pinned: its own label past the cap"
        );
        let l = Labels::new(1);
        l.pin(["vip"]);
        assert_eq!(&*l.label("vip"), "vip");
        assert_eq!(
            &*l.label("a"),
            "a",
            "a pinned label takes no place under the cap"
        );
        assert_eq!(&*l.label("b"), OTHER_LABEL);
    }

    /// The `header` sources of [`with_token`]'s usual rules: a name twice, and the token's own.
    const HEADERS: &[&str] = &["x-tenant-id", "x-org", "x-tenant-id", "authorization"];

    /// Rules with a `jwt` source (its keys are never read: the tests make its verdicts by
    /// hand), then a `header` source for each of `headers`; with `plan_header: x-tenant-plan`
    /// when `plan_header`.
    fn with_token(headers: &[&str], plan_header: bool) -> Identify {
        let header = |h: &str| TenantSource {
            header: Some(h.into()),
            ..TenantSource::default()
        };
        let jwt = TenantSource {
            jwt: Some(crate::config::file::JwtSource {
                header: "authorization".into(),
                claim: "tenant".into(),
                jwks: "/nonexistent/jwks.json".into(),
                jwks_refresh: crate::config::units::Dur::from_secs(60),
                issuers: Vec::new(),
                audiences: Vec::new(),
                jwks_ca: None,
                plan_claim: Some("plan".into()),
            }),
            ..TenantSource::default()
        };
        Identify::new(
            &Tenants {
                from: std::iter::once(jwt)
                    .chain(headers.iter().map(|h| header(h)))
                    .collect(),
                fallback: "anonymous".into(),
                max_tracked: 10,
                metrics_labels: 2,
                plans: plan_header.then(|| crate::config::file::TenantPlans {
                    plan_header: Some("x-tenant-plan".into()),
                    assign: Default::default(),
                }),
            },
            &BTreeSet::new(),
        )
    }

    /// What a token verified for `tenant` (with `plan`) names.
    fn verified(tenant: &str, plan: Option<&str>) -> TenantId {
        TenantId::Jwt(Arc::new(Verified::new(tenant, plan)))
    }

    /// A request's header map holding `lines`, in order.
    fn sent(lines: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in lines {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).expect("a name"),
                HeaderValue::from_str(v).expect("a value"),
            );
        }
        h
    }

    /// [`Identify::vouch`] on `h`, told whether a name in it has `_` as the lean server tells
    /// it (`forward::Sent`).
    fn vouch<'a>(r: &'a Identify, t: &TenantId, h: &mut HeaderMap, trust: bool) -> &'a Written {
        let any_underscore = crate::proxy::forward::Sent::of(h).any_underscore;
        r.vouch(t, h, trust, any_underscore)
    }

    /// The values of `name` in `h`, in order.
    fn lines<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().expect("text"))
            .collect()
    }

    /// A tenant a token named is what each `header` source's name says upstream: one line,
    /// the client's own gone; the token's own header is left as sent. A tenant the header
    /// named passes as sent.
    #[test]
    fn a_verified_tenant_replaces_the_header_sources_lines() {
        let r = with_token(HEADERS, false);
        assert_eq!(
            &*r.vouched,
            ["x-tenant-id", "x-org"],
            "each once, no token header"
        );
        let mut h = sent(&[
            ("x-tenant-id", "mallory"),
            ("authorization", "Bearer t"),
            ("x-tenant-id", "eve"),
            ("x-other", "1"),
        ]);
        vouch(&r, &verified("acme", None), &mut h, false);
        assert_eq!(lines(&h, "x-tenant-id"), ["acme"]);
        assert_eq!(
            lines(&h, "x-org"),
            ["acme"],
            "set where the client sent none"
        );
        assert_eq!(lines(&h, "authorization"), ["Bearer t"]);
        assert_eq!(lines(&h, "x-other"), ["1"]);

        let uri: Uri = "/".parse().expect("uri");
        let mut h = sent(&[("x-tenant-id", "mallory"), ("x-org", "other")]);
        let t = r.identify(&h, &uri, Conn::default()).expect("a tenant");
        assert!(matches!(t, TenantId::Header(_)), "{t:?}");
        let before = h.clone();
        vouch(&r, &t, &mut h, false);
        assert_eq!(h, before);
    }

    /// The plan header says the plan a token claimed (on any listener); else it passes only
    /// where the listener trusts it, and goes where it does not.
    #[test]
    fn the_plan_header_says_the_claimed_plan_or_only_what_was_trusted() {
        let r = with_token(HEADERS, true);
        let header_tenant = TenantId::Header(HeaderValue::from_static("hooli"));
        let plan_of = |t: &TenantId, client: &[&str], trust: bool| {
            let mut h = sent(
                &client
                    .iter()
                    .map(|p| ("x-tenant-plan", *p))
                    .collect::<Vec<_>>(),
            );
            vouch(&r, t, &mut h, trust);
            lines(&h, "x-tenant-plan")
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        // A header's tenant, or a token without a plan claim: trusted or gone.
        for t in [&header_tenant, &verified("acme", None)] {
            assert_eq!(plan_of(t, &["pro", "gold"], true), ["pro", "gold"], "{t:?}");
            assert!(plan_of(t, &["pro", "gold"], false).is_empty(), "{t:?}");
            assert!(plan_of(t, &[], false).is_empty(), "{t:?}");
        }
        // A claimed plan: that plan, whatever the client sent and wherever.
        let claimed = verified("acme", Some("enterprise"));
        for trust in [true, false] {
            assert_eq!(plan_of(&claimed, &["pro", "gold"], trust), ["enterprise"]);
            assert_eq!(plan_of(&claimed, &[], trust), ["enterprise"]);
        }
        // A claimed plan no header line can hold: the client's line goes all the same.
        let odd = verified(
            "acme",
            Some(
                "pro
x-evil: 1",
            ),
        );
        assert!(plan_of(&odd, &["gold"], true).is_empty());
    }

    /// The spellings with `_` of a rewritten name go (`x_tenant-id`, `x-tenant_plan`), and
    /// those with `-` of a rewritten name spelled with `_` (`x-org` for a source `x_org`):
    /// `vouch` skips its walk of the names only for a head without `_` in them, and only when
    /// the rewritten names have none either.
    #[test]
    fn a_rewritten_names_spellings_go_whichever_way_they_fold() {
        let r = with_token(&["x-tenant-id"], true);
        let t = verified("acme", Some("gold"));
        let mut h = sent(&[
            ("x_tenant-id", "mallory"),
            ("x-tenant_plan", "pro"),
            ("x-other", "1"),
        ]);
        vouch(&r, &t, &mut h, true);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-other", "x-tenant-id", "x-tenant-plan"]);

        // A source named with `_`: its spelling with `-` has no `_` for the head to show.
        let r = with_token(&["x_org"], false);
        let mut h = sent(&[("x-org", "mallory"), ("x-other", "1")]);
        assert!(!crate::proxy::forward::Sent::of(&h).any_underscore);
        vouch(&r, &verified("acme", None), &mut h, false);
        assert_eq!(lines(&h, "x_org"), ["acme"]);
        assert!(h.get("x-org").is_none(), "{h:?}");
    }

    /// `vouch` names the lines it wrote, for the hop-by-hop removal to spare: the header
    /// sources' names beside a verified tenant, and the plan header when it holds the token's
    /// plan; nothing when the client's lines were left or only removed.
    #[test]
    fn vouch_names_the_lines_it_wrote() {
        fn names(r: &Identify, t: &TenantId, trust: bool) -> Vec<String> {
            let mut h = sent(&[("x-tenant-plan", "pro")]);
            let spare = vouch(r, t, &mut h, trust);
            spare
                .names()
                .iter()
                .map(|n| n.as_str().to_owned())
                .collect()
        }
        let header_tenant = TenantId::Header(HeaderValue::from_static("hooli"));
        for plan_header in [true, false] {
            let r = with_token(HEADERS, plan_header);
            for trust in [true, false] {
                let t = verified("acme", None);
                assert_eq!(names(&r, &t, trust), ["x-tenant-id", "x-org"]);
                assert!(names(&r, &header_tenant, trust).is_empty());
            }
            let t = verified("acme", Some("gold"));
            let mut want = vec!["x-tenant-id", "x-org"];
            want.extend(plan_header.then_some("x-tenant-plan"));
            assert_eq!(names(&r, &t, false), want);
        }
        let plan_only = with_token(&[], true);
        assert_eq!(
            names(&plan_only, &verified("acme", Some("gold")), true),
            ["x-tenant-plan"]
        );
        assert!(names(&plan_only, &verified("acme", None), true).is_empty());
        assert!(names(&rules("anonymous"), &verified("acme", Some("gold")), true).is_empty());
    }

    /// Without a `jwt` source beside a `header` source, and without a `plan_header`, there is
    /// nothing to do: one flag says so, and no map is touched.
    #[test]
    fn nothing_is_rewritten_without_a_token_source_or_a_plan_header() {
        let plain = rules("anonymous");
        assert!(!plain.rewrites);
        let mut h = sent(&[("x-tenant-id", "mallory"), ("x-tenant-plan", "pro")]);
        let before = h.clone();
        for t in [
            TenantId::Header(HeaderValue::from_static("mallory")),
            verified("acme", Some("pro")),
        ] {
            vouch(&plain, &t, &mut h, false);
            assert_eq!(h, before);
        }
        // A token source alone, or with only its own header as a `header` source.
        assert!(!with_token(&[], false).rewrites);
        assert!(!with_token(&["authorization"], false).rewrites);
        assert!(with_token(&[], true).rewrites);
        assert!(with_token(HEADERS, false).rewrites);
    }

    /// A trusted plan header names a plan only when its value is, byte for byte, one some
    /// policy gives limits to; any other value names none and the plan comes from `assign`
    /// (then none), as for a token's `plan_claim`. An untrusted one is never read. Before, any
    /// text in a trusted header was the plan, and a plan no policy has meant the default limits.
    #[test]
    fn a_trusted_plan_header_names_only_a_configured_plan() {
        let r = Identify::new(
            &Tenants {
                from: vec![TenantSource {
                    header: Some("x-tenant-id".into()),
                    ..TenantSource::default()
                }],
                fallback: "anonymous".into(),
                max_tracked: 10,
                metrics_labels: 2,
                plans: Some(crate::config::file::TenantPlans {
                    plan_header: Some("x-tenant-plan".into()),
                    assign: [("gold".to_owned(), vec!["initech".to_owned()])].into(),
                }),
            },
            &BTreeSet::from(["pro", "gold", "a"]),
        );
        let plan = |tenant: &str, line: Option<&str>, trust: bool| {
            let t = TenantId::Header(HeaderValue::from_str(tenant).expect("a value"));
            let h = sent(
                &line
                    .map(|p| ("x-tenant-plan", p))
                    .into_iter()
                    .collect::<Vec<_>>(),
            );
            r.plan(&t, &h, trust).map(str::to_owned)
        };
        for known in ["pro", "gold", "a"] {
            assert_eq!(plan("hooli", Some(known), true).as_deref(), Some(known));
            assert_eq!(plan("initech", Some(known), true).as_deref(), Some(known));
        }
        for unknown in ["platinum", "Pro", " pro", "pro ", "", "gol", "golden", "b"] {
            assert_eq!(plan("hooli", Some(unknown), true), None, "{unknown:?}");
            assert_eq!(
                plan("initech", Some(unknown), true).as_deref(),
                Some("gold"),
                "{unknown:?}: assign's"
            );
        }
        // Two lines that disagree name no plan; the same plan twice names it.
        let t = TenantId::Header(HeaderValue::from_static("initech"));
        let h = sent(&[("x-tenant-plan", "pro"), ("x-tenant-plan", "a")]);
        assert_eq!(r.plan(&t, &h, true), Some("gold"), "assign's");
        let h = sent(&[("x-tenant-plan", "pro"), ("x-tenant-plan", "pro")]);
        assert_eq!(r.plan(&t, &h, true), Some("pro"));
        // Many in a row: each falls through alike (the warning is said once per period).
        for _ in 0..100 {
            assert_eq!(plan("hooli", Some("platinum"), true), None);
        }
        assert_eq!(plan("hooli", Some("pro"), false), None, "untrusted");
        assert_eq!(plan("initech", Some("pro"), false).as_deref(), Some("gold"));
        assert_eq!(plan("initech", None, true).as_deref(), Some("gold"));
        // A token's tenant without a plan claim: the same rule.
        let t = verified("acme", None);
        let h = sent(&[("x-tenant-plan", "platinum")]);
        assert_eq!(r.plan(&t, &h, true), None);
        let h = sent(&[("x-tenant-plan", "pro")]);
        assert_eq!(r.plan(&t, &h, true), Some("pro"));
    }

    /// Rules that read the tenant from `x-tenant-id`, else from `client_ip` as given.
    fn by_ip(ip: ClientIp) -> Identify {
        let source = TenantSource {
            client_ip: Some(ip),
            ..TenantSource::default()
        };
        header_then(source, "anonymous")
    }

    fn ip_of(from: ClientIpFrom, hops: Option<u8>, v6: Option<u8>) -> ClientIp {
        ClientIp {
            from,
            trusted_hops: hops,
            ipv6_prefix: v6,
        }
    }

    /// `client_ip: peer`: the peer's address as the connection gives it (an IPv6 one cut to
    /// `ipv6_prefix`); a source before it still wins; no address names no one.
    #[test]
    fn client_ip_peer_names_the_connections_address() {
        let uri: Uri = "/".parse().expect("uri");
        let id = |r: &Identify, h: &HeaderMap, c: Conn<'_>| {
            r.identify(h, &uri, c).map(|t| t.as_str().to_owned())
        };
        let v4 = HeaderValue::from_static("192.0.2.1");
        let v4_conn = Conn {
            cert: None,
            ip: Some(&v4),
            addr: Some("192.0.2.1".parse().expect("ip")),
        };
        let v6 = HeaderValue::from_static("2001:db8:1:2:3:4:5:6");
        let v6_conn = Conn {
            cert: None,
            ip: Some(&v6),
            addr: Some("2001:db8:1:2:3:4:5:6".parse().expect("ip")),
        };
        let whole = by_ip(ip_of(ClientIpFrom::Peer, None, None));
        assert_eq!(
            id(&whole, &HeaderMap::new(), v4_conn).as_deref(),
            Ok("192.0.2.1")
        );
        assert_eq!(id(&whole, &headers("acme"), v4_conn).as_deref(), Ok("acme"));
        assert_eq!(
            id(&whole, &HeaderMap::new(), v6_conn).as_deref(),
            Ok("2001:db8:1:2:3:4:5:6")
        );
        assert_eq!(
            id(&whole, &HeaderMap::new(), Conn::default()).as_deref(),
            Ok("anonymous")
        );
        let by_64 = by_ip(ip_of(ClientIpFrom::Peer, None, Some(64)));
        assert_eq!(
            id(&by_64, &HeaderMap::new(), v6_conn).as_deref(),
            Ok("2001:db8:1:2::")
        );
        assert_eq!(
            id(&by_64, &HeaderMap::new(), v4_conn).as_deref(),
            Ok("192.0.2.1")
        );
        let by_1 = by_ip(ip_of(ClientIpFrom::Peer, None, Some(1)));
        assert_eq!(id(&by_1, &HeaderMap::new(), v6_conn).as_deref(), Ok("::"));
    }

    /// `client_ip: x-forwarded-for`: the entry `trusted_hops` from the end of the header (its
    /// lines as one list), when it is an address (written canonically, an IPv6 one cut to
    /// `ipv6_prefix`); anything else names no one, and it is never refused.
    #[test]
    fn client_ip_forwarded_names_the_entry_the_trusted_proxies_wrote() {
        let uri: Uri = "/".parse().expect("uri");
        let forwarded = |r: &Identify, lines: &[&str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append("x-forwarded-for", HeaderValue::from_str(l).expect("value"));
            }
            let t = r
                .identify(&h, &uri, Conn::default())
                .expect("never refused");
            assert!(
                matches!(t, TenantId::Ip(_) | TenantId::Fallback(_)),
                "{t:?}"
            );
            assert!(t.checked_bytes().is_some_and(is_valid_id) || t.as_str() == "anonymous");
            t.as_str().to_owned()
        };
        let one = by_ip(ip_of(ClientIpFrom::XForwardedFor, None, None));
        assert_eq!(forwarded(&one, &["198.51.100.1"]), "198.51.100.1");
        assert_eq!(
            forwarded(&one, &["203.0.113.5, 198.51.100.1"]),
            "198.51.100.1"
        );
        assert_eq!(
            forwarded(&one, &["203.0.113.5", "10.0.0.1 ,  198.51.100.2 "]),
            "198.51.100.2"
        );
        assert_eq!(forwarded(&one, &["::ffff:198.51.100.3"]), "198.51.100.3");
        assert_eq!(forwarded(&one, &["2001:DB8:0::7"]), "2001:db8::7");
        for none in [
            &[][..],
            &["unknown"],
            &["198.51.100.1:8080"],
            &["fe80::1%eth0"],
            &["198.51.100.1, "],
            &["[2001:db8::1]"],
            &["evil.example"],
        ] {
            assert_eq!(forwarded(&one, none), "anonymous", "{none:?}");
        }
        // Two proxies in front (a CDN, then a balancer): the client is second from the end,
        // whichever line each wrote to.
        let two = by_ip(ip_of(ClientIpFrom::XForwardedFor, Some(2), Some(64)));
        assert_eq!(
            forwarded(&two, &["6.6.6.6, 198.51.100.4, 10.0.0.9"]),
            "198.51.100.4"
        );
        assert_eq!(
            forwarded(&two, &["6.6.6.6, 198.51.100.4", "10.0.0.9"]),
            "198.51.100.4"
        );
        assert_eq!(
            forwarded(&two, &["2001:db8:a:b:c::1, 10.0.0.9"]),
            "2001:db8:a:b::"
        );
        assert_eq!(
            forwarded(&two, &["10.0.0.9"]),
            "anonymous",
            "one entry: no client"
        );
    }
}
