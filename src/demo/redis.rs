//! The demo's global limits: when `redis-server` is on PATH, the demo starts one on a free
//! loopback port and adds a listener whose limit is shared through it; otherwise it says how
//! to get that part and runs without it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long the demo waits for its Redis to accept connections.
const START_WAIT: Duration = Duration::from_secs(3);

/// The demo's own `redis-server`, killed (by PID) when dropped.
#[derive(Debug)]
pub(super) struct DemoRedis {
    child: Child,
    addr: SocketAddr,
}

/// Added to the demo policy when a Redis runs: a store, a policy with `scope: global`, and a
/// listener on :8081 that applies it.
const GLOBAL_SECTIONS: &str = r#"
global_store:
  redis: { url: "redis://$ADDR/0", key_prefix: "rampart-demo:", timeout: 25ms }
"#;
const GLOBAL_POLICY: &str = r#"
  fleet:
    rate_limit:
      per_tenant: { rate: 1/s, burst: 5 }
      scope: global
      on_store_error: local
      lease: 1
      headers: true
"#;
const GLOBAL_LISTENER: &str = r#"
  - name: inbound-global
    direction: inbound
    listen: 127.0.0.1:8081
    routes:
      - name: fleet
        upstream: sample
        policy: fleet
"#;

// === impl DemoRedis ===

impl DemoRedis {
    /// Starts `redis-server` if it is on PATH; `Err` says why the part is skipped.
    pub(super) fn start() -> Result<DemoRedis, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port: {e}"))?
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server is not on PATH ({e}); install the Debian package redis-server to see global limits"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut r = DemoRedis { child, addr };
        let waited = std::iter::repeat_with(|| {
            std::thread::sleep(Duration::from_millis(20));
            TcpStream::connect_timeout(&r.addr, Duration::from_millis(100)).is_ok()
        })
        .take((START_WAIT.as_millis() / 40) as usize)
        .any(|up| up);
        if !waited {
            r.stop();
            return Err(format!("redis-server did not start on {}", r.addr));
        }
        Ok(r)
    }

    /// The demo policy with the global store, policy and listener added.
    pub(super) fn extend(&self, yaml: &str) -> String {
        let store = GLOBAL_SECTIONS.replace("$ADDR", &self.addr.to_string());
        yaml.replacen(
            "\npolicies:\n",
            &format!("{store}\npolicies:\n{GLOBAL_POLICY}"),
            1,
        )
        .replacen(
            "\nlisteners:\n",
            &format!("\nlisteners:\n{GLOBAL_LISTENER}"),
            1,
        )
    }

    /// What to curl to see the shared limit.
    pub(super) fn guide(&self) -> String {
        format!(
            "  global limits: a redis-server found on PATH runs on {addr} (pid {pid}); listener :8081 keeps\n\
             \x20 its tenant limit (burst 5, then 1/s) there, shared by every rampart naming that store\n\
             \x20   for i in $(seq 8); do curl -s -o /dev/null -w '%{{http_code}} ' -H 'x-tenant-id: t' localhost:8081/; done\n\
             \x20   redis-cli -p {port} keys 'rampart-demo:*'\n\
             \x20 kill {pid} and the listener falls back to its own limit (on_store_error: local):\n\
             \x20   curl -s localhost:9901/metrics | grep -e rampart_global_store_up -e rampart_ratelimit_backend_errors\n",
            addr = self.addr,
            port = self.addr.port(),
            pid = self.child.id(),
        )
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DemoRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_extended_demo_policy_validates() {
        let r = GLOBAL_SECTIONS.replace("$ADDR", "127.0.0.1:6399");
        let yaml = super::super::DEMO_YAML
            .replacen(
                "\npolicies:\n",
                &format!("{r}\npolicies:\n{GLOBAL_POLICY}"),
                1,
            )
            .replacen(
                "\nlisteners:\n",
                &format!("\nlisteners:\n{GLOBAL_LISTENER}"),
                1,
            )
            .replace(
                "config/demo-tls/",
                concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo-tls/"),
            );
        let cfg = Config::from_str(&yaml, "demo").expect("the extended demo validates");
        assert!(cfg.file.global_store.is_some());
        assert!(cfg
            .file
            .listeners
            .iter()
            .any(|l| l.name == "inbound-global"));
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    }
}
