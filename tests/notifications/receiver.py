"""A webhook receiver on 127.0.0.1 that verifies each request as a customer's would.

It checks the Standard Webhooks signature with the ``standardwebhooks`` library and the
endpoint's secret, records every request (headers, body, whether it verified) and answers
from a script: ``answers = [503, 503]`` fails twice, then every request gets ``200``.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

# The signing secret the notification tests give their endpoints and their receiver.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: bool
    error: str

    @property
    def payload(self) -> dict:
        return json.loads(self.body)


class Receiver:
    def __init__(self, *, path: str = "/hooks/usage", tls: ssl.SSLContext | None = None) -> None:
        self.secret: str | None = None
        self.answers: list[int] = []
        self.location = "http://127.0.0.1:1/elsewhere"
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified, error = False, ""
                try:
                    if receiver.secret is None:
                        raise WebhookVerificationError("no secret given to the receiver")
                    Webhook(receiver.secret).verify(body, headers)
                    verified = True
                except WebhookVerificationError as failure:
                    error = str(failure)
                with receiver.lock:
                    receiver.received.append(Received(self.path, headers, body, verified, error))
                    status = receiver.answers.pop(0) if receiver.answers else 200
                if not verified and status < 300:
                    status = 401  # as a receiver does with a request it cannot trust
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def requests(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def wait_for(self, count: int, *, within: float = 30.0, settle: float = 1.0) -> list[Received]:
        """The requests once ``count`` arrived (or ``within`` passed), after ``settle`` more
        seconds in which a duplicate would show up."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and len(self.requests()) < count:
            time.sleep(0.05)
        time.sleep(settle)
        return self.requests()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
