//! A real `redis-server` for the global-store tests: started on a free loopback port, stopped
//! (by PID) on drop, and restartable on the same port to play an outage.
//!
//! `redis-server` comes from the Debian package `redis-server` (scripts/test.sh installs it);
//! a test that needs it fails with that name when it is missing, never skips.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_addr, metric_value, metrics, Proxy};

/// How long a fresh server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child with no persistence. Killed on drop.
#[derive(Debug)]
pub struct Redis {
    addr: SocketAddr,
    child: Option<Child>,
    dir: tempfile::TempDir,
    tls: Option<TlsPort>,
}

/// A TLS port beside the plain one (which the test's own queries use).
#[derive(Debug, Clone)]
pub struct TlsPort {
    /// Where the TLS port listens.
    pub addr: SocketAddr,
    /// The server's certificate chain and key, PEM files.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that client certificates must chain to.
    pub ca: PathBuf,
    /// Whether a client must show a certificate (`tls-auth-clients yes`).
    pub auth_clients: bool,
}

// === impl Redis ===

impl Redis {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> Redis {
        let dir = tempfile::tempdir().expect("a temp dir must be creatable");
        let mut r = Redis {
            addr: free_addr(),
            child: None,
            dir,
            tls: None,
        };
        r.restart().await;
        r
    }

    /// Starts a server that also listens on `tls.addr` over TLS (Debian's `redis-server` is
    /// built with TLS), and waits until its plain port answers.
    pub async fn start_tls(tls: TlsPort) -> Redis {
        let dir = tempfile::tempdir().expect("a temp dir must be creatable");
        let mut r = Redis {
            addr: free_addr(),
            child: None,
            dir,
            tls: Some(tls),
        };
        r.restart().await;
        r
    }

    /// `rediss://127.0.0.1:TLS_PORT/0`, for a server started with [`Redis::start_tls`].
    pub fn tls_url(&self) -> String {
        let tls = self.tls.as_ref().expect("a server started with a TLS port");
        format!("rediss://{}/0", tls.addr)
    }

    /// The clients connected now, and how many of them came in over TLS (`CLIENT LIST`, whose
    /// `laddr` is the port each came to), without the query's own.
    pub async fn clients_by_port(&self) -> (usize, usize) {
        let list = self.text(&["CLIENT", "LIST"]).await;
        let tls_port = self
            .tls
            .as_ref()
            .map(|t| format!("laddr=127.0.0.1:{} ", t.addr.port()));
        let lines: Vec<&str> = list
            .lines()
            .filter(|l| !l.contains("cmd=client|list"))
            .collect();
        let over_tls = tls_port.map_or(0, |p| lines.iter().filter(|l| l.contains(&p)).count());
        (lines.len(), over_tls)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Kills the server (SIGKILL, by PID) and reaps it; its port is then refused.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (empty: no persistence).
    pub async fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.addr.port().to_string())
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--enable-debug-command", "local", "--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(self.tls.as_ref().map(tls_args).unwrap_or_default())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "redis-server is needed for the global rate-limit tests ({e}); install the \
                     Debian package `redis-server` (scripts/test.sh installs it)"
                )
            });
        self.child = Some(child);
        let start = tokio::time::Instant::now();
        while self.query(&["PING"]).await.is_err() {
            assert!(
                start.elapsed() < START_TIMEOUT,
                "redis-server did not answer on {} within {START_TIMEOUT:?}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs one command and returns its reply.
    pub async fn query(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await
    }

    /// A command's reply as text (bulk or status replies).
    pub async fn text(&self, args: &[&str]) -> String {
        match self.query(args).await {
            Ok(redis::Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
            Ok(redis::Value::SimpleString(s)) => s,
            Ok(v) => format!("{v:?}"),
            Err(e) => panic!("redis {args:?} failed: {e}"),
        }
    }

    /// A command's integer reply.
    pub async fn int(&self, args: &[&str]) -> i64 {
        match self.query(args).await {
            Ok(redis::Value::Int(n)) => n,
            other => panic!("redis {args:?} gave {other:?}"),
        }
    }

    /// Keys matching `pattern`.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        match self.query(&["KEYS", pattern]).await {
            Ok(redis::Value::Array(items)) => items
                .into_iter()
                .filter_map(|v| match v {
                    redis::Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    _ => None,
                })
                .collect(),
            other => panic!("KEYS {pattern} gave {other:?}"),
        }
    }

    /// Calls of `command` (lower case, e.g. `evalsha`) since start, from INFO commandstats.
    pub async fn calls(&self, command: &str) -> u64 {
        let info = self.text(&["INFO", "commandstats"]).await;
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// A relay in front of the server that holds each of its replies for `delay`: a store that
    /// answers every command, `PING` included, but never sooner than `delay`. Stops accepting
    /// when dropped.
    pub async fn slowed(&self, delay: Duration) -> Slowed {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0 must work");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        let server = self.addr;
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay_slowly(client, server, delay));
            }
        });
        Slowed { addr, accept }
    }

    /// Makes the server stall for `d` (`DEBUG SLEEP`), without waiting for it.
    pub fn stall(&self, d: Duration) {
        let url = self.url();
        let secs = format!("{:.3}", d.as_secs_f64());
        tokio::spawn(async move {
            let Ok(client) = redis::Client::open(url) else {
                return;
            };
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let _: redis::RedisResult<redis::Value> = redis::cmd("DEBUG")
                    .arg("SLEEP")
                    .arg(secs)
                    .query_async(&mut conn)
                    .await;
            }
        });
    }
}

