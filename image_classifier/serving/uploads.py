"""Request bodies to model inputs: the body limit, reading, multipart parsing and decoding, off the loop.

On the event loop a request's bytes are only received (a constant cost per chunk the server reads), and
parsed only when the whole body is at most INLINE_BYTES (a bounded cost). Otherwise parsing them (the
multipart form, an image's header: a PNG may hold any number of chunks before its pixels) and decoding run
in the decoding threads, one job per image, so that at most --decode_workers images are decoded at once
(each holds at most 16 bytes per declared pixel, see image_classifier.images) and requests take turns image
by image. An image is released as soon as it is converted to its 3 x 32 x 32 input.

Limits: the body (--max_upload_bytes, counted as it arrives), the number of parts (--max_batch_images), each
image's declared pixels (--max_image_pixels) and, across a request's images, the declared pixels decoded in
all (--max_request_pixels): the decoding work a request can ask for has a bound, whatever its images declare.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from image_classifier.errors import ImageError
from image_classifier.images import DEFAULT_IMAGE_SIZE, convert_image, declared_pixels, open_image
from image_classifier.serving.admission import ClientGone, Ticket
from image_classifier.serving.error_responses import error_response

# Raw bodies are accepted with these types; the bytes decide the format (PNG, JPEG, ...), not the header.
RAW_IMAGE_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/jpg", "image/bmp", "image/x-ms-bmp", "image/gif", "image/webp"}
    | {"application/octet-stream"}
)
MULTIPART = "multipart/form-data"
# A body of at most 4 KiB (a CIFAR-size PNG is about 3 KB) is parsed on the event loop: the worst such body
# (a PNG of nothing but empty chunks, a JPEG of empty markers) costs about 4 ms there, and images declaring
# at most 128 x 128 pixels are decoded there too (well under a millisecond); anything larger goes to the
# decoding threads.
INLINE_BYTES = 4096
INLINE_PIXELS = 128 * 128


@dataclass(frozen=True)
class UploadLimits:
    max_upload_bytes: int
    max_batch_images: int
    max_image_pixels: int
    max_request_pixels: int


@dataclass(frozen=True)
class Images:
    names: list[str | None]  # a file part's filename; None for a raw body
    inputs: np.ndarray  # uint8 N x 3 x 32 x 32


class UploadTooLarge(ImageError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"upload too large: the limit is {limit:,} bytes (--max_upload_bytes)", status=413)


class UploadLimit:
    """ASGI middleware: refuse a body over the limit, at once from Content-Length, else as soon as the bytes
    received pass it."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(str(UploadTooLarge(self.max_bytes)), 413)
            return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise UploadTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


