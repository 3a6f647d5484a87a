//! Keeps a JWKS fresh: a file is read at once and again every `jwks_refresh`; a URL is fetched
//! in the background (through rampart's own rustls client for https), retried with doubling
//! backoff until its first success and after each failure, then every `jwks_refresh`. A token
//! naming a `kid` the keys lack wakes the task for a read before its time (`early.rs`).
//!
//! A failed read or fetch keeps the last good keys: an issuer's outage must not turn into
//! every request refused. The task holds only a weak handle on the keys and ends when the
//! generation that used them is gone.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::early::Early;
use super::keys::{parse_jwks, KeyStore};
use crate::clock::SharedClock;
use crate::config::file::{redact_url_or_path, JwtSource};
use crate::tls::SystemRoots;

/// First retry delay of a failed fetch.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Bound on one fetch (connect, handshake, answer).
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS accepted.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// Whether `jwks` is a URL rather than a file path.
pub fn is_url(jwks: &str) -> bool {
    jwks.starts_with("https://") || jwks.starts_with("http://")
}

/// What validation read for one `jwt` source, for its load's start or reload to serve with
/// (`Config::read`): a JWKS file's bytes, or the TLS client an https JWKS is fetched with (its
/// `jwks_ca` read, or the load's system roots).
#[derive(Clone, Debug)]
pub enum JwksRead {
    /// The bytes of a JWKS file, as validation read and checked them.
    File(Arc<[u8]>),
    /// The client config of an `https://` JWKS.
    Https(Arc<ClientConfig>),
}

/// Whether sources `a` and `b` read their keys the same way (the same `jwks`, `jwks_ca` and
/// `jwks_refresh`): one's keys and refresh task then serve the other. Nothing else of a
/// source has a say in its keys.
pub fn same_key_source(a: &JwtSource, b: &JwtSource) -> bool {
    a.jwks == b.jwks && a.jwks_ca == b.jwks_ca && a.jwks_refresh == b.jwks_refresh
}

/// Creates the key store of `cfg`, starting from the keys `seed` has (a store of the same
/// JWKS that it replaces: its last good keys serve until a read or fetch replaces them),
/// takes a file's keys at once, and starts the refresh task (when a tokio runtime is
/// running; without one, as in `rampart validate`, the keys stay as read). What validation
/// read (`read`) is served as it is; without it (a source built outside a config load), the
/// file is read, or an https URL without `jwks_ca` trusts `system`. Early reads are timed on
/// `clock`.
pub(super) fn start(
    cfg: &JwtSource,
    read: Option<&JwksRead>,
    system: &SystemRoots,
    seed: Option<&KeyStore>,
    clock: SharedClock,
) -> Arc<KeyStore> {
    let store = Arc::new(KeyStore::empty(Early::new(clock, cfg.jwks_refresh.0)));
    if let Some(seed) = seed {
        store.inherit(seed);
    }
    let url = is_url(&cfg.jwks);
    if !url {
        let keys = match read {
            Some(JwksRead::File(bytes)) => parse_jwks(bytes),
            _ => read_file(Path::new(&cfg.jwks)),
        };
        match keys {
            Ok(keys) => store.set(keys),
            Err(e) => {
                tracing::warn!(jwks = %redact_url_or_path(&cfg.jwks), error = %e, "cannot read the JWKS")
            }
        }
    }
    let tls = match (url, cfg.jwks.starts_with("https://"), read) {
        (true, true, Some(JwksRead::Https(c))) => Some(c.clone()),
        (true, true, _) => {
            match crate::tls::client_config(cfg.jwks_ca.as_deref(), None, None, system) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(jwks = %redact_url_or_path(&cfg.jwks), error = %e, "cannot build the JWKS TLS client");
                    return store;
                }
            }
        }
        _ => None,
    };
    store.tls.store(tls);
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let weak = Arc::downgrade(&store);
        let kick = store.early.serve();
        rt.spawn(run(weak, kick, cfg.jwks.clone(), cfg.jwks_refresh.0, url));
    }
    store
}