/// A relay made by [`Redis::slowed`].
#[derive(Debug)]
pub struct Slowed {
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl Slowed {
    /// `redis://127.0.0.1:PORT/0` of the relay.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }
}

impl Drop for Slowed {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Relays `client` to `server`, each read of the server's replies written `delay` later.
async fn relay_slowly(client: tokio::net::TcpStream, server: SocketAddr, delay: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let Ok(upstream) = tokio::net::TcpStream::connect(server).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = upstream.into_split();
    let asks = async {
        let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
        let _ = to_server.shutdown().await;
    };
    let replies = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = from_server.read(&mut buf).await {
            tokio::time::sleep(delay).await;
            if to_client.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to_client.shutdown().await;
    };
    tokio::join!(asks, replies);
}

/// The arguments that open `t`'s TLS port.
fn tls_args(t: &TlsPort) -> Vec<std::ffi::OsString> {
    let auth = if t.auth_clients { "yes" } else { "no" };
    let mut a: Vec<std::ffi::OsString> = Vec::new();
    a.extend(["--tls-port".into(), t.addr.port().to_string().into()]);
    a.extend(["--tls-cert-file".into(), t.cert.clone().into()]);
    a.extend(["--tls-key-file".into(), t.key.clone().into()]);
    a.extend(["--tls-ca-cert-file".into(), t.ca.clone().into()]);
    a.extend(["--tls-auth-clients".into(), auth.into()]);
    a
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `rampart_global_store_up` of `proxy`, if it exports it.
pub async fn store_up(proxy: &Proxy) -> Option<f64> {
    metric_value(
        &metrics(proxy.admin()).await,
        "rampart_global_store_up",
        &[],
    )
}

/// Waits (bounded) until `proxy` reports its store as `want` (1 up, 0 down).
pub async fn wait_up(proxy: &Proxy, want: f64) {
    crate::assert_eventually!(
        store_up(proxy).await == Some(want),
        "rampart_global_store_up must become {want}; log:\n{}",
        proxy.log()
    );
}

/// Two ramparts from `template` (its `$REDIS` is `redis`, its `$APP` is `app`), each waited
/// for until its store is up: two replicas of one service.
pub async fn replicas(template: &str, redis: &Redis, app: SocketAddr) -> (Proxy, Proxy) {
    let spawn = || {
        Proxy::builder(template)
            .var("REDIS", redis.url())
            .var("APP", app)
            .spawn()
    };
    let (a, b) = (spawn().await, spawn().await);
    wait_up(&a, 1.0).await;
    wait_up(&b, 1.0).await;
    (a, b)
}
