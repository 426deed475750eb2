"""The FastAPI application: routes, the API key, request size limits and OpenAI-style errors."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from glm_engine.errors import InputError
from glm_engine.server.async_engine import Draining, QueueFull
from glm_engine.server.chat import chat_completion
from glm_engine.server.completions import text_completion
from glm_engine.server.generation import ClientGone, EngineError, ServedModel
from glm_engine.server.protocol import ChatCompletionRequest, CompletionRequest, error_response

RETRY_AFTER_S = "1"


class UnknownModel(Exception):
    """A request named another model than the one served (HTTP 404)."""


CLIENT_CLOSED = 499  # nginx's code for a client that went away; nobody reads it, the metrics do
OPEN_PATHS = ("/health", "/metrics")  # answered without the API key (probes and scrapers)


def create_app(served: ServedModel, api_key: str | None = None, max_request_bytes: int = 1 << 20) -> FastAPI:
    """The server's application for one loaded model."""
    app = FastAPI(title="glm-engine", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        if api_key is not None and request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "auth_error")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_request_bytes):
            return error_response(413, f"the request body is over {max_request_bytes} bytes", param="body")
        response = await call_next(request)
        if request.url.path.startswith("/v1/") and request.method == "POST":
            served.metrics.requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        if first.get("type") == "json_invalid":
            return error_response(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'invalid')}")
        return error_response(400, f"{where or 'body'}: {first.get('msg', 'invalid')}", param=where)

    @app.exception_handler(QueueFull)
    async def full(_request: Request, exc: QueueFull) -> JSONResponse:
        return error_response(429, str(exc), "rate_limit_error", headers={"Retry-After": RETRY_AFTER_S})

    @app.exception_handler(Draining)
    async def draining(_request: Request, exc: Draining) -> JSONResponse:
        return error_response(503, str(exc), "service_unavailable", headers={"Retry-After": RETRY_AFTER_S})

    @app.exception_handler(InputError)
    async def bad_input(_request: Request, exc: InputError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(EngineError)
    async def failed(_request: Request, exc: EngineError) -> JSONResponse:
        return error_response(500, f"the engine failed: {exc}", "server_error")

    @app.exception_handler(ClientGone)
    async def gone(_request: Request, _exc: ClientGone) -> Response:
        return Response(status_code=CLIENT_CLOSED)

    def check_model(name: str | None) -> None:
        if name is not None and name != served.name:
            raise UnknownModel(repr(name))

    @app.exception_handler(UnknownModel)
    async def unknown_model(_request: Request, exc: UnknownModel) -> JSONResponse:
        message = f"the model {exc} does not exist; this server serves {served.name!r}"
        return error_response(404, message, param="model")

    @app.get("/health")
    async def health() -> Response:
        if served.engine.failure or served.engine.draining:
            status = "failed" if served.engine.failure else "draining"
            return JSONResponse({"status": status}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(served.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": served.name, "object": "model", "created": served.created, "owned_by": "glm-engine"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Any:
        check_model(body.model)
        return await chat_completion(served, body, request)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_model(body.model)
        return await text_completion(served, body, request)

    return app
