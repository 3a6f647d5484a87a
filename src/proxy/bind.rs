//! Binding listening sockets: one per worker, and a reload's move of a listener onto an address
//! that overlaps one rampart listens on already.
//!
//! A reload binds a listener's new address before it lets the old one go (`reload.rs`), so a
//! move from `127.0.0.1:P` to `0.0.0.0:P` (or `[::]:P`, or back) binds while the old socket
//! still holds the port. Linux lets two listening sockets overlap when both have
//! `SO_REUSEPORT` and belong to the same user, so every socket on a fixed port has it; the
//! kernel then gives a connection to the most specific address listening (the old
//! `127.0.0.1:P` until it closes, for a connection to `127.0.0.1`). `SO_REUSEPORT` would also
//! let another process of the same user share the port unseen, so a fixed port is first bound
//! without it ([`guard`]): if that fails, the bind goes ahead only when every socket listening
//! on an overlapping address is one of rampart's own, as `/proc/net/tcp{,6}` shows by inode.
//!
//! Rampart's own are every listener socket it bound that is still open ([`Listening`]): those
//! it listens on, and those a reload took away that their accept loop has not closed yet. A
//! reload that puts back a listener the one before took away (SIGHUP storms, 30 ms apart) finds
//! its old socket still there; counting only the listeners in force, it was refused as another
//! process's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// A proxy listener's address, bound once per worker.
#[derive(Debug)]
pub struct Bound {
    /// One listening socket per worker, in worker order; all on the same address.
    pub(super) sockets: Vec<Socket>,
}

/// One worker's listening socket, counted among rampart's own until it is closed.
#[derive(Debug)]
pub(super) struct Socket {
    pub(super) tcp: std::net::TcpListener,
    /// Declared after `tcp`, so dropped after it: the socket closes first. Whoever takes the
    /// socket apart (the worker's accept loop task) keeps this until the socket is closed.
    pub(super) mark: Mark,
}

/// The inodes of the listener sockets rampart holds open (Linux; none elsewhere): what tells
/// them from another process's in `/proc/net/tcp`. Each is counted from its bind until its
/// [`Mark`] is dropped, after the socket has closed, whether its listener is in force or
/// retiring.
#[derive(Debug, Default, Clone)]
pub struct Listening(Arc<parking_lot::Mutex<Vec<u64>>>);

/// One socket's place among [`Listening`], given up when dropped.
#[derive(Debug)]
#[must_use = "the socket counts as rampart's own only while this lives"]
pub(super) struct Mark {
    listening: Listening,
    inode: Option<u64>,
}

/// The accept queue of every listening socket rampart opens (its listeners, admin, and the
/// sample upstream's).
pub const BACKLOG: i32 = 1024;

/// Binds `addr` as one socket (the admin listener), as [`bind_each`] does for one worker; no
/// other socket may overlap it, rampart's own or not.
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = open(addr, false)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    tokio::net::TcpListener::from_std(s.into())
}

/// Binds `addr` for `workers` workers, each with a listening socket of its own: a large
/// backlog, `SO_REUSEADDR`, `SO_REUSEPORT` (on a fixed port, or with more than one worker) and
/// `TCP_NODELAY` (which the sockets it accepts inherit on Linux). `own` are the sockets
/// rampart holds open, the only ones a fixed port may overlap (see the module doc); the new
/// ones join them.
///
/// With more than one worker the sockets share the address through `SO_REUSEPORT`, so the
/// kernel spreads new connections over them by a hash of the client's address and port: each
/// worker gets its share however busy it is. (Polling one shared socket from every worker
/// instead hands a burst of connections to whichever worker happens to be awake; seen here, a
/// second worker got none of 32.)
pub fn bind_each(addr: SocketAddr, workers: usize, own: &Listening) -> std::io::Result<Bound> {
    let workers = workers.max(1);
    let fixed = addr.port() != 0;
    if fixed {
        guard(addr, &own.inodes())?;
    }
    let mut sockets = Vec::with_capacity(workers);
    let mut at = addr;
    for _ in 0..workers {
        let s = open(addr, fixed || workers > 1)?;
        s.bind(&at.into())?;
        s.listen(BACKLOG)?;
        let tcp = std::net::TcpListener::from(s);
        // Port 0: the others join the port the first one got.
        at = tcp.local_addr()?;
        let mark = own.mark(inode(&tcp));
        sockets.push(Socket { tcp, mark });
    }
    Ok(Bound { sockets })
}

