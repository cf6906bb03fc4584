"""An HTTP CONNECT proxy for tests: clients that honour ``https_proxy`` (gRPC, httpx, curl) reach the
gateway on loopback under a production host name, without touching DNS."""

from __future__ import annotations

import re
import select
import socket
import threading


class ConnectProxy:
    """An HTTP CONNECT proxy that records the host each CONNECT names and always tunnels to one loopback
    port, whatever that host is: the test never reaches the network."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.seen: list[str] = []
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)  # accept() wakes up to notice close()
        self.port = int(self.listener.getsockname()[1])
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._tunnel, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _tunnel(self, client: socket.socket) -> None:
        with client:
            client.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = client.recv(4096)
                if not data:
                    return
                head += data
            request, _, rest = head.partition(b"\r\n\r\n")
            m = re.match(rb"CONNECT (\S+) HTTP/1\.[01]", request)
            if not m:
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
                return
            self.seen.append(m.group(1).decode())
            with socket.create_connection(("127.0.0.1", self.target_port), timeout=10) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                if rest:
                    upstream.sendall(rest)
                self._pipe(client, upstream)

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        while not self.stopped.is_set():
            ready, _, _ = select.select(list(peers), [], [], 0.2)
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                peers[s].sendall(data)

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        for t in self.threads:
            t.join(5)
