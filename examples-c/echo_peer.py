#!/usr/bin/env python3
"""A TCP echo server on 127.0.0.1 for the C examples (until netev has its own listener).

Usage: echo_peer.py [PORT]   (0 or nothing: the system picks a free port)

The first line on stdout is the port, flushed at once, so a script can start
this in the background and read where to connect. Each connection gets its own
thread and gets back every byte it sends; when the client shuts down its write
side, the peer shuts down its own, which is what lets the client see END then
CLOSE.
"""

import socket
import sys
import threading


def serve(conn):
    with conn:
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError as e:  # a reset client must not kill the server
            print(f"echo_peer: {e}", file=sys.stderr, flush=True)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    print(server.getsockname()[1], flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
