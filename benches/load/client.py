#!/usr/bin/env python3
"""Small deterministic HTTP/1.1 clients for the load scripts (full.sh, callgrind.sh).

  client.py requests PORT COUNT [CONNS]
      COUNT keep-alive `GET /` to 127.0.0.1:PORT, one at a time, spread round-robin over CONNS
      connections (default 1); with CONNS 0, each on a new connection with `Connection:
      close`. Exits 1 when any answer is not 200.

  client.py idle PORT COUNT PID...
      Opens COUNT keep-alive connections to 127.0.0.1:PORT, one `GET /` on each (so every
      connection is past its first request and simply idle), then reads the resident memory
      (VmRSS, summed over the PIDs) before and after, and closes them. Prints
      `BEFORE_KIB AFTER_KIB OPENED`.

  client.py idle-tls PORT COUNT CERT PID...
      The same over TLS (HTTP/1.1 by ALPN), verifying the proxy's certificate against CERT
      (PEM; the benchmark's own, for 127.0.0.1).

  client.py idle-h2-tls PORT COUNT CERT PID...
      The same over HTTP/2 (ALPN h2): each connection sends the preface, its SETTINGS and one
      `GET /` on stream 1, and is idle once that answer has ended (its SETTINGS acknowledged).

  client.py idle-h2 PORT COUNT PID...
      The same over h2c (HTTP/2 with prior knowledge, no TLS).
"""

import http.client
import resource
import socket
import ssl
import struct
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def h2_frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


# HPACK, static table only: :method GET (2), :path / (4), :scheme http (6) or https (7), and
# :authority (name 1) as a literal without indexing.
H2_AUTHORITY = b"127.0.0.1"


def h2_request(tls):
    scheme = 0x87 if tls else 0x86
    return (
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + h2_frame(0x4, 0, 0, b"")
        + h2_frame(0x1, 0x5, 1, bytes([0x82, 0x84, scheme, 0x01, len(H2_AUTHORITY)]) + H2_AUTHORITY)
    )


def h2_answer(sock):
    """Reads frames until stream 1's answer has ended; acknowledges the server's SETTINGS.
    Returns the answer's status code (from an indexed :status, else 0)."""
    buf = b""
    status = 0
    while True:
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            n = int.from_bytes(buf[:3], "big")
            kind, flags = buf[3], buf[4]
            stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            payload, buf = buf[9 : 9 + n], buf[9 + n :]
            if kind == 0x4 and not flags & 0x1:
                sock.sendall(h2_frame(0x4, 0x1, 0, b""))
            elif kind == 0x7:
                raise ConnectionError("GOAWAY before the answer")
            elif kind == 0x3 and stream == 1:
                raise ConnectionError("the request was reset")
            elif kind == 0x1 and stream == 1 and payload and payload[0] & 0x80:
                # :status 200 is static entry 8, the others indexed 9-14 or literal.
                status = {8: 200, 9: 204, 10: 206, 11: 304, 12: 400, 13: 404, 14: 500}.get(
                    payload[0] & 0x7F, 0
                )
            if stream == 1 and kind in (0x0, 0x1) and flags & 0x1:
                return status
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the answer ended")
        buf += chunk


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def read_answer(sock):
    """Reads one answer to `GET /` from a raw socket; returns its status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the answer head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while not body.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed inside a chunked body")
            body += chunk
    elif length is not None:
        while len(body) < length:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed inside the body")
            body += chunk
    return status


def idle(port, count, pids, cert=None, h2=False):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    time.sleep(0.5)
    before = rss_kib(pids)
    socks = []
    ctx = None
    if cert is not None:
        ctx = ssl.create_default_context(cafile=cert)
        ctx.set_alpn_protocols(["h2"] if h2 else ["http/1.1"])
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if ctx is not None:
                s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
            if h2:
                if ctx is not None and s.selected_alpn_protocol() != "h2":
                    raise RuntimeError(f"ALPN chose {s.selected_alpn_protocol()}, not h2")
                s.sendall(h2_request(ctx is not None))
                status = h2_answer(s)
            else:
                s.sendall(REQUEST)
                status = read_answer(s)
            if status != 200:
                raise RuntimeError(f"answer {status} on connection {len(socks) + 1}")
            socks.append(s)
        time.sleep(1.0)  # let the proxy settle (buffers released after the answer)
        after = rss_kib(pids)
        # Every connection must still be open: a proxy that closed them saved no memory.
        alive = 0
        for s in socks:
            s.setblocking(False)
            try:
                alive += 1 if s.recv(1) else 0
            except (BlockingIOError, ssl.SSLWantReadError):
                alive += 1
            except OSError:
                pass
        print(before, after, alive)
    finally:
        for s in socks:
            s.close()


def requests(port, count, conns):
    pool = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(conns)]
    bad = 0
    for i in range(count):
        if conns == 0:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request("GET", "/", headers={"Connection": "close"})
        else:
            c = pool[i % conns]
            c.request("GET", "/")
        r = c.getresponse()
        r.read()
        if r.status != 200:
            bad += 1
        if conns == 0:
            c.close()
    for c in pool:
        c.close()
    if bad:
        print(f"{bad} of {count} answers were not 200", file=sys.stderr)
        sys.exit(1)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "requests" and len(sys.argv) in (4, 5):
        conns = int(sys.argv[4]) if len(sys.argv) == 5 else 1
        requests(int(sys.argv[2]), int(sys.argv[3]), conns)
    elif mode == "idle" and len(sys.argv) >= 5:
        idle(int(sys.argv[2]), int(sys.argv[3]), [int(p) for p in sys.argv[4:]])
    elif mode == "idle-tls" and len(sys.argv) >= 6:
        pids = [int(p) for p in sys.argv[5:]]
        idle(int(sys.argv[2]), int(sys.argv[3]), pids, cert=sys.argv[4])
    elif mode == "idle-h2" and len(sys.argv) >= 5:
        idle(int(sys.argv[2]), int(sys.argv[3]), [int(p) for p in sys.argv[4:]], h2=True)
    elif mode == "idle-h2-tls" and len(sys.argv) >= 6:
        pids = [int(p) for p in sys.argv[5:]]
        idle(int(sys.argv[2]), int(sys.argv[3]), pids, cert=sys.argv[4], h2=True)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