/// Reads or fetches the JWKS of `store` for as long as it lives; an https one through the
/// TLS client the store holds at each fetch (a reload may replace it). `kick` wakes it for an
/// early read (`early.rs`); it holds no strong handle on the store, so the store's end still
/// ends the task at its next wake.
async fn run(store: Weak<KeyStore>, kick: Arc<Notify>, jwks: String, every: Duration, url: bool) {
    let every = every.max(Duration::from_millis(10));
    let mut backoff = BACKOFF_BASE.min(every);
    let mut wait = if url { Duration::ZERO } else { every };
    loop {
        let due = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(due) => break,
                () = kick.notified() => {
                    // A kick whose read is done already (one that raced the scheduled read)
                    // asks for nothing more.
                    if store.upgrade().is_none_or(|s| s.early.is_asked()) {
                        break;
                    }
                }
            }
        }
        // An early read asked while a scheduled one was under way is not answered by it (it
        // may have been fetched before the issuer's rotation): its kick's permit brings the
        // task straight back here for a read of its own.
        let Some((tls, early)) = store
            .upgrade()
            .map(|s| (s.tls.load_full(), s.early.is_asked()))
        else {
            return;
        };
        if early {
            tracing::debug!(jwks = %redact_url_or_path(&jwks), "a token named a key id (kid) the JWKS lacked: reading it early");
        }
        let got = if url {
            fetch(&jwks, tls).await
        } else {
            read_file(Path::new(&jwks))
        };
        let Some(store) = store.upgrade() else {
            return;
        };
        match got {
            Ok(keys) => {
                store.set(keys);
                backoff = BACKOFF_BASE.min(every);
                wait = every;
            }
            Err(e) => {
                tracing::warn!(jwks = %redact_url_or_path(&jwks), error = %e, "JWKS refresh failed; keeping the last good keys");
                wait = backoff;
                backoff = (backoff * 2).min(every);
            }
        }
        if early {
            store.early.done();
        }
    }
}

/// What a JWKS file holds; read as the TLS files are (at most [`MAX_JWKS_BYTES`], never
/// waited on), as a fetched one is bounded.
fn read_file(path: &Path) -> Result<Vec<super::keys::Key>, String> {
    let bytes = crate::tls::pem::read_capped(path, MAX_JWKS_BYTES as u64, "a JWKS file")
        .map_err(|e| e.to_string())?;
    parse_jwks(&bytes)
}

/// GETs `url` and parses the answer as a JWKS.
async fn fetch(url: &str, tls: Option<Arc<ClientConfig>>) -> Result<Vec<super::keys::Key>, String> {
    let body = tokio::time::timeout(FETCH_TIMEOUT, get(url, tls))
        .await
        .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
    parse_jwks(&body)
}

/// The `host` a GET of `uri` sends: its authority without any userinfo (`user:pw@`), which
/// belongs in no header; `host` when it has none.
fn host_header<'u>(uri: &'u http::Uri, host: &'u str) -> &'u str {
    uri.authority().map_or(host, |a| {
        a.as_str().rsplit_once('@').map_or(a.as_str(), |(_, h)| h)
    })
}

async fn get(url: &str, tls: Option<Arc<ClientConfig>>) -> Result<Bytes, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad url: {e}"))?;
    let host = uri.host().ok_or("the url has no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let authority = host_header(&uri, host).to_owned();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    match tls {
        Some(cfg) => {
            let io = crate::tls::connect(cfg, host, tcp)
                .await
                .map_err(|e| e.to_string())?;
            send(TokioIo::new(io), req).await
        }
        None => send(TokioIo::new(tcp), req).await,
    }
}

async fn send<T>(io: T, req: http::Request<Empty<Bytes>>) -> Result<Bytes, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let rsp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    if !rsp.status().is_success() {
        return Err(format!("answered {}", rsp.status()));
    }
    let body = Limited::new(rsp.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(body.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::host_header;

    /// A JWKS URL's user and password never reach the `host` header (where they would be
    /// sent in clear to the key server's virtual hosting, and logged by it).
    #[test]
    fn the_host_header_of_a_fetch_has_no_userinfo() {
        for (url, host) in [
            ("https://keys.example:8443/jwks.json", "keys.example:8443"),
            ("https://user:pw@keys.example/jwks.json", "keys.example"),
            ("http://u@127.0.0.1:9000/k", "127.0.0.1:9000"),
            ("http://[::1]:9000/k", "[::1]:9000"),
        ] {
            let uri: http::Uri = url.parse().expect("a url");
            let h = uri.host().expect("a host");
            assert_eq!(host_header(&uri, h), host, "{url}");
        }
    }
}
