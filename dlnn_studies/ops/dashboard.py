"""`dlnn dashboard`: optuna-dashboard on the study storage and the artifact store.

The dashboard has no authentication of its own and can delete studies, so it binds to
127.0.0.1 unless told otherwise; binding anywhere else requires HTTP basic-auth credentials
from the environment (DLNN_DASHBOARD_USER, DLNN_DASHBOARD_PASSWORD), checked in front of it.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import os
import signal
import socketserver
import sys
from pathlib import Path
from typing import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ..errors import UsageError
from ..store.storage import artifact_store, close_storage, open_storage
from ..store.urls import redact

ENV_USER = "DLNN_DASHBOARD_USER"
ENV_PASSWORD = "DLNN_DASHBOARD_PASSWORD"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BasicAuth:
    """WSGI middleware: every request needs the configured user and password (constant-time check)."""

    def __init__(self, app: Callable, user: str, password: str, realm: str = "dlnn dashboard"):
        self.app, self.realm = app, realm
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "")
        if hmac.compare_digest(given.encode(), self.expected.encode()):
            return self.app(environ, start_response)
        start_response("401 Unauthorized", [("WWW-Authenticate", f'Basic realm="{self.realm}"'), ("Content-Type", "text/plain")])
        return [b"authentication required\n"]


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - wsgiref's signature
        pass


def credentials(host: str) -> tuple[str, str] | None:
    """Basic-auth credentials from the environment; required unless the host is a loopback address."""
    user, password = os.environ.get(ENV_USER), os.environ.get(ENV_PASSWORD)
    if user and password:
        return user, password
    if not is_loopback(host):
        raise UsageError(
            f"refusing to serve the dashboard on {host}: it has no authentication of its own and can delete studies. "
            f"Set {ENV_USER} and {ENV_PASSWORD} (HTTP basic auth), or keep the default --host 127.0.0.1 and use an SSH tunnel")
    return None


def build_app(url: str, artifacts: str | Path, host: str):
    import optuna_dashboard

    auth = credentials(host)
    store = artifact_store(artifacts)  # a directory or s3://bucket/prefix; checked before the storage is opened
    storage = open_storage(url)
    app = optuna_dashboard.wsgi(storage, artifact_store=store)
    return (BasicAuth(app, *auth) if auth else app), storage


def serve(url: str, host: str = "127.0.0.1", port: int = 8080, artifacts: str | Path = "dlnn_artifacts",
          log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)) -> int:
    app, storage = build_app(url, artifacts, host)
    try:
        server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    except OSError as exc:
        close_storage(storage)
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    shown = f"[{host}]" if ":" in host else host
    log(f"dashboard for {redact(url)} (artifacts in {artifacts}) on http://{shown}:{server.server_port}/dashboard"
        + (" with basic auth" if isinstance(app, BasicAuth) else "") + "; Ctrl-C to stop")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        close_storage(storage)
    return 0
