"""What the surfaces share: bounded bodies and multipart uploads, the error wrapper of their
handlers, and the app around them that answers every other error (unknown path, wrong method,
oversized body, an exception no handler took) in the surface's own envelope."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from opencdp.errors import CdpError, Code, invalid, unavailable
from opencdp.faults import describe, is_transient
from opencdp.imports.files import Files, FileTooLarge, StoredFile
from opencdp.surfaces.rawasgi import ASGIApp, Message, Receive, Scope, Send, header

OVERHEAD = 64 << 10  # multipart headers and boundaries around the file


async def read_form(request: Request, limit: int) -> FormData:
    """The multipart form of ``request``; a body clearly over ``limit`` is refused unread."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise CdpError(
            Code.INVALID_TYPE, "Content-Type: expected multipart/form-data", "Content-Type"
        )
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + OVERHEAD:
        raise FileTooLarge(limit)
    try:
        return await request.form(max_files=8, max_fields=64)
    except (CdpError, BodyTooLarge):
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


def named(exc: CdpError) -> str:
    """The error's message, naming its field first when the message does not already."""
    if exc.field and exc.field not in exc.message:
        return f"{exc.field}: {exc.message}"
    return exc.message


def vendor_errors(
    table: Mapping[Code, tuple[Any, str]],
    render: Callable[[Any, str], Response],
    logger: logging.Logger,
) -> Callable[[Handler], Handler]:
    """Wrap a vendor surface's handlers: a :class:`CdpError` becomes the vendor's code from
    ``table`` with its text and the reason; a passing fault of storage (a full disk, a locked
    database) the vendor's code for ``unavailable`` with the reason; anything else is logged
    and answered as the vendor's internal error, with no detail."""

    def wrap(handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException:
                raise  # no route, wrong method, body too large: the app's handler answers
            except CdpError as exc:
                code, text = table.get(exc.code, table[Code.INTERNAL])
                return render(code, f"{text}: {named(exc)}")
            except Exception as exc:
                if is_transient(exc):  # e.g. a full disk: say so, and that nothing was kept
                    logger.warning("%s: %s", request.url.path, describe(exc))
                    code, text = table.get(Code.UNAVAILABLE, table[Code.INTERNAL])
                    return render(code, f"{text}: {unavailable(describe(exc)).message}")
                logger.exception("%s failed", request.url.path)
                return render(*table[Code.INTERNAL])

        return wrapped

    return wrap


# ---- the app around a surface's handlers ------------------------------------------------


class BodyTooLarge(HTTPException):
    """A request body over the limit of its path (raised while it streams in)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body: larger than {limit} bytes")
        self.limit = limit


class Guard:
    """ASGI middleware inside a surface's app, around its routes.

    An exception that no handler took is logged with its trace and answered with the surface's
    internal error (``internal``), so a client never sees a plain-text 500 and the connection
    stays usable. With ``body_limit``, a body over the limit its path allows is refused before
    a byte is read when its length is declared, or as soon as it streams past the limit
    (:class:`BodyTooLarge`, an HTTP 413 the surface's handler of HTTP errors answers).
    """

    def __init__(
        self,
        app: ASGIApp,
        internal: Callable[[], Response],
        logger: logging.Logger,
        body_limit: Callable[[Scope], int] | None = None,
        too_large: Callable[[int], Response] | None = None,
    ) -> None:
        self.app = app
        self.internal = internal
        self.logger = logger
        self.body_limit = body_limit
        self.too_large = too_large

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.body_limit is not None:
            limit = self.body_limit(scope)
            declared = header(scope, b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                if self.too_large is not None:
                    await self.too_large(limit)(scope, receive, send)
                    return
                receive = _bounded(receive, limit, declared_over=True)
            else:
                receive = _bounded(receive, limit)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:
            return
        except Exception:
            self.logger.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise  # the answer is cut short: the server closes the connection
            await self.internal()(scope, receive, send)


def _bounded(receive: Receive, limit: int, declared_over: bool = False) -> Receive:
    size = 0

    async def bounded() -> Message:
        nonlocal size
        if declared_over:
            raise BodyTooLarge(limit)
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise BodyTooLarge(limit)
        return message

    return bounded


HttpAnswer = Callable[[Request, int, str], Response]


def surface_app(
    routes: Sequence[BaseRoute],
    http_error: HttpAnswer,
    internal: Callable[[], Response],
    logger: logging.Logger,
) -> Starlette:
    """A vendor surface's Starlette app: its routes, every HTTP-level error (no such path,
    a method the path does not take, a malformed form) answered by ``http_error(request,
    status, detail)`` in the vendor's envelope, and any other exception by ``internal()``."""

    async def on_http(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return http_error(request, exc.status_code, str(exc.detail))
        return http_error(request, 500, "")

    app = Starlette(
        routes=list(routes),
        exception_handlers={HTTPException: on_http},
        middleware=[Middleware(Guard, internal=internal, logger=logger)],
    )
    # A path the surface does not serve is the vendor's "not found", never a redirect to a
    # neighbouring path (Starlette's default for a trailing slash), which no client expects.
    app.router.redirect_slashes = False
    return app


def wrong_method(request: Request) -> str:
    """The reason of a 405, naming the method and the path."""
    return f"method: {request.method} is not allowed on {request.url.path}"
