"""Test helpers for remote write: a small protobuf reader for
``WriteRequest`` bodies, and a loopback receiver that records each POST and
answers with scripted statuses."""

from __future__ import annotations

import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cramjam


def _varint(b: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return n, i


def fields(b: bytes) -> list[tuple[int, object]]:
    """(field number, bytes | int | float) of a protobuf message."""
    out, i = [], 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wire = key >> 3, key & 7
        if wire == 2:
            n, i = _varint(b, i)
            out.append((num, b[i:i + n]))
            i += n
        elif wire == 1:
            out.append((num, struct.unpack("<d", b[i:i + 8])[0]))
            i += 8
        elif wire == 0:
            v, i = _varint(b, i)
            out.append((num, v))
        else:
            raise AssertionError(f"unexpected wire type {wire}")
    return out


def decode(body: bytes) -> list[tuple[dict[str, str], list[tuple[float, int]]]]:
    series = []
    for _, ts in fields(bytes(cramjam.snappy.decompress_raw(body))):
        labels, samples = {}, []
        for num, part in fields(ts):
            if num == 1:
                (_, name), (_, value) = fields(part)
                labels[name.decode()] = value.decode()
            else:
                f = dict(fields(part))
                samples.append((f[1], f[2]))
        series.append((labels, samples))
    return series


class Receiver:
    """A loopback server answering POSTs with scripted statuses, recording
    (headers, body) of each."""

    def __init__(self, *statuses: int, tls=None) -> None:
        self.statuses = list(statuses) or [204]
        self.got: list[tuple[dict[str, str], bytes]] = []
        rec = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                rec.got.append((dict(self.headers), body))
                status = rec.statuses.pop(0) if len(rec.statuses) > 1 else rec.statuses[0]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}/api/v1/write"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