// === impl Listening ===

impl Listening {
    /// The inodes of the sockets counted now.
    pub fn inodes(&self) -> Vec<u64> {
        self.0.lock().clone()
    }

    /// Counts the socket of `inode` until the result is dropped.
    fn mark(&self, inode: Option<u64>) -> Mark {
        if let Some(ino) = inode {
            self.0.lock().push(ino);
        }
        Mark {
            listening: self.clone(),
            inode,
        }
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        let Some(ino) = self.inode else { return };
        let mut all = self.listening.0.lock();
        if let Some(i) = all.iter().position(|&x| x == ino) {
            all.swap_remove(i);
        }
    }
}

/// A non-blocking TCP socket for `addr`, with the options every listening socket has.
fn open(addr: SocketAddr, reuse_port: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    s.set_tcp_nodelay(true)?;
    // Inherited by every accepted socket (no `setsockopt` per connection), as `TCP_NODELAY`.
    s.set_tcp_user_timeout(Some(SEND_STALL))?;
    // A client gone silently is found out as an upstream is (`sock::KEEPALIVE`): on a quiet
    // tunnel (`tunnel_idle_timeout` is an hour) or a long HTTP/2 stream. Inherited too.
    s.set_tcp_keepalive(&super::sock::KEEPALIVE.probes())?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// How long a client may leave what rampart sent it untaken (its receive window shut, or
/// nothing acknowledged) before the kernel aborts its connection (`TCP_USER_TIMEOUT`, which
/// Linux applies to a window held shut since 5.11). Without it a client that stops reading
/// held its connection, the answer's upstream connection and its `max_connections` place
/// for ever: no deadline is looked at while a write waits for room. nginx's `send_timeout`
/// is the same 60 s. An HTTP/2 stream whose own window the client keeps shut (the connection
/// moving on) is held to the same bound by `stall.rs`.
pub const SEND_STALL: std::time::Duration = std::time::Duration::from_secs(60);

/// Fails with "address in use" if a socket that is not one of `own` listens on an address
/// overlapping `addr`, `SO_REUSEPORT` or not. A probe without `SO_REUSEPORT` fails if
/// anything at all listens there; only then are the listening sockets looked up, and the bind
/// allowed if they are all rampart's own (a reload moving a listener).
fn guard(addr: SocketAddr, own: &[u64]) -> std::io::Result<()> {
    let probe = open(addr, false)?;
    let Err(e) = probe.bind(&addr.into()) else {
        return Ok(());
    };
    if e.kind() != std::io::ErrorKind::AddrInUse || own.is_empty() {
        return Err(e);
    }
    match foreign_listener(addr, own) {
        Ok(None) => Ok(()),
        Ok(Some(other)) => Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("address in use: another process listens on {other}"),
        )),
        // Cannot tell whose socket it is: refuse, as without the look-up.
        Err(_) => Err(e),
    }
}

/// The address of a socket listening over `addr` that is not one of `own`, if any.
#[cfg(target_os = "linux")]
fn foreign_listener(addr: SocketAddr, own: &[u64]) -> std::io::Result<Option<SocketAddr>> {
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table)?;
        let other = text
            .lines()
            .skip(1)
            .filter_map(parse_listening)
            .find(|&(at, ino)| overlap(at, addr) && !own.contains(&ino));
        if let Some((at, _)) = other {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

/// Elsewhere the sockets cannot be told apart: a port in use is refused.
#[cfg(not(target_os = "linux"))]
fn foreign_listener(_addr: SocketAddr, _own: &[u64]) -> std::io::Result<Option<SocketAddr>> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// The inode of a socket (what `/proc/net/tcp` lists it by).
#[cfg(target_os = "linux")]
fn inode(s: &std::net::TcpListener) -> Option<u64> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let path = format!("/proc/self/fd/{}", s.as_raw_fd());
    std::fs::metadata(path).ok().map(|m| m.ino())
}

#[cfg(not(target_os = "linux"))]
fn inode(_: &std::net::TcpListener) -> Option<u64> {
    None
}

