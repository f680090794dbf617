#!/usr/bin/env python3
"""Opens N keep-alive HTTP/1.1 connections to one server and holds them idle.

benches/proxy.sh uses it for "RSS with 1,000 idle keep-alive connections": each connection
sends one `GET PATH` and reads the whole answer (so the proxy has set the connection up for
requests, not just accepted it), then sits idle. Once all are open it prints `ready OPENED`
and waits HOLD seconds (the caller reads the proxy's VmRSS meanwhile), then prints
`open STILL_OPEN` (connections the server has not closed) and exits, closing them all.

    hold_conns.py HOST PORT PATH N HOLD
"""

import resource
import select
import socket
import sys
import time


def read_answer(sock):
    """Reads one HTTP/1.1 response with a Content-Length body; returns its status code."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the response body")
        body += chunk
    return status


def main():
    host, port, path, n, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))
    req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    socks, failed, non2xx = [], 0, 0
    for _ in range(n):
        try:
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(req)
            if not 200 <= read_answer(s) < 300:
                non2xx += 1
            socks.append(s)
        except OSError as e:
            failed += 1
            if failed == 1:
                print(f"first failure: {e}", file=sys.stderr)
    print(f"ready {len(socks)} failed={failed} non2xx={non2xx}", flush=True)
    time.sleep(hold)
    # A socket the server closed is readable (EOF); an idle open one is not. (poll, not
    # select: the descriptors go past select's 1024.)
    still = 0
    for s in socks:
        p = select.poll()
        p.register(s, select.POLLIN)
        if not p.poll(0):
            still += 1
        else:
            try:
                s.setblocking(False)
                if s.recv(1):
                    still += 1  # unexpected bytes, but open
            except OSError:
                pass
    print(f"open {still}", flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
