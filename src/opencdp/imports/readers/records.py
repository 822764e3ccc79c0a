"""Delimited records split exactly as Python's ``csv`` splits them, with memory bounded by the
size of a record however it is shaped (the slow path of the delimited reader)."""

from __future__ import annotations

import csv
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from opencdp.imports.readers.batch import CHUNK, TEXT_MAX

# Latin-1 text never holds a character above U+00FF: this line marks the end of the file for
# ``csv``, and shows up inside the last field when a quote is left open.
_END = "\uffff"


class _Lines:
    """What the line feeder knows about the record ``csv`` is reading."""

    __slots__ = (
        "delimiters",
        "eof",
        "fed_quoted",
        "over",
        "pos",
        "quotes",
        "raw",
        "raw_len",
        "size",
    )

    def __init__(self, pos: int, quotes: _Quotes) -> None:
        self.pos = pos  # byte offset after the last line fed
        self.raw: list[str] = []  # the record's lines, up to TEXT_MAX
        self.raw_len = 0
        self.size = 0  # the record's bytes so far
        self.delimiters = 0  # the delimiters in them, quoted ones too
        self.eof = False
        # Why the record is too large, once it is: the rest of it is not fed to csv.
        self.over: str | None = None
        self.fed_quoted = False  # whether csv was inside a quoted field when it stopped
        self.quotes = quotes

    def take(self) -> tuple[list[str], str | None]:
        """The raw lines of the record just read, and why it was too large (if it was); then
        reset for the next."""
        raw, over = self.raw, self.over
        self.raw, self.raw_len, self.size, self.delimiters, self.over = [], 0, 0, 0, None
        return raw, over

    def keep(self, text: str) -> None:
        if self.raw_len < TEXT_MAX:
            text = text[: TEXT_MAX - self.raw_len]
            self.raw.append(text)
            self.raw_len += len(text)


# Where a CSV record is, as csv reads it: at the start of a field, inside an unquoted one,
# inside a quoted one, or just after a quote inside a quoted one (closing it, or doubling the
# next).
_START, _FIELD, _QUOTED, _QUOTE = range(4)


class _Quotes:
    """Follows a record's text as ``csv`` reads it (``strict=False``, quotes escaped by
    doubling) to where it ends, without ``csv``, which keeps every field of a record as a
    string. Runs of whole fields are matched by one regular expression, so a line costs a few
    matches, whatever its fields."""

    __slots__ = ("_body", "_field_rest", "_fields", "delimiter", "state")

    def __init__(self, delimiter: str) -> None:
        d = re.escape(delimiter)
        closed = f'"(?:[^"]++|"")*+"(?=[^"])[^{d}\\r\\n]*+'  # a quoted field, and what follows
        field = f'(?:{closed}|[^"{d}\\r\\n][^{d}\\r\\n]*+)?'
        self._fields = re.compile(f"{field}(?:{d}{field})*+")  # from the start of a field
        self._field_rest = re.compile(f"[^{d}\\r\\n]*+(?:{d}{field})*+")  # from inside one
        self._body = re.compile('(?:[^"]++|"")*+')  # the text of a quoted field
        self.delimiter = delimiter
        self.state = _START

    def follow(self, text: str, eol: bool) -> bool:
        """Read ``text``, which ends a line if ``eol``; whether the record ended with it."""
        state, pos, n = self.state, 0, len(text)
        if state < _QUOTED and '"' not in text:  # no quoted field: it ends with the line
            if eol:
                self.state = _START
            elif n:
                self.state = _START if text[-1] == self.delimiter else _FIELD
            return eol  # (a line end is only ever at the end of the text)
        while pos < n:
            if state == _QUOTED:
                pos = self._body.match(text, pos).end()  # type: ignore[union-attr]
                if pos < n:
                    state, pos = _QUOTE, pos + 1  # a quote, not followed by another one
                continue
            if state == _QUOTE:
                if text[pos] == '"':
                    state, pos = _QUOTED, pos + 1  # a doubled quote
                    continue
                state = _FIELD  # the field was closed: anything else goes on unquoted
            pattern = self._fields if state == _START else self._field_rest
            end = pattern.match(text, pos).end()  # type: ignore[union-attr]
            if end == n:
                if end > pos:
                    state = _START if text[-1] == self.delimiter else _FIELD
                break
            if text[end] == '"':  # a quoted field that goes on past this text
                state, pos = _QUOTED, end + 1
                continue
            self.state = _START  # a line end outside quotes
            return True
        if eol and state != _QUOTED:
            self.state = _START
            return True
        self.state = state
        return False