/// Two addresses on one port that a connection could reach both of: the same IP, or a
/// wildcard (`0.0.0.0`, `::`, which is dual-stack unless told otherwise) on either side.
fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    let ip = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let (x, y) = (ip(a), ip(b));
    a.port() == b.port() && (x == y || x.is_unspecified() || y.is_unspecified())
}

/// A listening socket's address and inode from a line of `/proc/net/tcp` or `tcp6`: fields
/// `sl local_address rem_address st … inode`, the address as hex words in the kernel's byte
/// order, the state `0A` for listening.
fn parse_listening(line: &str) -> Option<(SocketAddr, u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.get(3) != Some(&"0A") {
        return None;
    }
    let (ip, port) = f.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((SocketAddr::new(ip, port), f.get(9)?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn wildcards_overlap_every_address_of_their_port() {
        assert!(overlap(a("127.0.0.1:80"), a("0.0.0.0:80")));
        assert!(overlap(a("0.0.0.0:80"), a("127.0.0.1:80")));
        assert!(overlap(a("[::]:80"), a("127.0.0.1:80")));
        assert!(overlap(a("[::ffff:127.0.0.1]:80"), a("127.0.0.1:80")));
        assert!(!overlap(a("127.0.0.1:80"), a("127.0.0.2:80")));
        assert!(!overlap(a("0.0.0.0:80"), a("0.0.0.0:81")));
    }

    /// Lines as Linux writes them (little-endian words), listening and not.
    #[cfg(target_endian = "little")]
    #[test]
    fn proc_net_tcp_lines_give_listening_sockets() {
        let v4 = "   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 424242 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_listening(v4), Some((a("127.0.0.1:8080"), 424242)));
        let v6 = "   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_listening(v6), Some((a("[::]:80"), 17)));
        let v6lo = "   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 18 1 0000000000000000 100 0 0 10 0";
        assert_eq!(parse_listening(v6lo), Some((a("[::1]:80"), 18)));
        let established = "   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 5 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(parse_listening(established), None);
    }

    /// A fixed port held by rampart's own listener may be overlapped; held by a socket that
    /// is not (this test's, standing for another process), it may not.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_fixed_port_overlaps_only_ramparts_own_sockets() {
        let own = Listening::default();
        let lo = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port());
        let _old = bind_each(lo, 2, &own).expect("a fixed port binds");
        assert_eq!(own.inodes().len(), 2, "one inode per socket");
        let wide = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), lo.port());
        let e = bind_each(wide, 1, &Listening::default())
            .expect_err("not known as rampart's own: refused");
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        let moved = bind_each(wide, 2, &own).expect("its own sockets may be overlapped");

        // Another process of the same user may share a port through SO_REUSEPORT too: its
        // socket beside rampart's must still refuse the overlapping bind.
        let stranger = open(a("127.0.0.2:0"), true).expect("socket");
        stranger
            .bind(&SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2).into(), lo.port()).into())
            .expect("a reuse-port socket beside rampart's");
        stranger.listen(8).expect("listen");
        drop(moved);
        let e = bind_each(wide, 1, &own).expect_err("another's socket: refused");
        assert!(e.to_string().contains("another process"), "{e}");
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    }

    /// A socket counts as rampart's own from its bind until it is closed, whoever holds it
    /// by then (the accept loop of a listener a reload took away): a listener put back on its
    /// address binds beside it. Closed, it is counted no more.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_socket_counts_as_own_until_it_is_closed() {
        let own = Listening::default();
        let lo = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port());
        let Socket { tcp, mark } = bind_each(lo, 1, &own)
            .expect("a fixed port binds")
            .sockets
            .remove(0);
        let retiring = own.inodes();
        assert_eq!(retiring.len(), 1);
        let back = bind_each(lo, 1, &own).expect("put back beside its retiring socket");
        assert_eq!(own.inodes().len(), 2);
        drop(back);
        assert_eq!(own.inodes(), retiring, "a socket closed is counted no more");
        drop(tcp);
        drop(mark);
        assert_eq!(own.inodes(), Vec::<u64>::new());
    }

    /// A port free now, for a socket to bind as a fixed port (`SO_REUSEPORT`).
    fn free_port() -> u16 {
        let s = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        s.local_addr().expect("addr").port()
    }
}
