"""The service's error answers: every error is a JSON object {"error": "..."} (schemas.ErrorBody): 4xx for what a
client got wrong, 503 with Retry-After when the service cannot take the request now, 499 for a client gone,
and 500 (its traceback logged, by CatchAll) for the unexpected."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from image_classifier.errors import ImageError
from image_classifier.serving.admission import RETRY_AFTER_S, ClientGone, Unavailable
from image_classifier.serving.batching import BatcherStopped, InferenceFailed
from image_classifier.serving.schemas import ErrorBody

logger = logging.getLogger(__name__)

# nginx's code for "the client closed the request": counted in the metrics, never received by anyone.
CLIENT_GONE = 499
# What a 503 says besides its error: when to try again.
RETRY_LATER = {"Retry-After": str(RETRY_AFTER_S)}


def error_response(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error answer: an ErrorBody, the schema /docs shows for every error status."""
    return JSONResponse(ErrorBody(error=message).model_dump(), status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Errors raised anywhere below the routes, answered as ErrorBody JSON with their status."""

    @app.exception_handler(ImageError)
    async def image_error(request: Request, exc: ImageError) -> JSONResponse:
        return error_response(str(exc), exc.status)

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        return error_response(str(exc), 503, headers=RETRY_LATER)

    @app.exception_handler(BatcherStopped)
    async def stopped(request: Request, exc: BatcherStopped) -> JSONResponse:
        return error_response(str(exc), 503, headers=RETRY_LATER)

    @app.exception_handler(ClientGone)
    async def gone(request: Request, exc: ClientGone) -> JSONResponse:
        return error_response(str(exc), CLIENT_GONE)

    @app.exception_handler(InferenceFailed)
    async def failed(request: Request, exc: InferenceFailed) -> JSONResponse:
        return error_response(str(exc), 500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(str(exc.detail), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error_response(f"invalid request: {problems}", 422)


class CatchAll:
    """ASGI middleware: an unexpected exception is logged with its traceback and answered as a JSON 500 (not
    Starlette's plain-text page), and the service goes on."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception("unexpected error answering %s %s", scope.get("method"), scope.get("path"))
            if not started:
                response = error_response("unexpected error in the service (logged)", 500)
                await response(scope, receive, send)
