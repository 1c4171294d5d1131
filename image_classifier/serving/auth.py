"""The bearer token, as a FastAPI dependency: every route but /health, /docs, its files and /openapi.json
takes it when the service was started with SERVE_TOKEN."""

from __future__ import annotations

import hmac

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from image_classifier.secret import Secret


def token_dependency(token: Secret | None):
    """The dependency the routes list: none of them sees the token, so none can log or echo it."""
    bearer = HTTPBearer(auto_error=False, description="the SERVE_TOKEN the service was started with")
    expected = token.reveal().encode("ascii") if token is not None else None

    # async: a plain def dependency would cost every request a trip through the thread pool.
    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if expected is None:
            return
        # The header's own bytes (Starlette decodes headers as latin-1).
        given = credentials.credentials.encode("latin-1") if credentials is not None else b""
        # compare_digest takes the same time wherever the bytes differ, so timing reveals nothing of the token.
        if not hmac.compare_digest(given, expected):
            raise StarletteHTTPException(
                401, "missing or wrong bearer token (Authorization: Bearer ...)", headers={"WWW-Authenticate": "Bearer"}
            )

    return Depends(require_token)
