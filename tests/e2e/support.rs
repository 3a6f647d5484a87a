//! The harness: real sockets on 127.0.0.1, the `rampart` binary as a child process, and the
//! sample service in-process.
//!
//! Tests talk to rampart only the way users do (its CLI, its listeners, its admin port, its
//! signals) so they prove the shipped binary, not an in-process shortcut. Nothing here uses a
//! fixed port or a fixed sleep: ports come from the kernel and waiting is done by polling with a
//! bounded patience (`assert_eventually!`).

// Each test module uses a different slice of the harness.
#![allow(dead_code)]

pub mod capture;
pub mod conn;
pub mod http;
pub mod metrics;
pub mod otlp;
pub mod proxy;
pub mod raw;
pub mod redis;
pub mod tls;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

pub use self::metrics::{metric_value, metrics};
pub use self::proxy::Proxy;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A free TCP port on 127.0.0.1: bound to `:0`, read, released.
pub fn free_port() -> u16 {
    free_addr().port()
}

/// A free address on 127.0.0.1 (see [`free_port`]), for a server about to bind it. For an
/// address that must refuse connections, take a [`Closed`]: a released port can be bound again
/// by another test running alongside, or become the source port of a connection to itself.
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 must work");
    l.local_addr().expect("a bound socket must have an address")
}

/// An address on 127.0.0.1 that refuses every connection for as long as this lives: a dead
/// upstream endpoint. Its port is bound and never listened on, so no other socket can take it
/// (neither a server nor the source port of an outgoing connection) and a connect to it is
/// reset at once.
#[derive(Debug)]
pub struct Closed {
    socket: socket2::Socket,
    addr: SocketAddr,
}

impl Closed {
    pub fn new() -> Closed {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a TCP socket");
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        socket
            .bind(&any.into())
            .expect("binding 127.0.0.1:0 must work");
        let addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("a bound socket must have an address");
        Closed { socket, addr }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Lets the port go, for a server that is to come up on it.
    pub fn release(self) -> SocketAddr {
        drop(self.socket);
        self.addr
    }
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// An address on 127.0.0.1 where a connect is never completed for as long as this lives: an
/// upstream endpoint that is slow to connect to. Its listener's accept queue is filled here
/// and never drained, so the kernel drops the SYN of every further connect, which waits until
/// its connector gives up.
#[derive(Debug)]
pub struct Stalled {
    _listener: socket2::Socket,
    _queued: Vec<std::net::TcpStream>,
    addr: SocketAddr,
}

impl Stalled {
    pub fn new() -> Stalled {
        let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a TCP socket");
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        listener
            .bind(&any.into())
            .expect("binding 127.0.0.1:0 must work");
        listener.listen(0).expect("listen");
        let addr = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("a bound socket must have an address");
        // Connects the queue takes; the first that is not completed shows it full.
        let mut queued = Vec::new();
        while let Ok(tcp) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300))
        {
            queued.push(tcp);
            assert!(queued.len() < 16, "the accept queue of {addr} never fills");
        }
        Stalled {
            _listener: listener,
            _queued: queued,
            addr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// An address on 127.0.0.1 that accepts every connection and never reads or answers, for as
/// long as this lives: a hung server. Its connections are held open until then.
#[derive(Debug)]
pub struct Silent {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Silent {
    pub async fn new() -> Silent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0 must work");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        Silent { addr, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A sample service on a free loopback port.
pub async fn sample() -> rampart::sample::Sample {
    rampart::sample::Sample::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("the sample service must start")
}

/// A FIFO at `dir/fifo`, nobody reading or writing it.
pub fn fifo(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .expect("`mkfifo` must run");
    assert!(status.success(), "mkfifo {}", path.display());
    path
}

/// A policy with one inbound listener whose one route sends everything to upstream `app` at
/// `$APP`, with no policy; `sections` adds top-level sections (e.g. `runtime:`) before it.
pub fn one_route(sections: &str) -> String {
    format!(
        r#"
version: 1
admin: {{ listen: $ADMIN }}
{sections}
upstreams:
  app: {{ endpoints: [$APP] }}
listeners:
  - name: inbound
    direction: inbound
    listen: $LISTEN_inbound
    routes:
      - upstream: app
"#
    )
}

/// Hex SHA-256 of `bytes`: what `/config` and `rampart_config_info` name a policy file by.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How long `assert_eventually!` waits: `RAMPART_TEST_PATIENCE_MS`, default 5000 ms.
pub fn patience() -> Duration {
    let ms = std::env::var("RAMPART_TEST_PATIENCE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    Duration::from_millis(ms)
}

/// Polls a condition (which may `.await`) every 20 ms until it holds, panicking with the given
/// message after [`patience`].
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!($cond, "{}", stringify!($cond))
    };
    ($cond:expr, $($msg:tt)+) => {{
        let patience = $crate::support::patience();
        let start = tokio::time::Instant::now();
        loop {
            if $cond {
                break;
            }
            if start.elapsed() > patience {
                panic!(
                    "condition did not hold within {:?}: {}",
                    patience,
                    format!($($msg)+)
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// The lines of the access log at `path` (JSON objects); panics on a line that is not one.
pub fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits until the access log at `path` holds `n` lines, and returns them.
pub async fn wait_log_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    assert_eventually!(
        log_lines(path).len() >= n,
        "{n} lines: {:?}",
        log_lines(path)
    );
    log_lines(path)
}
