"""What `smoothgen serve` adds to Ray Serve's HTTP proxy: a request-body limit enforced before a body is
read, and JSON bodies for the errors the proxy answers itself.

Ray Serve's proxy reads a request's whole body into memory and forwards it to a replica; it also answers
some requests itself in plain text (its router's 429 when every replica is full, 500 when a replica died,
503 when none is ready, 404 for an unknown route). This ASGI middleware runs inside the proxy, where Ray
Serve lets a deployment add middlewares (the environment variable RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH
= "smoothgen.serve_proxy:middlewares", set by `smoothgen serve` before it starts Ray, so the proxy it
starts inherits it):

- a request whose Content-Length exceeds the limit gets 413 at once, and its body is never read; a body
  sent without Content-Length (chunked) is cut off as soon as it passes the limit;
- an error response (status >= 400) that is not JSON is rewritten as {"error": one line, "status"},
  keeping its status and Retry-After.

The limit comes from SMOOTHGEN_MAX_BODY (bytes). Each replica checks the same limit again
(`smoothgen.serve.build_app`), so a proxy started without this middleware (a cluster whose nodes were
started by hand) still never lets a replica read an oversized body. This module imports only the
standard library and Starlette (the proxy's own dependency).
"""
from __future__ import annotations

import json
import os

#: The environment variable that carries the body limit to the proxy.
MAX_BODY_ENV = "SMOOTHGEN_MAX_BODY"
#: Ray Serve's hook for proxy middlewares, and its value for this module.
CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "smoothgen.serve_proxy:middlewares"
#: The most bytes of a plain-text error the JSON error quotes.
MAX_MESSAGE = 300


def middlewares():
    """The proxy's middlewares (Ray Serve calls this in the proxy process)."""
    from starlette.middleware import Middleware

    return [Middleware(BodyLimitAndJsonErrors, max_body=int(os.environ.get(MAX_BODY_ENV, 4 * 1024 * 1024)))]


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def error_body(status: int, message: str) -> bytes:
    line = (message.strip().splitlines() or [""])[0][:MAX_MESSAGE] or f"HTTP {status}"
    return json.dumps({"error": line, "status": status}).encode()


async def send_json_error(send, status: int, message: str, headers: list | None = None) -> None:
    body = error_body(status, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def too_large_message(limit: int, where: str = "the HTTP proxy") -> str:
    return f"the request body exceeds this server's limit of {limit} bytes (smoothgen serve --max-body; refused by {where})"


class BodyLimitAndJsonErrors:
    """Pure ASGI middleware: the body limit and JSON errors described in the module docstring."""

    def __init__(self, app, max_body: int):
        self.app = app
        self.max_body = int(max_body)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = _header(scope, b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await send_json_error(send, 400, "the Content-Length header is not a number")
            if declared > self.max_body:
                return await send_json_error(send, 413, too_large_message(self.max_body), [(b"connection", b"close")])
        state = {"received": 0, "answered": False, "started": False, "held": None, "chunks": []}

        async def limited_receive():
            if state["answered"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body:
                    if not state["started"]:
                        state["answered"] = state["started"] = True
                        await send_json_error(send, 413, too_large_message(self.max_body), [(b"connection", b"close")])
                    return {"type": "http.disconnect"}
            return message

        async def json_send(message):
            if state["answered"] and state["held"] is None:
                return  # a 413 was sent already: the app's own answer to the cut-off request is dropped
            kind = message["type"]
            if kind == "http.response.start":
                state["started"] = True
                content_type = dict((k.lower(), v) for k, v in message.get("headers", ())).get(b"content-type", b"")
                if message["status"] >= 400 and not content_type.startswith(b"application/json"):
                    state["held"] = message  # rewritten once its body is complete
                    return
                return await send(message)
            if kind == "http.response.body" and state["held"] is not None:
                state["chunks"].append(message.get("body", b""))
                if sum(len(c) for c in state["chunks"]) > 64 * 1024:
                    state["chunks"] = [b"".join(state["chunks"])[:64 * 1024]]
                if not message.get("more_body", False):
                    held, state["held"] = state["held"], None
                    keep = [(k, v) for k, v in held.get("headers", ()) if k.lower() in (b"retry-after", b"www-authenticate")]
                    text = b"".join(state["chunks"]).decode("utf-8", errors="replace")
                    state["answered"] = True
                    await send_json_error(send, held["status"], text or f"HTTP {held['status']}", keep)
                return
            return await send(message)

        await self.app(scope, limited_receive, json_send)
