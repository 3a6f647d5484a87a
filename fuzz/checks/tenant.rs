//! Tenant identification on arbitrary header values and query strings: an accepted id is
//! always a valid one, an address read from `x-forwarded-for` is an IP address, and nothing
//! panics.

use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue, Uri};
use rampart::tenant::{configured_plans, is_valid_id, Conn, Identify, TenantId};

const POLICY: &str = r#"
version: 1
tenants:
  from:
    - header: x-tenant-id
    - query: tenant
  fallback: anonymous
upstreams:
  app: { endpoints: [127.0.0.1:10] }
listeners:
  - name: inbound
    direction: inbound
    listen: 127.0.0.1:9
    routes:
      - upstream: app
"#;

fn rules() -> &'static Identify {
    static RULES: OnceLock<Identify> = OnceLock::new();
    RULES.get_or_init(|| {
        let cfg = rampart::config::Config::from_str(POLICY, "fuzz").expect("the policy is valid");
        Identify::new(&cfg.file.tenants, &configured_plans(&cfg.file))
    })
}

/// Rules that read only the address a proxy in front forwarded.
fn forwarded() -> &'static Identify {
    static RULES: OnceLock<Identify> = OnceLock::new();
    RULES.get_or_init(|| {
        let policy = POLICY.replace(
            "    - header: x-tenant-id\n    - query: tenant\n",
            "    - client_ip: x-forwarded-for\n",
        );
        let cfg = rampart::config::Config::from_str(&policy, "fuzz").expect("the policy is valid");
        Identify::new(&cfg.file.tenants, &configured_plans(&cfg.file))
    })
}

/// One input; panics on a finding.
pub fn run(data: &[u8]) {
    let _ = is_valid_id(data);
    // The input is split at the first 0xff: header values (split at `\n` into repeats), then
    // a query string.
    let (head, query) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut headers = HeaderMap::new();
    for v in head.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            headers.append("x-tenant-id", v.clone());
            headers.append("x-forwarded-for", v);
        }
    }
    match forwarded().identify(&headers, &Uri::from_static("/"), Conn::default()) {
        Ok(TenantId::Ip(ip)) => {
            let text = ip.to_str().expect("an address is ASCII");
            assert!(is_valid_id(text.as_bytes()), "accepted {text:?}");
            assert!(
                text.parse::<std::net::IpAddr>().is_ok(),
                "accepted {text:?}"
            );
        }
        Ok(TenantId::Fallback(_)) => {}
        other => panic!("only an address or the fallback: {other:?}"),
    }
    let uri = std::str::from_utf8(query)
        .ok()
        .and_then(|q| format!("/p?{q}").parse::<Uri>().ok())
        .unwrap_or_else(|| Uri::from_static("/"));
    if let Ok(id) = rules().identify(&headers, &uri, Conn::default()) {
        match id {
            TenantId::Fallback(_) => assert_eq!(id.as_str(), "anonymous"),
            _ => assert!(
                is_valid_id(id.as_str().as_bytes()),
                "accepted {:?}",
                id.as_str()
            ),
        }
    }
}