async def read_images(
    request: Request,
    limits: UploadLimits,
    decoders: Executor,
    ticket: Ticket,
    single: bool,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> Images:
    """The request's images as model inputs (image_size x image_size, the served model's); ImageError (4xx) for
    anything a client got wrong."""
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind != MULTIPART and not (single and kind in RAW_IMAGE_TYPES):
        accepted = f"{MULTIPART} or an image type ({', '.join(sorted(RAW_IMAGE_TYPES))})" if single else MULTIPART
        raise ImageError(f"unsupported content type {kind or '(none)'!r}: send {accepted}", status=415)
    body = await _receive_body(request)
    loop = asyncio.get_running_loop()
    # A body this small costs at most a few milliseconds to parse, however it is built: done right here, it
    # saves the trip to a thread (and back) that would cost the typical request more than its decoding.
    small = len(body) <= INLINE_BYTES
    watching = False
    if kind != MULTIPART:
        files = [(None, body)]
    elif small:
        files = file_parts(body, content_type, limits.max_batch_images)
    else:
        ticket.watch_disconnect(request.receive)
        watching = True
        files = await loop.run_in_executor(decoders, file_parts, body, content_type, limits.max_batch_images)
    del body  # the files hold what is needed of it
    if not files:
        raise ImageError("no image in the request: send a file part (multipart) or the image as the body")
    if single and len(files) > 1:
        raise ImageError(f"{len(files)} images sent to /predict, which takes one: use /predict/batch")
    budget = PixelBudget(limits.max_request_pixels)
    inputs = np.empty((len(files), 3, image_size, image_size), np.uint8)
    names = [name for name, _ in files]
    for index in range(len(files)):
        payload = files[index][1]
        files[index] = (names[index], b"")  # the bytes are the decoding job's now: released as it ends
        label = _label(names, index)
        converted = (
            decode(payload, limits.max_image_pixels, budget, label, INLINE_PIXELS, image_size) if small else None
        )
        if converted is None:
            if not watching:
                ticket.watch_disconnect(request.receive)
                watching = True
            converted = await loop.run_in_executor(
                decoders, decode, payload, limits.max_image_pixels, budget, label, None, image_size
            )
        inputs[index] = converted
        del payload, converted
    return Images(names, inputs)


async def _receive_body(request: Request) -> bytearray:
    """The whole body; the UploadLimit middleware stops it at --max_upload_bytes."""
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
    except ClientDisconnect:
        raise ClientGone("the client disconnected while sending its request") from None
    return body


class PixelBudget:
    """The declared pixels a request may still have decoded (--max_request_pixels). Used by one request's
    jobs, which run one after the other: no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, pixels: int) -> None:
        if self.used + pixels > self.limit:
            raise ImageError(
                f"too many pixels in one request: its images declare more than {self.limit:,} pixels in all "
                f"(--max_request_pixels)",
                status=413,
            )
        self.used += pixels


def decode(
    payload: bytes | bytearray,
    max_pixels: int,
    budget: PixelBudget,
    label: str | None,
    at_most: int | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
) -> np.ndarray | None:
    """Header, limits, pixels, conversion (in a decoding thread, but for a small body); the image is closed
    before this returns. None, with nothing taken from the budget, for an image declaring more than
    `at_most` pixels: one to decode in a thread."""
    try:
        image = open_image(payload, max_pixels)
        if at_most is not None and declared_pixels(image) > at_most:
            image.close()
            return None
        try:
            budget.take(declared_pixels(image))
        except ImageError:
            image.close()
            raise
        return convert_image(image, image_size)
    except ImageError as exc:
        if label is None:
            raise
        raise ImageError(f"{label}: {exc}", status=exc.status) from None


def _label(names: list[str | None], index: int) -> str | None:
    """In a batch, an error names the image it is about."""
    return None if len(names) == 1 else f"image {index + 1} ({names[index] or 'unnamed'})"


def file_parts(body: bytearray, content_type: str, max_parts: int) -> list[tuple[str | None, bytes]]:
    """(filename, bytes) of each file part, in order; fields without a filename are skipped but counted.

    In a decoding thread: python-multipart is pure Python, and its cost grows with the body.
    """
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise ImageError("malformed multipart body: no boundary in the Content-Type header")
    form = _Form(max_parts)
    callbacks = {
        "on_part_begin": form.part_begin,
        "on_header_field": form.header_field,
        "on_header_value": form.header_value,
        "on_header_end": form.header_end,
        "on_headers_finished": form.headers_finished,
        "on_part_data": form.part_data,
        "on_part_end": form.part_end,
        "on_end": form.end,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise ImageError(f"malformed multipart body: {exc}") from None
    if not form.ended:
        raise ImageError("malformed multipart body: it ends before its closing boundary")
    return form.files


class _Form:
    """python-multipart's callbacks, keeping only file parts."""

    def __init__(self, max_parts: int) -> None:
        self.max_parts = max_parts
        self.parts = 0
        self.files: list[tuple[str | None, bytes]] = []
        self.ended = False
        self._field = b""
        self._value = b""
        self._disposition = b""
        self._data: list[bytes] | None = None
        self._filename: str | None = None

    def part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise ImageError(
                f"too many images: more than {self.max_parts} parts in one request, the limit is "
                f"{self.max_parts} (--max_batch_images)",
                status=413,
            )
        self._disposition = b""
        self._data = None

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            self._disposition = self._value
        self._field = self._value = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"filename" in options:
            self._filename = options[b"filename"].decode("utf-8", errors="replace")
            self._data = []

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._data is not None:
            self._data.append(bytes(data[start:end]))

    def part_end(self) -> None:
        if self._data is not None:
            self.files.append((self._filename, b"".join(self._data)))
            self._data = None

    def end(self) -> None:
        self.ended = True
