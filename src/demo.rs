//! `rampart demo`: the shipped demo policy in front of the built-in sample service.
//!
//! Starts two sample endpoints (127.0.0.1:3000 and :3001), runs `config/demo.yaml` (built into
//! the binary, so the command works from any directory), prints what to curl to see each
//! policy act, and runs until Ctrl-C.

use std::path::PathBuf;

use crate::config::Config;
use crate::sample::Sample;

/// The shipped demo policy.
pub const DEMO_YAML: &str = include_str!("../config/demo.yaml");

/// Runs the demo until SIGINT/SIGTERM.
pub async fn run(path: Option<PathBuf>) -> Result<(), String> {
    let config = match &path {
        Some(p) => Config::load(p),
        None => Config::from_str(DEMO_YAML, "config/demo.yaml"),
    }
    .map_err(|e| e.to_string())?;
    let mut samples = Vec::new();
    for port in [3000u16, 3001] {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let s = Sample::start(addr)
            .await
            .map_err(|e| format!("cannot start the sample service on {addr}: {e}"))?;
        samples.push(s);
    }
    let rampart = crate::Rampart::start(config)
        .await
        .map_err(|e| format!("rampart: {e}"))?;
    println!("{}", guide(&rampart).await);
    crate::shutdown::run_until_signalled(rampart, false)
        .await
        .map_err(|e| e.to_string())?;
    drop(samples);
    Ok(())
}

async fn guide(r: &crate::Rampart) -> String {
    let inbound = r
        .listener_addr("inbound")
        .await
        .map(|a| a.to_string())
        .unwrap_or_default();
    let outbound = r
        .listener_addr("outbound")
        .await
        .map(|a| a.to_string())
        .unwrap_or_default();
    let admin = r.admin_addr();
    format!(
        r#"
rampart demo is running: sample service on 127.0.0.1:3000 and :3001, behind rampart.

  plain request (tenant from x-tenant-id, else "anonymous"):
    curl -i http://{inbound}/
  rate limit: tenant "trial" has a burst of 5; the 6th request answers 429 with retry-after
    for i in $(seq 1 7); do curl -s -o /dev/null -w '%{{http_code}}\n' -H 'x-tenant-id: trial' http://{inbound}/; done
  timeout: the upstream takes 3s, the policy allows 1s, rampart answers 504
    curl -i http://{inbound}/slow?ms=3000
  retries: a flaky upstream that fails 50% of the time still answers 200 most of the time
    for i in $(seq 1 10); do curl -s -o /dev/null -w '%{{http_code}}\n' http://{inbound}/flaky?fail=50; done
  circuit breaker: failures open the circuit; then rampart answers 503 circuit_open at once
    for i in $(seq 1 8); do curl -s -o /dev/null -w '%{{http_code}}\n' http://{inbound}/fragile/status/500; done
  load shedding: only 2 requests at once on /shed; the rest answer 503 shed
    for i in $(seq 1 6); do curl -s -o /dev/null -w '%{{http_code}}\n' http://{inbound}/shed/slow?ms=1000 & done; wait
  outbound (as an app with HTTP_PROXY=http://{outbound}):
    curl -i -x http://{outbound} http://sample.local/
  metrics, state, config, reload:
    curl -s http://{admin}/metrics | grep ^rampart_
    curl -s http://{admin}/state
    curl -s -X POST http://{admin}/reload

Ctrl-C to stop.
"#
    )
}
