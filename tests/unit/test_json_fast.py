"""JSON lines read without their records (Arrow's JSON reader where it reads them exactly) give
what the records read one by one give: columns, texts, row numbers, bad rows, first_type."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opencdp.catalog.types import PropertyType
from opencdp.errors import CdpError
from opencdp.imports.readers import RowBatch, read_file
from opencdp.imports.readers.batch import first_type

KEYS = ["a", "b", "c", "ab", "é", 'k"q', "t", "n"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.sampled_from([0, -1, 2**53, 2**53 + 1, 2**63, -(2**63) - 1, 10**20, 123456789012345]),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([1.0, -0.0, 0.5, 1e5, 1.5e-7, 1e22, 0.1 + 0.2, 36.0, 107.35]),
    st.floats(allow_nan=False, allow_infinity=False),
    # where Arrow and orjson switch between plain and exponent notation
    st.sampled_from([1e-4, 9.99e-5, 1.2345e-4, 1e15 + 0.5, 9999999999999998.0, 1e16, 1.5e16]),
    st.text(max_size=6),
    st.sampled_from(["2024-03-05 12:41:00", "2024-01-01", "12.5", "007", "null", "x\ny", "é中"]),
)
numbers = st.one_of(
    st.none(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1.0, -0.0, 1e5, 0.5, 36.0, 1.2345e-4, 9.99e-5, 1e15 + 0.5]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)
    ),
    max_leaves=6,
)
# Number texts orjson and Arrow might read differently, written as they are.
raw_numbers = st.sampled_from(
    ["1.0", "-0", "-0.0", "1E2", "1e-5", "12345678901234567890", "0.12345678901234567",
     "1e400", "01", "1.", "NaN", "Infinity", "-Infinity", "2.50", "100"]
)  # fmt: skip


@st.composite
def objects(draw: st.DrawFn) -> bytes:
    """An object written with JSON's freedoms: spacing, escapes, duplicate keys, raw numbers."""
    keys = draw(st.lists(st.sampled_from(KEYS), max_size=5))
    parts = []
    for key in keys:
        name = json.dumps(key, ensure_ascii=draw(st.booleans()))
        if key == "ab" and draw(st.booleans()):
            name = '"a\\u0062"'
        if key == "n":  # a column of numbers only (or null): mostly read by Arrow
            value = draw(st.one_of(raw_numbers, numbers.map(json.dumps)))
        elif key == "t":  # strings Arrow would read as timestamps, and others
            value = json.dumps(
                draw(st.sampled_from([None, "2024-03-05 12:41:00", "2024-01-01", "x"]))
            )
        elif draw(st.integers(0, 5)) == 0:
            value = draw(raw_numbers)
        elif draw(st.integers(0, 12)) == 0:
            value = draw(st.sampled_from(['"\\ud800"', '"\\udc00x"', '"\\ud83d\\ude00"', '"\\/"']))
        else:
            value = json.dumps(draw(values), ensure_ascii=draw(st.booleans()))
        space = draw(st.sampled_from(["", " ", "\t"]))
        parts.append(f"{name}{space}:{space}{value}")
    return ("{" + ",".join(parts) + "}").encode()


bad_lines = st.sampled_from(
    [b"not json", b"[1]", b"1", b'"s"', b'{"a":1}{"a":2}', b'{"a":', b"}", b'{"a":1,}',
     b'\xef\xbb\xbf{"a":1}', b'{"a":"\xff"}', b'{"a":"\xed\xa0\x80"}', b'{"a":1} \x0b',
     b'{"a":1}//c', b'{"a":"x\ty"}', b'{"a":1}\r{"a":2}', b'{"a":\r1}',
     b"  ", b"\x0b", b"", b"\t", b'{"a":"' + b"y" * 40 + b'"}']
)  # fmt: skip


