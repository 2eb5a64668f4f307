"""A TEST DOUBLE for an OPA server: OPA's Policy and Data API over HTTP, decided by regorus.

No OPA binary can be installed where allmende's tests run, so the remote engine adapter
(``allmende.policy.remote.RemotePolicy``, for towns that run OPA as a sidecar) is tested
against this stand-in. It is not OPA. It implements the part of OPA's REST API (v1) that
opa-python-client 3.0.0 calls, with OPA's status codes and JSON shapes:

* ``GET /health``                                   → 200 ``{}``
* ``GET /v1/policies``                               → ``{"result": [{"id", "raw"}, …]}``
* ``PUT|GET|DELETE /v1/policies/<id>``              → 200; a module that does not parse (or
  breaks the set of modules) → 400 ``{"code": "invalid_parameter", "message", "errors"}``
* ``PUT|GET|DELETE /v1/data/<path>``                → 204 / 200 ``{"result": …}`` / 204
* ``POST /v1/data/<path>`` with ``{"input": …}``    → 200 ``{"result": …}``, or ``{}`` when
  the document is undefined; an evaluation error → 500 ``{"code": "internal_error", …}``

Documents are evaluated by regorus (a real Rego engine, the one the embedded engine uses),
so every answer is a real evaluation of the pushed modules against the pushed data, never a
canned reply. What real OPA does beyond this (bundles, decision logs, partial evaluation,
its own built-ins' corner cases) is not imitated. The server handles one request at a time
on its own thread, which is also the only thread that touches regorus.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import regorus

from allmende.policy.engine import regorus_message

__all__ = ["OpaDouble"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class OpaDouble:
    """Start with ``start()`` (or ``with``), stop with ``stop()``; ``url`` is its API root."""

    def __init__(self) -> None:
        self.policies: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.calls: list[tuple[str, str]] = []
        self._engine: Any = None  # built lazily on the server thread
        self._server = HTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._serve, daemon=True, name="opa-double")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> OpaDouble:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> OpaDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        try:
            self._server.serve_forever(poll_interval=0.05)
        finally:
            self._engine = None  # regorus objects are dropped on the thread that made them

    # --- what the handler calls, always on the server thread ----------------------------

    def compile(self, policies: dict[str, str]) -> Any:
        """An engine with ``policies`` and the data; raises RuntimeError as regorus does."""
        engine = regorus.Engine()
        for pid, raw in sorted(policies.items()):
            engine.add_policy(pid, raw)
        engine.add_data_json(json.dumps(self.data))
        return engine

    def evaluate(self, path: list[str], input_json: str | None) -> tuple[bool, Any]:
        """(defined, value) of ``data.<path>``."""
        if self._engine is None:
            self._engine = self.compile(self.policies)
        engine = self._engine.clone()
        if input_json is not None:
            engine.set_input_json(input_json)
        ref = "data" + "".join(
            f".{p}" if _IDENT.fullmatch(p) else f"[{json.dumps(p)}]" for p in path
        )
        answer = engine.eval_query(ref)
        rows = answer.get("result") or []
        if not rows:
            return False, None
        return True, rows[0]["expressions"][0]["value"]

    def changed(self) -> None:
        self._engine = None


def _segments(path: str, prefix: str) -> list[str]:
    return [p for p in path[len(prefix) :].split("?")[0].split("/") if p]


def _parent(data: dict[str, Any], path: list[str], *, create: bool) -> dict[str, Any] | None:
    """The object that holds ``path``'s last segment (made on the way when ``create``)."""
    node = data
    for part in path[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            if not create:
                return None
            nxt = node[part] = {}
        node = nxt
    return node


def _handler(opa: OpaDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.0: one request per connection, so a single-threaded server never waits on
        # an idle keep-alive connection of another client.
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet in tests

        def _reply(self, status: int, body: Any = None) -> None:
            payload = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _route(self, method: str) -> None:
            opa.calls.append((method, self.path))
            path = self.path.split("?")[0]
            try:
                if path == "/health" and method == "GET":
                    self._reply(200, {})
                elif path.rstrip("/") == "/v1/policies" and method == "GET":
                    listing = [{"id": i, "raw": r} for i, r in sorted(opa.policies.items())]
                    self._reply(200, {"result": listing})
                elif path.startswith("/v1/policies/"):
                    self._policy(method, "/".join(_segments(path, "/v1/policies/")))
                elif path == "/v1/data" or path.startswith("/v1/data/"):
                    self._data(method, _segments(path, "/v1/data"))
                else:
                    self._reply(404, {"code": "resource_not_found", "message": "not found"})
            except Exception as exc:  # a bug in the double: answer like OPA's 500
                self._reply(500, {"code": "internal_error", "message": repr(exc)})

        def _policy(self, method: str, pid: str) -> None:
            if method == "PUT":
                raw = self._body().decode("utf-8", "replace")
                candidate = {**opa.policies, pid: raw}
                try:
                    opa.compile(candidate)
                except RuntimeError as exc:
                    message = regorus_message(exc)
                    self._reply(
                        400,
                        {
                            "code": "invalid_parameter",
                            "message": "error(s) occurred while compiling module(s)",
                            "errors": [
                                {
                                    "code": "rego_parse_error",
                                    "message": message,
                                    "location": {"file": pid},
                                }
                            ],
                        },
                    )
                    return
                opa.policies = candidate
                opa.changed()
                self._reply(200, {})
            elif pid not in opa.policies:
                message = f'storage_not_found_error: policy id "{pid}"'
                self._reply(404, {"code": "resource_not_found", "message": message})
            elif method == "GET":
                self._reply(200, {"result": {"id": pid, "raw": opa.policies[pid]}})
            elif method == "DELETE":
                del opa.policies[pid]
                opa.changed()
                self._reply(200, {})
            else:
                self._reply(405, {"code": "invalid_parameter", "message": "method not allowed"})

        def _data(self, method: str, path: list[str]) -> None:
            if method == "PUT":
                try:
                    value = json.loads(self._body() or b"null")
                except ValueError as exc:
                    self._reply(400, {"code": "invalid_parameter", "message": str(exc)})
                    return
                if not path:
                    opa.data = value if isinstance(value, dict) else {}
                else:
                    parent = _parent(opa.data, path, create=True)
                    assert parent is not None
                    parent[path[-1]] = value
                opa.changed()
                self._reply(204)
            elif method == "DELETE":
                parent = _parent(opa.data, path, create=False) if path else None
                if parent is None or path[-1] not in parent:
                    message = f"storage_not_found_error: /{'/'.join(path)}"
                    self._reply(404, {"code": "resource_not_found", "message": message})
                    return
                del parent[path[-1]]
                opa.changed()
                self._reply(204)
            elif method in ("GET", "POST"):
                input_json = None
                if method == "POST":
                    body = json.loads(self._body() or b"{}")
                    if isinstance(body, dict) and "input" in body:
                        input_json = json.dumps(body["input"])
                try:
                    defined, value = opa.evaluate(path, input_json)
                except RuntimeError as exc:
                    self._reply(500, {"code": "internal_error", "message": regorus_message(exc)})
                    return
                self._reply(200, {"result": value} if defined else {})
            else:
                self._reply(405, {"code": "invalid_parameter", "message": "method not allowed"})

        def do_GET(self) -> None:
            self._route("GET")

        def do_PUT(self) -> None:
            self._route("PUT")

        def do_POST(self) -> None:
            self._route("POST")

        def do_DELETE(self) -> None:
            self._route("DELETE")

    return Handler
