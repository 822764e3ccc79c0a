"""Vendor-neutral errors raised by the core.

Each surface maps a :class:`Code` to its vendor's error code in a table next to the surface;
the core never knows a vendor's numbers.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_TYPE = "invalid_type"
    MISSING_CREDENTIAL = "missing_credential"
    MISSING_PARAMETER = "missing_parameter"
    AUTH_FAILED = "auth_failed"
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 (a code, not a secret)
    EMPTY_PROPERTIES = "empty_properties"
    MISSING_IDENTITY = "missing_identity"
    EMPTY_IDENTITY = "empty_identity"
    VALIDATION_FAILED = "validation_failed"
    LIMIT_EXCEEDED = "limit_exceeded"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    BUSY = "busy"  # a limit on concurrent or queued work: retry later
    # The server cannot keep a promise right now (storage full or failing): nothing was
    # stored; retry later.
    UNAVAILABLE = "unavailable"
    UNSUPPORTED = "unsupported"
    INTERNAL = "internal"


class CdpError(Exception):
    """An error the caller can act on: a code, and a message naming the field and the reason."""

    def __init__(self, code: Code, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def __repr__(self) -> str:
        return f"CdpError({self.code.value!r}, {self.message!r})"


def invalid(field: str, reason: str) -> CdpError:
    """A value that failed validation.

    >>> invalid("amount", "expected a number, got 'abc'").message
    "amount: expected a number, got 'abc'"
    """
    return CdpError(Code.VALIDATION_FAILED, f"{field}: {reason}", field)


def missing(field: str) -> CdpError:
    """A required parameter that was not given."""
    return CdpError(Code.MISSING_PARAMETER, f"{field}: is required", field)


def not_found(what: str, ident: object) -> CdpError:
    return CdpError(Code.NOT_FOUND, f"{what} {ident!r} does not exist")


def unavailable(reason: str) -> CdpError:
    """Storage cannot take the request now; the message says why and that nothing was kept.

    >>> unavailable("No space left on device").message
    'storage: No space left on device; nothing was stored, retry later'
    """
    return CdpError(
        Code.UNAVAILABLE, f"storage: {reason}; nothing was stored, retry later", "storage"
    )