@st.composite
def files(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(st.one_of(objects(), objects(), objects(), bad_lines), max_size=30))
    # Runs of lines that differ in one trap only, so that most runs are read by Arrow.
    if draw(st.booleans()):
        plain = [
            json.dumps({"a": i, "b": f"s{i}", "c": i / 4 if i % 3 else i // 3}).encode()
            for i in range(12)
        ]
        at = draw(st.integers(0, len(lines)))
        lines[at:at] = plain
    ending = draw(st.sampled_from([b"\n", b"\r\n"]))
    data = ending.join(lines)
    if draw(st.booleans()):
        data += ending
    return data


def _read(path: Path, objects: bool, **kw: Any) -> tuple[list[RowBatch], str | None]:
    batches: list[RowBatch] = []
    try:
        for b in read_file(path, "jsonl", objects=objects, **kw):
            batches.append(b)
    except CdpError as exc:
        return batches, str(exc)
    return batches, None


def _rows(batches: list[RowBatch]) -> dict[int, dict[str, str | None]]:
    rows = {}
    for b in batches:
        table = b.rows.to_pydict()
        for i, n in enumerate(b.row_numbers.to_pylist()):
            rows[n] = {c: v for c in b.columns if (v := table[c][i]) is not None}
    return rows


def _bad(batches: list[RowBatch]) -> list[tuple[int, str, str]]:
    return [(x.row, x.text, x.reason) for b in batches for x in b.bad]


def _check_same(path: Path, **kw: Any) -> list[RowBatch]:
    slow, slow_error = _read(path, True, **kw)
    fast, fast_error = _read(path, False, **kw)
    assert fast_error == slow_error
    records = {
        n: o for b in slow for n, o in zip(b.row_numbers.to_pylist(), b.objects or [], strict=True)
    }
    seen = set(records)
    if slow_error is not None:  # the same records, up to the last one both read
        last = min(
            max([*_rows(slow), *(b[0] for b in _bad(slow))] or [0]),
            max([*_rows(fast), *(b[0] for b in _bad(fast))] or [0]),
        )
        fast_rows = {n: r for n, r in _rows(fast).items() if n <= last}
        assert fast_rows == {n: r for n, r in _rows(slow).items() if n <= last}
        return fast
    assert _rows(fast) == _rows(slow)
    assert _bad(fast) == _bad(slow)
    columns = slow[-1].columns if slow else []
    assert (fast[-1].columns if fast else []) == columns
    for b in fast:
        assert b.json and b.objects is None
        assert b.columns == columns[: len(b.columns)]
        numbers = b.row_numbers.to_pylist()
        assert set(numbers) <= seen
        assert len(numbers) + len(b.bad) <= kw.get("batch_rows", 50_000)
        for c in b.columns:
            expected = first_type([records[n].get(c) for n in numbers])
            assert b.first_type(c) == expected, (c, numbers)
    return fast


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=files(),
    batch_rows=st.integers(1, 8),
    batch_bytes=st.sampled_from([0, 1, 64, 300]),
    block_size=st.sampled_from([1, 16, 60, 200, 4096]),
    skip_rows=st.integers(0, 12),
    max_field_bytes=st.sampled_from([6, 30, 64 << 20]),
    max_columns=st.sampled_from([0, 0, 3, 6]),
)
def test_json_lines_read_fast_as_read_one_by_one(
    tmp_path_factory: pytest.TempPathFactory,
    data: bytes,
    batch_rows: int,
    batch_bytes: int,
    block_size: int,
    skip_rows: int,
    max_field_bytes: int,
    max_columns: int,
) -> None:
    if not data.strip():
        return
    path = tmp_path_factory.mktemp("jf") / "f.jsonl"
    path.write_bytes(data)
    _check_same(
        path,
        batch_rows=batch_rows,
        batch_bytes=batch_bytes,
        block_size=block_size,
        skip_rows=skip_rows,
        max_field_bytes=max_field_bytes,
        max_columns=max_columns,
    )


def _events(n: int) -> bytes:
    return b"".join(
        json.dumps(
            {"event": f"e{i % 7}", "id": f"ev{i}", "t": f"2024-03-0{i % 9 + 1} 12:41:00",
             "amount": round(i * 1.25, 2), "n": i, "ok": i % 2 == 0}
        ).encode() + b"\n"
        for i in range(n)
    )  # fmt: skip


def test_well_formed_lines_take_the_fast_path(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(_events(5000))
    batches = _check_same(path, batch_rows=700, block_size=20_000)
    assert sum(b.rows.num_rows for b in batches) == 5000
    assert sum(b.fast_rows for b in batches) == 5000
    assert batches[0].columns == ["event", "id", "t", "amount", "n", "ok"]
    assert batches[0].rows.column("t")[0].as_py() == "2024-03-01 12:41:00"  # not a timestamp
    assert batches[0].rows.column("amount").to_pylist()[:5] == ["0.0", "1.25", "2.5", "3.75", "5.0"]
    types = {c: batches[0].first_type(c) for c in batches[0].columns}
    assert types == {
        "event": PropertyType.STRING,
        "id": PropertyType.STRING,
        "t": PropertyType.DATETIME,
        "amount": PropertyType.NUMBER,
        "n": PropertyType.NUMBER,
        "ok": PropertyType.BOOL,
    }


def test_a_bad_line_sends_only_its_run_to_the_slow_path(tmp_path: Path) -> None:
    lines = _events(3000).split(b"\n")
    lines[1500] = b'{"event": 5, "id": "x"}'  # a type change
    lines[2000] = b"not json"
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"\n".join(lines))
    batches = _check_same(path, batch_rows=1000, block_size=20_000)
    fast = sum(b.fast_rows for b in batches)
    assert 2000 < fast < 2999
    assert [(x.row, x.text) for b in batches for x in b.bad] == [(2001, "not json")]


def test_integral_doubles_keep_the_text_of_their_number(tmp_path: Path) -> None:
    path = tmp_path / "n.jsonl"
    path.write_bytes(b'{"a":1}\n{"a":2.5}\n{"a":3.0}\n{"a":-0}\n{"a":-0.0}\n{"a":1E2}\n')
    (batch,) = _check_same(path)
    assert batch.rows.column("a").to_pylist() == ["1", "2.5", "3.0", "0", "-0.0", "100.0"]
    assert batch.fast_rows == 6


def test_a_line_past_the_cap_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    big = b'{"a":"' + b"x" * (3 << 20) + b'"}'
    path.write_bytes(_events(10) + big + b"\n" + _events(10))
    batches = _check_same(path, max_field_bytes=1 << 10, batch_rows=7)
    assert [x.row for b in batches for x in b.bad] == [11]


def test_another_charset_is_read_fast_once_decoded(tmp_path: Path) -> None:
    path = tmp_path / "gb.jsonl"
    text = "".join(
        json.dumps({"城市": f"北京{i}", "n": i}, ensure_ascii=False) + "\n" for i in range(50)
    )
    path.write_bytes(text.encode("gb18030") + b'{"a":"\x81"}\n')
    batches = _check_same(path, charset="gb18030", block_size=100)
    assert 45 <= sum(b.fast_rows for b in batches) < 50  # not the run with the bad line
    assert batches[0].columns == ["城市", "n"]
