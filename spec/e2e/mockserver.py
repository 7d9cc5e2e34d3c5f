"""One stand-in HTTP server for the e2e tests: webhook receivers, hostile
APIs, GitHub/GitLab stand-ins. A test gives a function of the request that
returns (status, headers, body); every request is recorded.

    with MockServer(lambda req: (200, {}, b"ok")) as srv:
        ... srv.url ... srv.requests ...

`respond(req)` may also return a dict or list (sent as JSON), None for
an empty 200, or a function, called with the request handler, that writes
the whole answer itself (a body that never ends, a silent server). `req` has method, path (before '?'), query (dict of first
values), headers (an email.message.Message: case-insensitive), body (bytes)
and json() (the body decoded, or None)."""
import http.server
import json
import socket
import threading
import urllib.parse


def closed_port():
    """A loopback port nobody listens on (bound, then closed: it is free)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Request:
    def __init__(self, handler, body):
        url = urllib.parse.urlsplit(handler.path)
        self.method = handler.command
        self.path = url.path
        self.raw_query = url.query
        self.query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        self.headers = handler.headers
        self.body = body

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class MockServer:
    def __init__(self, respond, port=0):
        self.respond = respond
        self.requests = []
        self.lock = threading.Lock()
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def handle_any(self):
                n = int(self.headers.get("Content-Length") or "0")
                req = Request(self, self.rfile.read(n) if n else b"")
                with outer.lock:
                    outer.requests.append(req)
                got = outer.respond(req)
                if callable(got):
                    got(self)
                    return
                status, headers, body = 200, {}, b""
                if isinstance(got, tuple):
                    status, headers, body = got
                elif got is not None:
                    body = got
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                    headers = {"Content-Type": "application/json", **headers}
                elif isinstance(body, str):
                    body = body.encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

        class Server(http.server.ThreadingHTTPServer):
            # the default listen backlog (5) drops SYNs of parallel clients
            request_queue_size = 64
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", port), H)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def webhook_receiver(secret, log_path, port=0):
    """A Standard Webhooks receiver for shell tests: verifies each POST's
    signature with `secret` (whsec_...), appends {"id", "valid", "event"} as
    one JSON line to log_path, answers 200 (401 for a bad signature)."""
    import base64
    import hashlib
    import hmac
    import time
    key = base64.b64decode(secret[len("whsec_"):])

    def respond(req):
        wid, ts = req.headers["webhook-id"] or "", req.headers["webhook-timestamp"] or "0"
        want = "v1," + base64.b64encode(
            hmac.new(key, wid.encode() + b"." + ts.encode() + b"." + req.body, hashlib.sha256).digest()).decode()
        ok = hmac.compare_digest(want, req.headers["webhook-signature"] or "") and abs(time.time() - int(ts)) < 300
        with open(log_path, "a") as f:
            f.write(json.dumps({"id": wid, "valid": ok, "event": req.json()}) + "\n")
        return (200 if ok else 401), {}, b""
    return MockServer(respond, port=port)


if __name__ == "__main__":
    # python3 spec/e2e/mockserver.py webhook SECRET LOG [PORT]: serve until
    # killed, after printing the port on stdout.
    import sys
    if len(sys.argv) < 4 or sys.argv[1] != "webhook":
        sys.exit("usage: mockserver.py webhook SECRET LOG [PORT]")
    srv = webhook_receiver(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 0)
    print(srv.httpd.server_address[1], flush=True)
    threading.Event().wait()
