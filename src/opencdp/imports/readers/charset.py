"""The charset a file is read with: declared, or UTF-8 or GB18030 by its content."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

from opencdp.imports.readers.batch import CHUNK, WHITESPACE, FileError

_SNIFF = 4 << 20  # bytes looked at to guess a charset
_BOMS = {"utf-8": b"\xef\xbb\xbf", "gb18030": b"\x84\x31\x95\x33"}
_PROBE = '\t\n\r "#,;:[]{}\\/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'


def detect_charset(path: Path, declared: str | None) -> str:
    """The charset to read ``path`` with: the declared one, else UTF-8 or GB18030 by content.

    GBK and GB2312 are read as GB18030, which contains both. Undecodable files are read as
    UTF-8, so that their bad records are reported one by one.
    """
    if declared is not None and declared.strip():
        return _checked_charset(declared.strip())
    with open(path, "rb") as f:
        head = f.read(_SNIFF)
        final = not f.read(1)
    for name, bom in _BOMS.items():
        if head.startswith(bom):
            return name
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise FileError("UTF-16 is not supported; save the file as UTF-8", "charset")
    for name in ("utf-8", "gb18030"):
        try:
            codecs.getincrementaldecoder(name)().decode(head, final)
        except UnicodeDecodeError:
            continue
        return name
    return "utf-8"


def _checked_charset(declared: str) -> str:
    try:
        name = codecs.lookup(declared).name
    except LookupError:
        raise FileError(f"unknown charset {declared!r}", "charset") from None
    if name in ("gbk", "gb2312"):
        return "gb18030"
    if name == "utf-8-sig":
        return "utf-8"
    try:
        compatible = _PROBE.encode(name) == _PROBE.encode("ascii")
    except (LookupError, UnicodeError, TypeError, ValueError):
        compatible = False
    if not compatible or name.startswith("iso2022") or name in ("hz", "utf-7"):
        raise FileError(f"charset {declared!r} is not supported", "charset")
    return name


def charset_label(charset: str) -> str:
    return charset.upper()


def bom_length(path: Path, charset: str) -> int:
    bom = _BOMS.get(charset)
    if bom is None:
        return 0
    with open(path, "rb") as f:
        return len(bom) if f.read(len(bom)) == bom else 0


def first_content(path: Path, offset: int) -> int | None:
    """The offset of the first byte from ``offset`` that is not whitespace, if any."""
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(CHUNK):
            stripped = chunk.lstrip(WHITESPACE)
            if stripped:
                return offset + len(chunk) - len(stripped)
            offset += len(chunk)
    return None


def utf8_chunks(path: Path, offset: int, charset: str) -> Iterator[bytes]:
    """The file from ``offset`` as UTF-8; bytes invalid in ``charset`` stay invalid UTF-8."""
    with open(path, "rb") as f:
        f.seek(offset)
        if charset == "utf-8":
            while chunk := f.read(CHUNK):
                yield chunk
            return
        decoder = codecs.getincrementaldecoder(charset)(errors="surrogateescape")
        while True:
            chunk = f.read(CHUNK)
            text = decoder.decode(chunk, final=not chunk)
            if text:
                yield text.encode("utf-8", errors="surrogatepass")
            if not chunk:
                return
