"""A small HTTP server on loopback for the pull tests: serves files by path, with Range, and can cut
a response short. No internet is used."""
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Server:
    """Serves files by path, with Range, and can drop a connection after N bytes of one response."""

    def __init__(self):
        self.routes: dict[str, Path | bytes] = {}
        self.drop_after: dict[str, int] = {}     # path -> bytes sent before the next response is cut
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_GET(self):
                server.log.append((self.path, self.headers.get("Range")))
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                data = body if isinstance(body, bytes) else None
                size = len(data) if data is not None else body.stat().st_size
                start = 0
                m = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                if m and int(m.group(1)) < size:
                    start = int(m.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(size - start))
                self.end_headers()
                limit = server.drop_after.pop(self.path, None)
                src = data if data is not None else None
                with (open(body, "rb") if src is None else _Bytes(src)) as f:
                    f.seek(start)
                    sent = 0
                    while chunk := f.read(1 << 20):
                        if limit is not None and sent + len(chunk) > limit:
                            self.wfile.write(chunk[:limit - sent])
                            self.close_connection = True
                            return
                        self.wfile.write(chunk)
                        sent += len(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # shutdown() waits up to one poll interval: the default half second was most of each test's time.
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def gets(self, path: str) -> list:
        return [r for p, r in self.log if p == path]


class _Bytes:
    def __init__(self, data):
        import io
        self.io = io.BytesIO(data)

    def __enter__(self):
        return self.io

    def __exit__(self, *_):
        return False
