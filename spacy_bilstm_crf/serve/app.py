"""The HTTP routes: each parses its JSON, calls one method of `Backend` and turns the result
or the error into a response. Starlette: a small, well-kept ASGI toolkit (what FastAPI is
built on) with a test client, served by uvicorn; the protocol is a handful of JSON routes
(`/health`, `/setup`, `/predict`, `/webhook`, `/train`, and `/versions` and `/metrics` that
Label Studio may ask for), which need no request models or generated docs.

Routes run in Starlette's thread pool (they are plain functions), so a long prediction or a
journal fsync never holds up the event loop, and training, in its own thread, never holds up
a prediction. With credentials, every route asks for HTTP basic auth (Label Studio's backend
settings send it with each call; the webhook it creates for the backend carries no auth, so
the same `Authorization` header goes into the project's webhook settings); the credentials
are compared in constant time and never logged.
"""

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .backend import Backend
from .protocol import ProtocolError

log = logging.getLogger(__name__)


def create_app(backend: Backend, credentials: tuple[str, str] | None = None) -> Starlette:
    """The ASGI app for `backend`; `credentials` `(user, password)` turn on basic auth."""

    def post(method: Callable[[Any], Any]) -> Callable:
        async def route(request: Request) -> Response:
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                return _error(400, f"the request body is not JSON: {error}")
            try:
                answer = await run_in_threadpool(method, body)
            except ProtocolError as error:
                return _error(error.status, str(error))
            except Exception as error:  # a bug: answered and logged, the server goes on
                log.error("%s %s failed", request.method, request.url.path, exc_info=error)
                return _error(500, f"internal error: {type(error).__name__}")
            status, payload = answer if isinstance(answer, tuple) else (200, answer)
            return JSONResponse(payload, status_code=status)

        return route

    async def health(request: Request) -> Response:
        return JSONResponse(backend.health())

    async def versions(request: Request) -> Response:
        return JSONResponse(backend.versions())

    async def metrics(request: Request) -> Response:
        return JSONResponse({})

    routes = [
        Route("/", health, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/setup", post(backend.setup), methods=["POST"]),
        Route("/predict", post(backend.predict), methods=["POST"]),
        Route("/webhook", post(backend.webhook), methods=["POST"]),
        Route("/train", post(backend.train), methods=["POST"]),
        Route("/versions", versions, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    middleware = [Middleware(BasicAuth, credentials=credentials)] if credentials else []
    return Starlette(routes=routes, middleware=middleware)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": "error"}, status_code=status)


class BasicAuth:
    """HTTP basic auth on every route."""

    def __init__(self, app: ASGIApp, credentials: tuple[str, str]) -> None:
        self.app = app
        self.expected = f"{credentials[0]}:{credentials[1]}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            response = JSONResponse(
                {"error": "authentication required", "status": "error"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="spacy-bilstm-crf"'},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, value = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self.expected)
