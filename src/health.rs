//! `rampart health`: one HTTP probe of a running rampart's admin listener, for container
//! health checks in images that have no shell and no curl.
//!
//! Why a subcommand: a Dockerfile `HEALTHCHECK` runs a program inside the container. The
//! binary itself is always there, so the runtime image can hold nothing but rampart and the
//! libraries it links. The probe is plain blocking std I/O (no runtime, no TLS): the admin
//! listener speaks HTTP/1.1 in clear on loopback.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

/// Where the admin listener is when neither `--admin` nor a policy file says.
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901);

/// Longest status line or head read before giving up on a peer that is not rampart.
const MAX_HEAD: usize = 8 * 1024;

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The path is not an origin-form request target.
    #[error("--path must start with / and hold no spaces or control characters: {0:?}")]
    BadPath(String),
    /// No connection within the timeout, or refused.
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        /// Address probed.
        addr: SocketAddr,
        /// What the OS said.
        error: std::io::Error,
    },
    /// Connected, but no status line came within the whole budget.
    #[error("no answer from {addr} within {timeout:?} (timed out)")]
    Silent {
        /// Address probed.
        addr: SocketAddr,
        /// The run's whole budget.
        timeout: Duration,
    },
    /// The connection broke (reset, ...) before a status line arrived.
    #[error("the connection to {addr} broke before an answer: {error}")]
    Broken {
        /// Address probed.
        addr: SocketAddr,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The peer closed the connection without a byte of answer.
    #[error("{addr} closed the connection without answering")]
    Closed {
        /// Address probed.
        addr: SocketAddr,
    },
    /// Something answered, but not with an HTTP status line.
    #[error("{addr} did not answer HTTP: {line:?}")]
    NotHttp {
        /// Address probed.
        addr: SocketAddr,
        /// The first line received.
        line: String,
    },
    /// rampart answered with a status other than 200.
    #[error("{addr}{path} answered {status}")]
    Status {
        /// Address probed.
        addr: SocketAddr,
        /// Path probed.
        path: String,
        /// The status code.
        status: u16,
    },
}

/// The admin address to probe: `admin` when given, else the policy file's `admin.listen`, else
/// [`DEFAULT_ADMIN`]; an unspecified address (`0.0.0.0`, `::`) is probed on loopback. Only
/// `admin.listen` is read from the file, leniently (a policy that fails validation, as one a
/// reload refused while rampart serves the one before, still gives it). A file that cannot be
/// read, or whose `admin.listen` cannot, leaves [`DEFAULT_ADMIN`] and a warning saying why
/// (the second value): health reports on the process, and the probe tells whether it answers.
pub fn admin_addr(
    admin: Option<SocketAddr>,
    config: Option<&Path>,
) -> (SocketAddr, Option<String>) {
    let (addr, warning) = match (admin, config) {
        (Some(a), _) => (a, None),
        (None, Some(path)) => {
            let listen = crate::config::read_policy(path)
                .and_then(|bytes| crate::config::admin_listen_of(&String::from_utf8_lossy(&bytes)));
            match listen {
                Ok(a) => (a.unwrap_or(DEFAULT_ADMIN), None),
                Err(e) => (
                    DEFAULT_ADMIN,
                    Some(format!(
                        "warning: cannot take admin.listen from {}: {e}; probing the default {DEFAULT_ADMIN} (pass --admin ADDR to name it)",
                        path.display()
                    )),
                ),
            }
        }
        (None, None) => (DEFAULT_ADMIN, None),
    };
    (reachable(addr), warning)
}

/// `0.0.0.0:p` → `127.0.0.1:p`, `[::]:p` → `[::1]:p`; other addresses as they are.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// Sends `GET path` to `addr` and returns the status when it is 200; everything (connect,
/// write, read) finishes within `timeout` or fails.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, ProbeError> {
    probe_until(addr, path, Instant::now() + timeout, timeout)
}

/// [`probe`], finished by `deadline`, the end of the run's whole `budget` (named in errors).
pub fn probe_until(
    addr: SocketAddr,
    path: &str,
    deadline: Instant,
    budget: Duration,
) -> Result<u16, ProbeError> {
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ProbeError::BadPath(path.to_owned()));
    }
    let silent = || ProbeError::Silent {
        addr,
        timeout: budget,
    };
    // A read or write timeout shows as WouldBlock (EAGAIN) on Unix: it means the time ran out.
    let io = |error: std::io::Error| match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => silent(),
        _ => ProbeError::Broken { addr, error },
    };
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    // A reset that comes before the connect is looked at (the peer accepted, then reset at
    // once) is reported by it: the connection was made, and broke.
    let mut stream = TcpStream::connect_timeout(&addr, left().ok_or_else(silent)?).map_err(
        |error| match error.kind() {
            std::io::ErrorKind::ConnectionReset => ProbeError::Broken { addr, error },
            _ => ProbeError::Connect { addr, error },
        },
    )?;
    stream
        .set_write_timeout(Some(left().ok_or_else(silent)?))
        .map_err(io)?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: rampart-health\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < MAX_HEAD {
        stream
            .set_read_timeout(Some(left().ok_or_else(silent)?))
            .map_err(io)?;
        match stream.read(&mut buf).map_err(io)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    if head.is_empty() {
        return Err(ProbeError::Closed { addr });
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("").trim_end().to_owned();
    let status = parse_status(&line).ok_or_else(|| ProbeError::NotHttp {
        addr,
        line: line.clone(),
    })?;
    if status == 200 {
        Ok(status)
    } else {
        Err(ProbeError::Status {
            addr,
            path: path.to_owned(),
            status,
        })
    }
}

/// The code of an `HTTP/1.x NNN reason` status line.
fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(parse_status("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status("HTTP/1.1 204"), Some(204));
        assert_eq!(parse_status("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status("HTTP/1.1 2000 x"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn unspecified_addresses_are_probed_on_loopback() {
        let v4: SocketAddr = "0.0.0.0:9901".parse().unwrap();
        let v6: SocketAddr = "[::]:9902".parse().unwrap();
        let other: SocketAddr = "10.1.2.3:9903".parse().unwrap();
        assert_eq!(reachable(v4), "127.0.0.1:9901".parse().unwrap());
        assert_eq!(reachable(v6), "[::1]:9902".parse().unwrap());
        assert_eq!(reachable(other), other);
        assert_eq!(admin_addr(None, None), (DEFAULT_ADMIN, None));
        assert_eq!(
            admin_addr(Some(v4), None),
            ("127.0.0.1:9901".parse().unwrap(), None)
        );
    }
}
