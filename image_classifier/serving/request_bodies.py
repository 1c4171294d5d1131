"""The request bodies /docs shows for the two predict routes: what uploads.py reads, as OpenAPI.

FastAPI cannot infer them (the routes read the raw body themselves, to bound it as it arrives), so they are
declared here, from the content types uploads.py accepts.
"""

from __future__ import annotations

from image_classifier.serving.uploads import MULTIPART, RAW_IMAGE_TYPES

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in sorted(RAW_IMAGE_TYPES)},
            MULTIPART: {"schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}},
        },
    }
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            }
        },
    }
}
