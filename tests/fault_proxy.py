"""A small HTTP proxy in front of the moto server that injects storage faults.

    with fault_proxy(moto_endpoint) as proxy:
        env["AWS_ENDPOINT_URL"] = proxy.endpoint      # clients talk to the proxy
        proxy.fail(500)                               # every request answers 500, nothing reaches S3
        proxy.fail("after", method="PUT", path=r"/_delta_log/\\d+\\.json")
                                                      # a matching PUT reaches S3, its answer is a 500
        proxy.fail("drop-after", method="PUT", path=...)  # ... reaches S3, the connection is cut
        proxy.passthrough()

Modes: "pass" (forward everything), 500 / "500" (answer 500 without forwarding), "drop" (cut the
connection without forwarding), "after" (forward, then answer 500: the change happened but the client
cannot know) and "drop-after" (forward, then cut the connection). `method` and `path` (regexes, `path`
searched in the request target with its query) choose which requests the fault hits; the others pass.
`proxy.hits` counts faulted requests, `proxy.log` lists (method, target, status) of every request.

The proxy runs in a process of its own (as the moto server does: some delta-rs calls wait on HTTP
while holding the GIL, and a server thread in the test process could then never answer them); the test
sets its faults over HTTP, on paths under /_fault_proxy/ (no S3 bucket can be named that).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# headers that describe one hop's connection, never forwarded (RFC 9110 7.6.1); the proxy answers
# Expect: 100-continue itself
_HOP = {
    "connection",
    "expect",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
_ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)
_MODES = {"pass", "500", "drop", "after", "drop-after"}


_CONTROL = "/_fault_proxy/"


class FaultProxy:
    """The test's handle on a running proxy: `endpoint`, `fail(...)`, `passthrough()`, `hits`, `log`."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def _call(self, what: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        with urllib.request.urlopen(self.endpoint + _CONTROL + what, data=data, timeout=30) as r:
            return json.load(r)

    def fail(self, mode: str | int = 500, method: str | None = None, path: str | None = None) -> None:
        mode = str(mode)
        if mode not in _MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {sorted(_MODES)}")
        self._call("config", {"mode": mode, "method": method, "path": path})

    def passthrough(self) -> None:
        self.fail("pass")

    @property
    def hits(self) -> int:
        """Requests the current fault hit since it was set."""
        return self._call("state")["hits"]

    @property
    def log(self) -> list[tuple[str, str, int | None]]:
        """(method, target, status returned; None when the connection was cut) of every request."""
        return [tuple(x) for x in self._call("state")["log"]]


class _State:
    def __init__(self, upstream: str) -> None:
        u = urllib.parse.urlsplit(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.mode, self.method, self.path = "pass", None, None
        self.hits = 0
        self.log: list[tuple[str, str, int | None]] = []
        self.lock = threading.Lock()

    def configure(self, mode: str, method: str | None, path: str | None) -> None:
        with self.lock:
            self.mode = mode
            self.method = re.compile(method) if method else None
            self.path = re.compile(path) if path else None
            self.hits = 0

    def fault_for(self, method: str, target: str) -> str:
        with self.lock:
            if self.mode == "pass":
                return "pass"
            if self.method and not self.method.fullmatch(method):
                return "pass"
            if self.path and not self.path.search(target):
                return "pass"
            self.hits += 1
            return self.mode


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet test output
        pass

    def _body(self) -> bytes:
        """The request body as the client sent it (aws-chunked framing included: the upstream decodes
        that); HTTP chunked transfer is undone here and the body forwarded with a Content-Length."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _drop(self) -> None:
        # RST rather than FIN: the client sees a reset connection, as when a load balancer dies
        self.close_connection = True
        try:
            self.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _answer_500(self) -> None:
        self.send_response(500)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(_ERROR_BODY)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(_ERROR_BODY)

    def _control(self, body: bytes) -> None:
        state = self.server.state
        if self.path == _CONTROL + "config":
            cfg = json.loads(body)
            state.configure(cfg["mode"], cfg.get("method"), cfg.get("path"))
        with state.lock:
            out = json.dumps({"hits": state.hits, "log": state.log}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def _handle(self) -> None:
        state = self.server.state
        body = self._body()
        if self.path.startswith(_CONTROL):
            return self._control(body)
        fault = state.fault_for(self.command, self.path)
        status: int | None = None
        try:
            if fault in ("500", "drop"):
                if fault == "500":
                    status = 500
                    self._answer_500()
                else:
                    self._drop()
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(*state.upstream, timeout=120)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                if fault == "after":
                    resp.read()
                    status = 500
                    self._answer_500()
                    return
                if fault == "drop-after":
                    resp.read()
                    self._drop()
                    return
                status = resp.status
                self._relay(resp)
            finally:
                conn.close()
        finally:
            with state.lock:
                state.log.append((self.command, self.path, status))

    def _relay(self, resp: http.client.HTTPResponse) -> None:
        """Stream the upstream answer back: its length if it gave one, chunked otherwise."""
        self.send_response_only(resp.status, resp.reason)
        length = resp.getheader("Content-Length")
        no_body = self.command == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200
        for k, v in resp.getheaders():
            if k.lower() not in _HOP:
                self.send_header(k, v)
        chunked = length is None and not no_body
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if no_body:
            return
        while block := resp.read(1 << 16):
            if chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            else:
                self.wfile.write(block)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    """A proxy process in front of `upstream` (e.g. the moto_server fixture's endpoint), passing
    everything through until told otherwise; `.endpoint` is its URL."""
    proc = subprocess.Popen(
        [sys.executable, __file__, upstream],
        stdin=subprocess.PIPE,  # closed when this process ends, however it ends: the proxy then exits
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # the port, once it listens
        if not line:
            raise RuntimeError(f"fault proxy did not start (exit {proc.wait()})")
        yield FaultProxy(f"http://127.0.0.1:{int(line)}")
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdin.close()
        proc.stdout.close()


def _serve(upstream: str) -> None:
    import os

    server = _Server(("127.0.0.1", 0), _Handler)
    server.state = _State(upstream)
    threading.Thread(target=lambda: (sys.stdin.read(), os._exit(0)), daemon=True).start()
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    _serve(sys.argv[1])
