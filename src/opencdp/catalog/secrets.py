"""Credentials: random tokens stored as hashes, compared in constant time.

API tokens are 256-bit random strings; a fast hash (SHA-256) is enough for values with that much
entropy and lets every request find its project by hash. Client secrets are derived from the
server key (HMAC of the client id and a generation), so a surface that must verify an HMAC made
with the secret can recompute it, while the metadata DB holds only its hash.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def new_id(nbytes: int = 8) -> str:
    return secrets.token_hex(nbytes)


def digest(token: str) -> str:
    """SHA-256 of a token, hex.

    >>> len(digest("x"))
    64
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def matches(token: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(token), stored_digest)


def derive_client_secret(server_key: bytes, client_id: str, generation: int) -> str:
    mac = hmac.new(server_key, f"client-secret:{client_id}:{generation}".encode(), "sha256")
    return "cs_" + mac.hexdigest()


def read_or_create_private(path: Path, make: str | bytes) -> bytes:
    """The content of a private (mode 0600) file, creating it with ``make`` the first time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    data = make.encode() if isinstance(make, str) else make
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return data


def sign(server_key: bytes, purpose: str, *parts: str) -> str:
    """An HMAC-SHA256 (hex) of ``parts`` for one ``purpose``; parts must not contain ``:``."""
    msg = ":".join((purpose, *parts)).encode("utf-8", "surrogatepass")
    return hmac.new(server_key, msg, "sha256").hexdigest()


def hmac_hex(key: str, message: str) -> str:
    """hex(HMAC-SHA256(key, message)): how clients sign requests with their secret."""
    return hmac.new(key.encode(), message.encode("utf-8", "surrogatepass"), "sha256").hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time equality of two strings."""
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )
