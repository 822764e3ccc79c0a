"""What the vendor surfaces share: bounded multipart uploads and the error wrapper."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import Response

from opencdp.errors import CdpError, Code, invalid
from opencdp.imports.files import Files, FileTooLarge, StoredFile

_OVERHEAD = 64 << 10  # multipart headers and boundaries around the file


async def read_form(request: Request, limit: int) -> FormData:
    """The multipart form of ``request``; a body clearly over ``limit`` is refused unread."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise CdpError(
            Code.INVALID_TYPE, "Content-Type: expected multipart/form-data", "Content-Type"
        )
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + _OVERHEAD:
        raise FileTooLarge(limit)
    try:
        return await request.form(max_files=8, max_fields=64)
    except CdpError:
        raise
    except Exception as exc:  # malformed multipart
        raise invalid("body", f"not a valid multipart form ({exc})") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (``limit_exceeded``) as soon as it is over ``limit`` bytes:
    by its declared length unread, or while it streams in."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise CdpError(Code.LIMIT_EXCEEDED, f"body: larger than {limit} bytes", "body")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise CdpError(Code.LIMIT_EXCEEDED, f"body: larger than {limit} bytes", "body")
    return bytes(body)


def file_field(form: FormData, name: str = "file") -> UploadFile:
    value = form.get(name)
    if not isinstance(value, UploadFile):
        raise CdpError(Code.VALIDATION_FAILED, f"{name}: a file part is required", name)
    return value


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(1 << 20):
        yield chunk


async def store_upload(
    files: Files,
    project_id: int,
    upload: UploadFile,
    limit: int,
    name: str | None = None,
    reserved: StoredFile | None = None,
) -> StoredFile:
    return await files.write(
        project_id, name or upload.filename or "upload", _chunks(upload), limit, reserved
    )


def param(request: Request, form: FormData | None, name: str, default: Any = None) -> Any:
    """A parameter from the query string or, failing that, a form field."""
    value = request.query_params.get(name)
    if value is None and form is not None:
        field = form.get(name)
        value = field if isinstance(field, str) else None
    return default if value is None or value == "" else value


Handler = Callable[[Request], Awaitable[Response]]


def vendor_errors(
    table: Mapping[Code, tuple[Any, str]],
    render: Callable[[Any, str], Response],
    logger: logging.Logger,
) -> Callable[[Handler], Handler]:
    """Wrap a vendor surface's handlers: a :class:`CdpError` becomes the vendor's code from
    ``table`` with its text and the reason; anything else is logged and answered as the
    vendor's internal error, with no detail."""

    def wrap(handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except CdpError as exc:
                code, text = table.get(exc.code, table[Code.INTERNAL])
                return render(code, f"{text}: {exc.message}")
            except Exception:
                logger.exception("%s failed", request.url.path)
                return render(*table[Code.INTERNAL])

        return wrapped

    return wrap