def _lines(text: io.TextIOWrapper, st: _Lines, cap: int, max_delimiters: int) -> Iterator[str]:
    """Feed ``csv`` the lines of ``text``, then the end marker.

    Once a record passes ``cap`` bytes or ``max_delimiters`` delimiters (0: any number), the
    rest of it is not fed to ``csv`` but followed by :class:`_Quotes` to its end, where ``csv``
    is given what ends the record from where it stopped. Memory stays bounded (``csv`` keeps
    each field of a record: a record of millions of delimiters would be millions of strings),
    and the record ends where it would have.
    """
    readline = text.readline
    quotes = st.quotes
    delimiter = quotes.delimiter
    while True:
        piece = readline(CHUNK)
        if not piece:
            if st.over is not None and not st.fed_quoted:
                yield "x"  # a record csv has not seen any of: so that it is counted
            st.eof = True
            yield _END + "\n"
            return
        # csv asks for a line within a record only when a quoted field goes on past the last.
        before = st.size > 0
        parts: list[str] = []
        ended = False
        while True:  # the pieces of a line longer than a read
            n = len(piece)
            st.pos += n
            st.size += n
            if st.raw_len < TEXT_MAX:
                st.keep(piece)
            last = n < CHUNK or piece[-1] in "\r\n"
            if st.over is not None:
                ended = quotes.follow(piece, last)
            else:
                parts.append(piece)
                if max_delimiters:
                    st.delimiters += piece.count(delimiter)
                over = st.size > cap or (max_delimiters and st.delimiters > max_delimiters)
                if over and (before or piece.strip("\r\n")):  # (a blank line is no record)
                    st.over = (
                        f"record larger than {cap} bytes"
                        if st.size > cap
                        else f"record with more than {max_delimiters} delimiters"
                    )
                    st.fed_quoted = before
                    quotes.state = _QUOTED if before else _START
                    for held in parts[:-1]:
                        quotes.follow(held, False)
                    ended = quotes.follow(piece, last)
                    parts = []
            if last:
                break
            piece = readline(CHUNK)
            if not piece:  # the file ends in this line
                if st.over is not None:
                    ended = quotes.follow("", True)
                break
        if st.over is None:
            yield parts[0] if len(parts) == 1 else "".join(parts)
        elif ended:  # the record ends here: end it for csv too
            yield '"' if st.fed_quoted else "x"


_Record = tuple[list[str], int, list[str], str | None]


def read_records(
    path: Path, offset: int, delimiter: str, cap: int, max_delimiters: int = 0
) -> Iterator[_Record]:
    """Each non-blank record from ``offset``: (fields, end offset, raw lines, problem).

    Fields and lines are Latin-1 text, a character per byte. The problem, if any, is why the
    record could not be read (its fields are then meaningless): among them, that it has more
    than ``cap`` bytes or ``max_delimiters`` delimiters (0: any number).
    """
    if csv.field_size_limit() < sys.maxsize >> 1:
        csv.field_size_limit(sys.maxsize >> 1)  # records are bounded by the feeder instead
    with open(path, "rb") as f:
        f.seek(offset)
        text = io.TextIOWrapper(f, encoding="latin-1", newline="")
        st = _Lines(offset, _Quotes(delimiter))
        reader = csv.reader(
            _lines(text, st, cap, max_delimiters), delimiter=delimiter, strict=False
        )
        while True:
            try:
                for fields in reader:
                    raw, over = st.take()
                    if st.eof:
                        if fields != [_END]:
                            yield fields, st.pos, raw, "unclosed quote at end of file"
                        return
                    if over:
                        yield fields, st.pos, raw, over
                    elif fields:
                        yield fields, st.pos, raw, None
                return
            except csv.Error as exc:  # the reader goes on with the next line
                yield [], st.pos, st.take()[0], f"not valid CSV: {exc}"
