"""Real HTTP servers on 127.0.0.1 for the OpenAI backend tests (standard library only).

`ChatServer` is a ThreadingHTTPServer on a free loopback port that answers POST
/v1/chat/completions with whatever its `respond(count, body)` function returns, records every
request (headers and JSON body), tracks how many requests are in flight at once, and refuses
more than `max_requests` so a client bug cannot loop forever. Three responders:
`model_responder` (a real model behind the endpoint), `faulty_responder` (scripted faults before a
deterministic answer) and `random_faults_responder` (a seeded share of faults on every request).
Faults: "429" (with Retry-After), "500", "hang" (no reply until the client times out), "malformed"
(a 200 whose body is not JSON), "empty" (a 200 chat completion with no choices). A responder gets
(request number, request dict with "path", "headers" and "body") and returns (status, headers,
payload) or HANG; a `bytes` payload is sent as it is.
"""
from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from porover_lib.config import SamplingParams

SYSTEM_FINGERPRINT = "fp_loopback"  # what every reply says of the server's configuration, as OpenAI's do
HANG = "hang"  # a responder's answer for "never reply" (until the client gives up or the server stops)
FAULTS = ("429", "500", HANG, "malformed", "empty")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do; every reply carries Content-Length
    server: ChatServer

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        srv = self.server
        with srv.lock:
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = {"path": self.path, "headers": headers, "body": json.loads(raw or b"{}")}
            srv.requests.append(request)
            count = len(srv.requests)
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            if count > srv.max_requests:
                self._send(400, {}, {"error": {"message": f"test server: more than {srv.max_requests} requests"}})
            elif self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {}, {"error": {"message": f"no route {self.path}"}})
            else:
                answer = srv.respond(count, request)
                if answer == HANG:
                    srv.released.wait(srv.hang_seconds)
                    self.close_connection = True
                else:
                    self._send(*answer)
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _send(self, status: int, headers: dict, payload: dict | bytes) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before we answered


class ChatServer(ThreadingHTTPServer):
    """`with ChatServer(respond) as server:` serves on `server.url` until the block ends."""

    daemon_threads = True

    def __init__(self, respond, max_requests: int = 50, hang_seconds: float = 10.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.respond, self.max_requests, self.hang_seconds = respond, max_requests, hang_seconds
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.released = threading.Event()  # set on stop: hanging handlers return at once

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()


def chat_completion(count: int, body: dict, texts: list[str], finish: list[str], prompt_tokens: int,
                    completion_tokens: int) -> tuple[int, dict, dict]:
    choices = [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": f}
               for i, (t, f) in enumerate(zip(texts, finish))]
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    return 200, {}, {"id": f"chatcmpl-{count}", "object": "chat.completion", "created": int(time.time()),
                     "model": body.get("model"), "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choices,
                     "usage": usage}


def model_responder(backend, honour_n: bool = True, delay: float = 0.0):
    """Answer with `backend.complete` (an HFBackend); honour_n=False mimics servers that ignore `n`."""
    lock = threading.Lock()  # one generation at a time: torch's seed is global

    def respond(count: int, request: dict):
        body = request["body"]
        time.sleep(delay)
        n = body.get("n", 1) if honour_n else 1
        sampling = SamplingParams(n=n, temperature=body.get("temperature", 1.0), top_p=body.get("top_p", 1.0),
                                  max_new_tokens=body.get("max_tokens") or body.get("max_completion_tokens") or 16,
                                  batch_size=n)
        with lock:
            completions = backend.complete([body["messages"]], sampling, seed=body.get("seed") or 0)[0]
        return chat_completion(count, body, [c.text for c in completions], [c.finish_reason for c in completions],
                               completions[0].prompt_tokens, sum(c.completion_tokens for c in completions))

    return respond


def echo_text(body: dict, index: int = 0) -> str:
    """The faulty server's deterministic answer: which choice, to which user message."""
    return f"reply {index} to: {body['messages'][-1]['content']}"


def reply(fault: str, count: int, body: dict, retry_after: str | None = "0.05"):
    """The server's answer to one request meeting `fault` (one of FAULTS, or "ok": the echo)."""
    if fault == "429":
        return 429, ({"Retry-After": retry_after} if retry_after else {}), \
            {"error": {"message": "rate limited", "type": "rate_limit_error"}}
    if fault == "500":
        return 500, {}, {"error": {"message": "internal error", "type": "server_error"}}
    if fault == HANG:
        return HANG
    if fault == "malformed":
        return 200, {}, b'{"id": "chatcmpl-cut", "choices": [{"index": 0, "message": {"content": "half'
    if fault == "empty":
        return chat_completion(count, body, [], [], 5, 0)
    if fault != "ok":
        raise ValueError(f"unknown fault {fault!r}; known: {FAULTS}")
    n = body.get("n", 1)
    return chat_completion(count, body, [echo_text(body, i) for i in range(n)], ["stop"] * n, 5, 3 * n)


def faulty_responder(script: list[str], retry_after: str | None = "0.05"):
    """Request k (1-based) meets fault script[k-1] (one of FAULTS); later ones get an echo."""

    def respond(count: int, request: dict):
        fault = script[count - 1] if count <= len(script) else "ok"
        return reply(fault, count, request["body"], retry_after)

    return respond


def random_faults_responder(rate: float = 0.3, seed: int = 0, faults: tuple[str, ...] = FAULTS,
                            retry_after: str = "0.01"):
    """Each request meets a fault with probability `rate`, drawn in turn from `faults`; `respond.seen`
    counts what was served. The draw depends on the request number only, so a run is repeatable."""
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def respond(count: int, request: dict):
        draw = random.Random(f"{seed}-{count}")
        fault = faults[draw.randrange(len(faults))] if draw.random() < rate else "ok"
        with lock:
            seen[fault] = seen.get(fault, 0) + 1
        return reply(fault, count, request["body"], retry_after)

    respond.seen = seen
    return respond
