"""What the surfaces share: bounded bodies and multipart uploads, the error wrapper of their
handlers, and the app around them that answers every other error (unknown path, wrong method,
oversized body, an exception no handler took) in the surface's own envelope."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from opencdp.errors import CdpError, Code, invalid, unavailable
from opencdp.faults import describe, is_transient
from opencdp.imports.files import Files, FileTooLarge, Incoming, StoredFile
from opencdp.surfaces.rawasgi import ASGIApp, Message, Receive, Scope, Send, header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

OVERHEAD = 64 << 10  # multipart headers and boundaries around the file


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


MAX_FIELDS = 64  # the text fields of an upload's form
MAX_FIELD = 1 << 20  # bytes of one text field


class Upload:
    """A multipart upload read in one pass: its text fields, and its ``file`` part, written
    to the files store's spool as it streamed in (:class:`Incoming`), not yet kept."""

    def __init__(self, fields: dict[str, str], file: Incoming | None) -> None:
        self.fields = fields
        self.file = file

    def incoming(self, name: str = "file") -> Incoming:
        if self.file is None:
            raise CdpError(Code.VALIDATION_FAILED, f"{name}: a file part is required", name)
        return self.file


class _FormReader:
    """The callbacks of a multipart parser: the part named ``file`` (with a filename) goes to
    the spool, every other part is a text field (some clients send every field as a file
    part). A form over the bounds of its fields is invalid."""

    def __init__(self, files: Files, limit: int) -> None:
        self.files, self.limit = files, limit
        self.fields: dict[str, str] = {}
        self.file: Incoming | None = None
        self.ended = False
        self._header = self._value = b""
        self._disposition = b""
        self._name = ""
        self._data: bytearray | None = None  # a text field's bytes (None: the file part)
        self._count = 0  # text fields so far

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.part_begin,
            "on_header_field": self.header_field,
            "on_header_value": self.header_value,
            "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished,
            "on_part_data": self.part_data,
            "on_part_end": self.part_end,
            "on_end": self.end,
        }

    def part_begin(self) -> None:
        self._disposition = b""

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header = self._value = b""

    def headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise invalid("body", "a part of the multipart form has no name")
        self._name = _text(options[b"name"])
        if self._name == "file" and b"filename" in options:
            if self.file is not None:
                raise invalid("file", "the form has more than one file part")
            self.file = self.files.receive(self.limit, _text(options[b"filename"]))
            self._data = None
            return
        self._count += 1
        if self._count > MAX_FIELDS:
            raise invalid("body", f"the form has more than {MAX_FIELDS} fields")
        self._data = bytearray()

    def part_data(self, data: bytes, start: int, end: int) -> None:
        if self._data is None:
            assert self.file is not None
            self.file.write(data[start:end])
            return
        if len(self._data) + end - start > MAX_FIELD:
            raise invalid(self._name, f"a form field longer than {MAX_FIELD} bytes")
        self._data += data[start:end]

    def part_end(self) -> None:
        if self._data is not None:
            self.fields[self._name] = _text(bytes(self._data))  # (repeated: the last)

    def end(self) -> None:
        self.ended = True


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


@asynccontextmanager
async def read_upload(request: Request, files: Files, limit: int) -> AsyncIterator[Upload]:
    """The multipart upload of ``request`` (:class:`Upload`), its file part at most ``limit``
    bytes. A body clearly over the limit is refused unread; one that streams past it, is
    not a well-formed multipart form, or ends before its closing boundary is refused. The
    file is written once, as it streams in; whatever the ``with`` block does not keep
    (:func:`keep_upload`) is dropped when it ends."""
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise CdpError(
            Code.INVALID_TYPE, "Content-Type: expected multipart/form-data", "Content-Type"
        )
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + OVERHEAD:
        raise FileTooLarge(limit)
    if not options.get(b"boundary"):
        raise invalid("Content-Type", "a multipart form needs a boundary")
    form = _FormReader(files, limit)
    try:
        try:
            parser = MultipartParser(options[b"boundary"], form.callbacks())
            async for chunk in request.stream():
                parser.write(chunk)
            parser.finalize()
        except (CdpError, BodyTooLarge, ClientDisconnect):
            raise
        except OSError:
            raise  # the spool's disk (a passing fault: the handler says so)
        except Exception as exc:
            raise invalid("body", f"not a valid multipart form ({exc})") from None
        if not form.ended:
            raise invalid("body", "the multipart form ends before its closing boundary")
        yield Upload(form.fields, form.file)
    finally:
        if form.file is not None:
            form.file.drop()


async def keep_upload(
    files: Files,
    project_id: int,
    incoming: Incoming,
    name: str | None = None,
    reserved: StoredFile | None = None,
) -> StoredFile:
    """Keep a received upload as a file of the project (:meth:`Files.store`: made durable off
    the event loop)."""
    return await run_in_threadpool(files.store, project_id, incoming, name, reserved)


def param(request: Request, form: Mapping[str, Any] | None, name: str, default: Any = None) -> Any:
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
