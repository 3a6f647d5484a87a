#!/usr/bin/env python3
"""What one sleep costs a process on this machine, in its own CPU time (issue 22).

A child process answers one-byte messages on a socket pair, one `recv` and one `send` each,
blocking in `recv` when there is nothing to read. The parent sends them K at a time, waits for
the K answers without ever blocking (a busy loop), then waits GAP microseconds (busy too) before
the next K. With K = 1 the child sleeps about once a message; with K = 16 it finds the next
message already there fifteen times in sixteen. The child's CPU time per message (user and
system, /proc/PID/stat) against its sleeps per message (voluntary context switches) gives the
cost of a sleep: the difference between two values of K, over the difference in sleeps.

Usage: sleep-cost.py [MESSAGES] [K ...] [--gap MICROSECONDS]
  defaults: 200000 messages, K = 1 4 16, gap 0

Nothing but the two processes it starts runs; the child ends when its socket closes, so it
cannot outlive the parent.
"""

import argparse
import os
import socket
import sys
import time


def child(sock):
    while True:
        m = sock.recv(1)
        if not m:
            os._exit(0)
        sock.send(b"r")


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def proc_cpu_and_sleeps(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    with open(f"/proc/{pid}/status") as f:
        vol = next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
    return ticks / os.sysconf("SC_CLK_TCK"), vol


def run(messages, k, gap):
    parent, kid = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        parent.close()
        child(kid)
    kid.close()
    try:
        parent.setblocking(False)
        start = time.perf_counter()
        for _ in range(messages // k):
            parent.send(b"x" * k)
            got = 0
            while got < k:
                try:
                    got += len(parent.recv(4096))
                except BlockingIOError:
                    pass
            if gap:
                spin(gap)
        wall = time.perf_counter() - start
        cpu, sleeps = proc_cpu_and_sleeps(pid)
    finally:
        parent.close()
        os.waitpid(pid, 0)
    n = (messages // k) * k
    return cpu / n * 1e6, sleeps / n, wall / n * 1e6, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("messages", nargs="?", type=int, default=200_000)
    ap.add_argument("k", nargs="*", type=int, default=[1, 4, 16])
    ap.add_argument("--gap", type=float, default=0.0, help="microseconds between batches")
    a = ap.parse_args()
    if a.messages <= 0 or any(k <= 0 for k in a.k) or a.gap < 0:
        sys.exit("sleep-cost.py: MESSAGES and K must be positive, --gap not negative")
    if any(k > a.messages for k in a.k):
        sys.exit("sleep-cost.py: each K must be at most MESSAGES")
    rows = []
    coarse = False
    for k in a.k:
        cpu, sleeps, wall, total = run(a.messages, k, a.gap / 1e6)
        rows.append((k, cpu, sleeps))
        # /proc counts CPU time in clock ticks (10 ms here): too short a run reads as nothing.
        coarse |= total < 0.2
        print(f"K={k:<3} gap={a.gap:g} us: child CPU {cpu:6.2f} us a message, "
              f"{sleeps:.3f} sleeps a message, {wall:6.2f} us wall a message")
    if coarse:
        print("the child used under 0.2 s of CPU in a run: too little for /proc's clock ticks; "
              "give more MESSAGES (200000 takes about 10 s)")
    elif len(rows) >= 2:
        (_, c0, s0), (_, c1, s1) = rows[0], rows[-1]
        if s0 - s1 > 0.05:
            print(f"one sleep costs the sleeper about {(c0 - c1) / (s0 - s1):.1f} us of CPU "
                  f"(K={rows[0][0]} against K={rows[-1][0]})")


if __name__ == "__main__":
    main()
