"""Import file readers (imports/readers/): formats, charsets, bad rows, batches, resuming."""

from __future__ import annotations

import csv
import io
import json
import random
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opencdp.errors import CdpError, Code
from opencdp.imports.readers import (
    FORMATS,
    BadRow,
    FileError,
    RowBatch,
    delimited,
    detect_charset,
    read_file,
    read_header,
    records,
)
from opencdp.imports.readers.batch import CHUNK

DELIMITER = {"csv": ",", "tsv": "\t", "ssv": ";"}


# ---- helpers -------------------------------------------------------------------------------


def write(path: Path, data: bytes | str, encoding: str = "utf-8") -> Path:
    path.write_bytes(data.encode(encoding) if isinstance(data, str) else data)
    return path


def check_batch(b: RowBatch) -> None:
    """The invariants every batch keeps."""
    assert b.rows.column_names == b.columns
    assert all(t == pa.string() for t in b.rows.schema.types)
    assert b.row_numbers.type == pa.int64()
    assert len(b.row_numbers) == b.rows.num_rows
    assert b.rows.num_rows or b.bad
    assert [x.row for x in b.bad] == sorted(x.row for x in b.bad)
    numbers = b.row_numbers.to_pylist()
    assert numbers == sorted(numbers)
    every = sorted(numbers + [x.row for x in b.bad])
    assert every == list(range(every[0], every[-1] + 1))  # a batch is a run of records


class Read:
    """Everything read from a file: rows as dicts by number, bad rows, and the batches."""

    def __init__(self, batches: list[RowBatch]) -> None:
        self.batches = batches
        self.rows: dict[int, dict[str, Any]] = {}
        self.bad: dict[int, BadRow] = {}
        expected = None
        for b in batches:
            check_batch(b)
            first = min(b.row_numbers.to_pylist() + [x.row for x in b.bad])
            assert expected is None or first == expected  # batches follow each other
            for n, row in zip(b.row_numbers.to_pylist(), b.rows.to_pylist(), strict=True):
                assert n not in self.rows
                self.rows[n] = row
            for x in b.bad:
                assert x.row not in self.bad and x.row not in self.rows
                self.bad[x.row] = x
            expected = max(self.rows.keys() | self.bad.keys()) + 1
        self.columns = batches[-1].columns if batches else []

    def values(self) -> list[list[Any]]:
        return [[row[c] for c in self.columns] for _, row in sorted(self.rows.items())]

    def reasons(self) -> dict[int, str]:
        return {n: b.reason for n, b in sorted(self.bad.items())}


def read(path: Path, fmt: str, **kw: Any) -> Read:
    return Read(list(read_file(path, fmt, **kw)))


def read_slow(path: Path, fmt: str, batch_rows: int = 50_000, **kw: Any) -> list[RowBatch]:
    """Only the slow path of a delimited file."""
    return list(
        read_file(
            path,
            fmt,
            kw.get("charset"),
            batch_rows,
            kw.get("skip_rows", 0),
            kw.get("max_field_bytes", 64 << 20),
            fast=False,
            block_size=delimited.BLOCK,
        )
    )


def read_fast(path: Path, fmt: str, batch_rows: int, block_size: int, **kw: Any) -> list[RowBatch]:
    """The fast path with a small block, so that it hands over and back often."""
    return list(
        read_file(
            path,
            fmt,
            kw.get("charset"),
            batch_rows,
            kw.get("skip_rows", 0),
            kw.get("max_field_bytes", 64 << 20),
            fast=True,
            block_size=block_size,
        )
    )


def assert_same(a: list[RowBatch], b: list[RowBatch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.columns == y.columns
        assert x.rows.equals(y.rows)
        assert x.row_numbers.equals(y.row_numbers)
        assert x.bad == y.bad


def csv_text(rows: list[list[str]], delimiter: str = ",", terminator: str = "\n") -> str:
    """Rows as Python's csv module writes them, each record ended by ``terminator``.

    The writer is told "\r\n" so that it quotes a field with either character in it (it would
    leave a lone "\r" unquoted otherwise).
    """
    out = []
    for row in rows:
        buf = io.StringIO()
        csv.writer(buf, delimiter=delimiter, lineterminator="\r\n").writerow(row)
        out.append(buf.getvalue()[:-2] + terminator)
    return "".join(out)


def people(n: int) -> list[list[str]]:
    return [[f"u{i}", f"name {i}", str(i * 3), "北京" if i % 2 else "x"] for i in range(n)]


HEADER = ["id", "name", "amount", "city"]


# ---- delimited files -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "tsv", "ssv"])
def test_delimited_formats(tmp_path: Path, fmt: str) -> None:
    d = DELIMITER[fmt]
    text = csv_text([HEADER, *people(5), ["u9", "", "7", " "]], d)
    r = read(write(tmp_path / "f", text), fmt)
    assert r.columns == HEADER
    assert r.values()[:5] == people(5)
    assert r.values()[5] == ["u9", None, "7", " "]  # an empty field is null
    assert sorted(r.rows) == [1, 2, 3, 4, 5, 6]
    assert r.bad == {}


def test_header_names_are_stripped(tmp_path: Path) -> None:
    r = read(write(tmp_path / "f.csv", " id , Name\n1,2\n"), "csv")
    assert r.columns == ["id", "Name"]
    assert r.values() == [["1", "2"]]


def test_quoting(tmp_path: Path) -> None:
    rows = [
        ["a,b", 'say "hi"', "line\nbreak"],
        ["crlf\r\ninside", '""', ",,,"],
        ["plain", "x", 'quote " in the middle'],
    ]
    r = read(write(tmp_path / "f.csv", csv_text([["p", "q", "r"], *rows])), "csv")
    assert r.values() == rows
    assert sorted(r.rows) == [1, 2, 3]  # a record with embedded newlines is one record


def test_quoted_fields_in_tsv_and_ssv(tmp_path: Path) -> None:
    r = read(write(tmp_path / "f", 'a\tb\n"x\ty"\t"1\n2"\n'), "tsv")
    assert r.values() == [["x\ty", "1\n2"]]
    r = read(write(tmp_path / "g", 'a;b\n"x;y";"say ""no"""\n'), "ssv")
    assert r.values() == [["x;y", 'say "no"']]


def test_crlf_file(tmp_path: Path) -> None:
    text = csv_text([HEADER, *people(4)], terminator="\r\n")
    r = read(write(tmp_path / "f.csv", text), "csv")
    assert r.values() == people(4)


def test_bare_cr_line_ends(tmp_path: Path) -> None:
    r = read(write(tmp_path / "f.csv", "a,b\r1,2\r3,4\r"), "csv")
    assert r.values() == [["1", "2"], ["3", "4"]]


def test_blank_lines_are_not_records(tmp_path: Path) -> None:
    r = read(write(tmp_path / "f.csv", "a,b\n\n1,2\n\r\n\n3,4\n\n"), "csv")
    assert r.rows == {1: {"a": "1", "b": "2"}, 2: {"a": "3", "b": "4"}}


def test_bom_is_stripped(tmp_path: Path) -> None:
    r = read(write(tmp_path / "f.csv", b"\xef\xbb\xbfid,name\n1,\xe5\xbc\xa0\n"), "csv")
    assert r.columns == ["id", "name"]
    assert r.values() == [["1", "张"]]
    r = read(write(tmp_path / "f.jsonl", b'\xef\xbb\xbf{"a": 1}\n'), "jsonl")
    assert r.values() == [["1"]]
    r = read(write(tmp_path / "f.json", b'\xef\xbb\xbf [{"a": 1}]'), "json")
    assert r.values() == [["1"]]


def test_gbk_file_detected_and_declared(tmp_path: Path) -> None:
    rows = [["张三", "北京", "备注，有逗号"], ["李四", "上海", "多行\n文本"]]
    path = write(tmp_path / "f.csv", csv_text([["姓名", "城市", "备注"], *rows]), "gbk")
    assert detect_charset(path, None) == "gb18030"
    for declared in (None, "gbk", "GBK", "gb2312", "GB18030"):
        r = read(path, "csv", charset=declared)
        assert r.columns == ["姓名", "城市", "备注"]
        assert r.values() == rows
        assert_same(list(read_file(path, "csv", charset=declared)), read_slow(path, "csv"))
    jl = write(tmp_path / "f.jsonl", '{"姓名": "张三"}\n{"姓名": "李四"}\n', "gbk")
    assert read(jl, "jsonl").values() == [["张三"], ["李四"]]
    ja = write(tmp_path / "f.json", '[{"姓名": "张三"}, {"姓名": "李四"}]', "gbk")
    assert read(ja, "json", charset="gbk").values() == [["张三"], ["李四"]]


def test_invalid_bytes_in_a_gbk_file(tmp_path: Path) -> None:
    data = "名,值\n张,1\n".encode("gbk") + b"\x80\xff,2\n" + "李,3\n".encode("gbk")
    path = write(tmp_path / "f.csv", data)
    r = read(path, "csv", charset="gbk")
    assert r.values() == [["张", "1"], ["李", "3"]]
    assert r.reasons() == {2: "not valid GB18030"}
    assert_same(list(read_file(path, "csv", charset="gbk")), read_slow(path, "csv", charset="gbk"))


def test_detect_charset(tmp_path: Path) -> None:
    assert detect_charset(write(tmp_path / "a", b"a,b\n1,2\n"), None) == "utf-8"
    assert detect_charset(write(tmp_path / "b", b"\xef\xbb\xbfa\n"), None) == "utf-8"
    assert detect_charset(write(tmp_path / "c", b"a\n\xff\xff\x00\n"), None) == "utf-8"
    assert detect_charset(tmp_path / "a", "utf8") == "utf-8"
    assert detect_charset(tmp_path / "a", "UTF-8-SIG") == "utf-8"
    assert detect_charset(tmp_path / "a", "latin-1") == "iso8859-1"
    # A multibyte character cut by the end of the sniffed prefix is still UTF-8.
    head = b"x" * ((4 << 20) - 1) + "张".encode()
    assert detect_charset(write(tmp_path / "d", head + b"\n" * 10), None) == "utf-8"
    with pytest.raises(FileError) as e:
        detect_charset(tmp_path / "a", "no-such-charset")
    assert e.value.field == "charset"
    assert "no-such-charset" in e.value.message
    with pytest.raises(FileError):
        detect_charset(tmp_path / "a", "utf-16")
    with pytest.raises(FileError):
        detect_charset(write(tmp_path / "e", "a,b\n".encode("utf-16")), None)


def test_wrong_field_counts_in_the_middle(tmp_path: Path) -> None:
    text = "a,b,c,d,e\n1,2,3,4,5\n1,2,3\n6,7,8,9,10\n1,2,3,4,5,6\n11,12,13,14,15\n"
    r = read(write(tmp_path / "f.csv", text), "csv", batch_rows=2)
    assert r.values() == [[str(i) for i in range(k, k + 5)] for k in (1, 6, 11)]
    assert sorted(r.rows) == [1, 3, 5]
    assert r.reasons() == {2: "expected 5 fields, got 3", 4: "expected 5 fields, got 6"}
    assert r.bad[2].text == "1,2,3"
    assert r.bad[4].text == "1,2,3,4,5,6"


def test_unclosed_quote_at_end_of_file(tmp_path: Path) -> None:
    for tail in ('3,"never closed\n', '3,"never closed', '3,"never\nclosed\n'):
        path = write(tmp_path / "f.csv", "a,b\n1,x\n2,y\n" + tail)
        r = read(path, "csv")
        assert r.values() == [["1", "x"], ["2", "y"]]
        assert r.reasons() == {3: "unclosed quote at end of file"}
        assert r.bad[3].text == tail.rstrip("\n")
        assert_same(list(read_file(path, "csv")), read_slow(path, "csv"))


def test_closed_quote_at_end_of_file_without_newline(tmp_path: Path) -> None:
    r = read(write(tmp_path / "f.csv", 'a,b\n1,"x\ny"'), "csv")
    assert r.values() == [["1", "x\ny"]]


def test_large_field(tmp_path: Path) -> None:
    big = "x" * (5 << 20)
    path = write(tmp_path / "f.csv", csv_text([["a", "b"], ["1", "s"], ["2", big], ["3", "t"]]))
    r = read(path, "csv")
    assert r.values() == [["1", "s"], ["2", big], ["3", "t"]]
    r = read(path, "csv", max_field_bytes=1 << 20)
    assert r.values() == [["1", "s"], ["3", "t"]]
    assert "larger than" in r.bad[2].reason
    assert len(r.bad[2].text.encode()) <= 64 << 10
    assert_same(
        list(read_file(path, "csv", max_field_bytes=1 << 20)),
        read_slow(path, "csv", max_field_bytes=1 << 20),
    )


def test_field_larger_than_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "f.csv", csv_text([["a", "b"], ["1", "x" * 5000], ["2", "ok"]]))
    r = read(path, "csv", max_field_bytes=1000)
    assert r.values() == [["2", "ok"]]
    assert r.reasons() == {1: "field 'b' is larger than 1000 bytes"}
    assert_same(
        list(read_file(path, "csv", max_field_bytes=1000)),
        read_slow(path, "csv", max_field_bytes=1000),
    )


def test_large_field_with_newlines_does_not_split(tmp_path: Path) -> None:
    """A record past the memory cap is reported once; the records after it are intact."""
    big = "line\n" * 600_000  # 3 MB in one quoted field
    path = write(tmp_path / "f.csv", csv_text([["a", "b"], ["1", big], ["2", "ok"]]))
    r = read(path, "csv", max_field_bytes=1 << 19)
    assert r.values() == [["2", "ok"]]
    assert list(r.bad) == [1]
    assert "larger than" in r.bad[1].reason


def test_binary_garbage_lines(tmp_path: Path) -> None:
    rnd = random.Random(7)
    noise = [b for b in range(256) if b not in b'\n\r",']
    lines = [b"a,b,c"]
    good: dict[int, list[str]] = {}
    garbage: set[int] = set()
    for n in range(1, 301):
        if n % 37 == 0:
            junk = [bytes(rnd.choice(noise[128:]) for _ in range(20)) for _ in range(3)]
            lines.append(b",".join(junk))  # three fields, not UTF-8
            garbage.add(n)
        elif n % 53 == 0:
            lines.append(bytes(rnd.choice(noise) for _ in range(60)))  # no commas at all
            garbage.add(n)
        else:
            good[n] = [str(n), f"v{n}", "ü"]
            lines.append(",".join(good[n]).encode())
    path = write(tmp_path / "f.csv", b"\n".join(lines) + b"\n")
    r = read(path, "csv", batch_rows=50)
    assert {n: [row[c] for c in r.columns] for n, row in r.rows.items()} == good
    assert set(r.bad) == garbage
    assert all(r.bad[n].reason == "not valid UTF-8" for n in garbage if n % 37 == 0)
    assert_same(list(read_file(path, "csv", batch_rows=50)), read_slow(path, "csv", 50))


def test_nul_bytes_are_kept(tmp_path: Path) -> None:
    r = read(write(tmp_path / "f.csv", b"a,b\nx\x00y,1\n"), "csv")
    assert r.values() == [["x\x00y", "1"]]


# ---- whole-file problems -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("data", [b"", b"  \n\t\r\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\n \n"])
def test_empty_file(tmp_path: Path, fmt: str, data: bytes) -> None:
    with pytest.raises(FileError) as e:
        read_file(write(tmp_path / "f", data), fmt)
    assert e.value.code == Code.VALIDATION_FAILED
    assert e.value.field == "file"
    assert "file is empty" in e.value.message
    assert isinstance(e.value, CdpError)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "ssv"])
def test_header_only(tmp_path: Path, fmt: str) -> None:
    d = DELIMITER[fmt]
    for text in (f"a{d}b", f"a{d}b\n", f"a{d}b\r\n\n\n"):
        assert list(read_file(write(tmp_path / "f", text), fmt)) == []


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("id,name,ID", "duplicate column name 'ID'"),
        ("id, name ,name", "duplicate column name 'name'"),
        ("id,,name", "column 2 of the header has no name"),
        ("id,name, ", "column 3 of the header has no name"),
    ],
)
def test_bad_header(tmp_path: Path, header: str, reason: str) -> None:
    with pytest.raises(FileError) as e:
        read_file(write(tmp_path / "f.csv", header + "\n1,2,3\n"), "csv")
    assert reason in e.value.message


def test_header_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(FileError) as e:
        read_file(write(tmp_path / "f.csv", 'a,"b\n1,2\n'), "csv")
    assert "unclosed quote" in e.value.message


def test_header_not_valid_utf8(tmp_path: Path) -> None:
    with pytest.raises(FileError) as e:
        read_file(write(tmp_path / "f.csv", b"a,\xff\xfe\x00b\n1,2\n"), "csv", charset="utf-8")
    assert "not valid UTF-8" in e.value.message


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(FileError) as e:
        read_file(write(tmp_path / "f", "a\n1\n"), "xlsx")
    assert e.value.field == "format"


# ---- JSON ----------------------------------------------------------------------------------


def test_json_lines(tmp_path: Path) -> None:
    text = (
        '{"id": 1, "price": 1.0, "ok": true, "tags": ["a", "b"], "none": null}\n'
        "\n"
        '{"id": "x", "extra": {"k": [1, 2]}, "ok": false}\r\n'
        "   \n"
        '{"id": 3, broken\n'
        "[1, 2]\n"
        '{"id": 12345678901234567890123, "price": 2.5e-3}\n'
    )
    r = read(write(tmp_path / "f.jsonl", text), "jsonl")
    assert r.columns == ["id", "price", "ok", "tags", "none", "extra"]
    assert r.rows[1] == {
        "id": "1",
        "price": "1.0",
        "ok": "true",
        "tags": '["a","b"]',
        "none": None,
        "extra": None,
    }
    assert r.rows[2]["id"] == "x"
    assert r.rows[2]["ok"] == "false"
    assert r.rows[2]["extra"] == '{"k":[1,2]}'
    assert r.rows[2]["price"] is None  # missing key
    assert r.rows[5]["id"] == "12345678901234567890123"  # past 64 bits, exact
    assert r.rows[5]["price"] == orjson.dumps(2.5e-3).decode()
    assert r.reasons()[4] == "not a JSON object"
    assert r.reasons()[3].startswith("not valid JSON: ")
    assert r.bad[3].text == '{"id": 3, broken'
    assert sorted(r.rows) == [1, 2, 5]  # blank lines are not records


def test_json_lines_invalid_utf8(tmp_path: Path) -> None:
    path = write(tmp_path / "f.jsonl", b'{"a": "x"}\n{"a": "\xff\xfe"}\n{"a": "z"}\n')
    r = read(path, "jsonl", charset="utf-8")
    assert r.values() == [["x"], ["z"]]
    assert r.reasons() == {2: "not valid UTF-8"}


def test_json_columns_grow_between_batches(tmp_path: Path) -> None:
    lines = [{"a": i} if i < 6 else {"b": i, "a": i} for i in range(10)]
    path = write(tmp_path / "f.jsonl", "\n".join(json.dumps(x) for x in lines))
    batches = list(read_file(path, "jsonl", batch_rows=3))
    assert [b.columns for b in batches] == [["a"], ["a"], ["a", "b"], ["a", "b"]]
    assert batches[1].rows.column("a").to_pylist() == ["3", "4", "5"]
    assert batches[1].columns == ["a"]  # b first appears in record 7, in the next batch
    assert batches[2].rows.column("b").to_pylist() == ["6", "7", "8"]
    # Resuming sees the same columns as a full read.
    resumed = list(read_file(path, "jsonl", batch_rows=3, skip_rows=6))
    assert resumed[0].columns == ["a", "b"]


def test_json_array(tmp_path: Path) -> None:
    elements = [
        {"s": "brackets ] } [ { inside", "n": 1},
        {"s": 'escaped \\" quote and \\\\ backslash ]', "nested": {"x": [1, {"y": "}"}]}},
        {"s": "unicode 张三 \u00e9", "f": 1.5, "b": True, "z": None},
    ]
    text = "\n  [\n" + ",\n".join(json.dumps(e, ensure_ascii=False) for e in elements) + "\n]\n"
    r = read(write(tmp_path / "f.json", text), "json")
    assert r.columns == ["s", "n", "nested", "f", "b", "z"]
    assert [r.rows[i]["s"] for i in (1, 2, 3)] == [e["s"] for e in elements]
    assert r.rows[2]["nested"] == '{"x":[1,{"y":"}"}]}'
    assert r.rows[3]["f"] == "1.5"
    assert r.rows[3]["b"] == "true"
    assert r.rows[3]["z"] is None


def test_json_array_bad_elements(tmp_path: Path) -> None:
    text = '[{"a": 1}, 42, {"a": }, "str", {"a": "x}"}}, {"a": 5}, [1], {"a": 6},]'
    r = read(write(tmp_path / "f.json", text), "json")
    assert {n: row["a"] for n, row in r.rows.items()} == {1: "1", 6: "5", 8: "6"}
    reasons = r.reasons()
    assert reasons[2] == "not a JSON object"
    assert reasons[3].startswith("not valid JSON")
    assert reasons[4] == "not a JSON object"
    assert reasons[5].startswith("not valid JSON")  # a stray '}'
    assert reasons[7] == "not a JSON object"
    assert r.bad[5].text == '{"a": "x}"}}'
    assert len(r.rows) + len(r.bad) == 8  # the trailing comma adds no record


def test_json_array_streams_over_chunks(tmp_path: Path) -> None:
    """Elements spanning read chunks, with strings full of brackets, quotes and escapes."""
    rnd = random.Random(3)
    pieces = ['"', "\\", "[", "]", "{", "}", ",", "x", "张", " ", "\n"]
    elements = []
    for i in range(8000):
        s = "".join(rnd.choice(pieces) for _ in range(rnd.randrange(0, 400)))
        e: dict[str, Any] = {"i": i, "s": s}
        if i % 3 == 0:
            e["deep"] = [{"s": s[:10]}, [[]], {}]
        elements.append(e)
    for ascii_only in (False, True):
        path = write(tmp_path / "f.json", json.dumps(elements, ensure_ascii=ascii_only))
        assert path.stat().st_size > 2 * CHUNK
        r = read(path, "json", batch_rows=999)
        assert r.bad == {}
        assert [row["s"] for _, row in sorted(r.rows.items())] == [e["s"] for e in elements]
        assert r.rows[1]["deep"] == orjson.dumps(elements[0]["deep"]).decode()


def test_json_array_file_problems(tmp_path: Path) -> None:
    with pytest.raises(FileError) as e:
        read_file(write(tmp_path / "f.json", '{"a": 1}'), "json")
    assert "must start with '['" in e.value.message
    assert list(read_file(write(tmp_path / "g.json", " [ ] \n"), "json")) == []
    # The file ends inside the last element: the others are kept.
    r = read(write(tmp_path / "h.json", '[{"a": 1}, {"a": 2}, {"a": "3'), "json")
    assert r.values() == [["1"], ["2"]]
    assert "not closed" in r.bad[3].reason
    # Only the closing bracket is missing: every element is complete.
    r = read(write(tmp_path / "i.json", '[{"a": 1}, {"a": 2}\n'), "json")
    assert r.values() == [["1"], ["2"]]
    assert r.bad == {}
    # Data after the array.
    r = read(write(tmp_path / "j.json", '[{"a": 1}] [{"a": 2}]'), "json")
    assert r.values() == [["1"]]
    assert r.reasons() == {2: "unexpected data after the end of the JSON array"}


def test_json_element_past_the_cap(tmp_path: Path) -> None:
    big = "y" * (3 << 20)
    text = json.dumps([{"a": 1}, {"a": [big, {"b": big}]}, {"a": 3}])
    r = read(write(tmp_path / "f.json", text), "json", max_field_bytes=1 << 19)
    assert r.values() == [["1"], ["3"]]
    assert "larger than" in r.bad[2].reason
    text = "\n".join([json.dumps({"a": 1}), json.dumps({"a": big}), json.dumps({"a": 3})])
    r = read(write(tmp_path / "f.jsonl", text), "jsonl", max_field_bytes=1 << 19)
    assert r.values() == [["1"], ["3"]]
    assert "larger than" in r.bad[2].reason


# ---- batches, resuming, the two paths ------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_skip_rows_gives_exactly_the_tail(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "f"
    if fmt in DELIMITER:
        lines = [DELIMITER[fmt].join(HEADER)]
        for i in range(40):
            lines.append("bad" if i % 9 == 4 else DELIMITER[fmt].join(people(i + 1)[-1]))
        write(path, "\n".join(lines) + "\n")
    else:
        objs = ["[1]" if i % 9 == 4 else json.dumps({"i": i}) for i in range(40)]
        write(path, "\n".join(objs) if fmt == "jsonl" else "[" + ",".join(objs) + "]")
    full = read(path, fmt, batch_rows=7)
    for skip in (0, 1, 5, 7, 13, 39, 40, 45):
        tail = read(path, fmt, batch_rows=7, skip_rows=skip)
        assert tail.rows == {n: r for n, r in full.rows.items() if n > skip}
        assert tail.bad == {n: b for n, b in full.bad.items() if n > skip}
    assert (len(full.rows), len(full.bad)) == (36, 4)


def test_batches_cover_every_row_once(tmp_path: Path) -> None:
    n = 200_000
    lines = ["id,v"] + [f"{i},{'bad,extra' if i == 123_456 else i * 7}" for i in range(1, n + 1)]
    path = write(tmp_path / "f.csv", "\n".join(lines) + "\n")
    batches = list(read_file(path, "csv", batch_rows=30_000))
    r = Read(batches)
    assert [b.rows.num_rows + len(b.bad) for b in batches] == [30_000] * 6 + [20_000]
    assert sorted(r.rows.keys() | r.bad.keys()) == list(range(1, n + 1))
    assert list(r.bad) == [123_456]
    assert r.rows[199_999] == {"id": "199999", "v": str(199_999 * 7)}


def test_fast_and_slow_paths_agree_on_a_clean_file(tmp_path: Path) -> None:
    rows = [
        [f"r{i}", "" if i % 5 == 0 else f"v,{i}", "多\n行" if i % 7 == 0 else "x"]
        for i in range(100)
    ]
    path = write(tmp_path / "f.csv", csv_text([["a", "b", "c"], *rows]))
    for batch_rows in (7, 100, 1000):
        fast = list(read_file(path, "csv", batch_rows=batch_rows))
        assert_same(fast, read_slow(path, "csv", batch_rows))
        assert_same(fast, read_fast(path, "csv", batch_rows, block_size=64))
        assert Read(fast).values() == [[v or None for v in row] for row in rows]
    for skip in (3, 50):
        assert_same(
            list(read_file(path, "csv", batch_rows=7, skip_rows=skip)),
            read_slow(path, "csv", 7, skip_rows=skip),
        )


def test_fast_path_hands_over_and_back(tmp_path: Path) -> None:
    """Problems scattered through a file many blocks long: every path gives the same batches."""
    rnd = random.Random(11)
    lines = ["a,b,c"]
    for i in range(3000):
        k = rnd.random()
        if k < 0.01:
            lines.append("too,few")
        elif k < 0.02:
            lines.append(f'{i},"\xff\xfe",x')
        elif k < 0.03:
            lines.append(f'{i},"{"w" * 3000}",big')  # larger than the block
        else:
            lines.append(f'{i},"q,""{i}""\nz",{"" if k < 0.5 else "y"}')
    data = "\n".join(lines).encode("latin-1") + b'\n1,2,"open'
    path = write(tmp_path / "f.csv", data)
    slow = read_slow(path, "csv", 97)
    for block in (512, 4096, 1 << 20):
        assert_same(read_fast(path, "csv", 97, block_size=block), slow)
    assert_same(list(read_file(path, "csv", batch_rows=97)), slow)
    r = Read(slow)
    assert r.reasons()[3001] == "unclosed quote at end of file"
    assert len(r.rows) + len(r.bad) == 3001
    skipped = read_fast(path, "csv", 97, block_size=512, skip_rows=1234)
    assert_same(skipped, read_slow(path, "csv", 97, skip_rows=1234))


NAMES = st.lists(
    st.text(alphabet="abcxyz_0123456789", min_size=1, max_size=6), min_size=1, max_size=5
).filter(lambda names: len({n.lower() for n in names}) == len(names))
VALUES = st.text(
    alphabet=st.one_of(
        st.sampled_from([",", ";", "\t", '"', "\n", "\r", " ", "x", "张", "é", "\x00"]),
        st.characters(blacklist_categories=("Cs",)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=150)
@given(
    names=NAMES,
    data=st.data(),
    fmt=st.sampled_from(["csv", "tsv", "ssv"]),
    terminator=st.sampled_from(["\n", "\r\n"]),
)
def test_round_trip_random_tables(
    names: list[str], data: st.DataObject, fmt: str, terminator: str
) -> None:
    rows = data.draw(
        st.lists(st.lists(VALUES, min_size=len(names), max_size=len(names)), max_size=30)
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / "f", csv_text([names, *rows], DELIMITER[fmt], terminator))
        fast = list(read_file(path, fmt, batch_rows=4))
        r = Read(fast)
        assert r.values() == rows
        assert sorted(r.rows) == list(range(1, len(rows) + 1))
        assert_same(fast, read_slow(path, fmt, 4))
        assert_same(fast, read_fast(path, fmt, 4, block_size=128))


def test_counting_records_agrees_with_splitting_them(tmp_path: Path) -> None:
    """Skipping by lines (where there is no quote) ends where splitting with csv does."""
    rnd = random.Random(5)
    parts = []
    for i in range(90_000):
        k = rnd.random()
        if k < 0.002 and not 20_000 < i < 80_000:  # quotes at both ends, none between
            parts.append(f'{i},"quoted\r\nvalue",x\n')
        elif k < 0.004:
            parts.append("\n\r\n")  # blank lines
        elif i == 50_000:
            parts.append(f"{i},{'w' * (3 << 19)},long\n")  # longer than a read
        else:
            parts.append(f"{i},{'y' * rnd.randrange(40)},z" + ("\r\n" if k < 0.5 else "\n"))
    path = write(tmp_path / "f.csv", "a,b,c\n" + "".join(parts) + "9,9,9")
    assert path.stat().st_size > 3 * CHUNK
    spec = delimited.delimited_spec(path, ",", "utf-8", 0, 100, 0, 1 << 20, 1 << 21)
    ends = [end for _, end, _, _ in records.read_records(path, spec.data_offset, ",", spec.cap)]
    for count in (1, 2, 777, 20_000, 31_337, 49_999, 50_000, 50_001, 70_001, len(ends)):
        assert delimited._skip_records(path, spec.data_offset, count, spec) == (
            ends[count - 1],
            count,
        )
    assert delimited._skip_records(path, spec.data_offset, len(ends) + 5, spec)[1] == len(ends)


def test_json_array_runs_with_bad_elements(tmp_path: Path) -> None:
    """Runs of elements parsed at once still find every bad element, numbered exactly."""
    rnd = random.Random(9)
    raw = []
    for i in range(20_000):
        k = rnd.random()
        if k < 0.001:
            raw.append('{"i": , "broken": 1}')
        elif k < 0.002:
            raw.append(str(i))
        elif k < 0.003:
            raw.append(f'{{"s": "a }}, {{ \\" quote", "i": {i}}}')
        elif k < 0.004:
            raw.append(f'{{"i": {i}, "v": [1}}')  # a '}' closing the '[' too
        elif k < 0.005:
            raw.append(f'{{"i": {i}, "big": 98765432109876543210987}}')
        else:
            raw.append(json.dumps({"i": i, "v": [i, {"w": "x"}]}))
    path = write(tmp_path / "f.json", "[\n" + ",\n".join(raw) + "\n]")
    r = read(path, "json", batch_rows=4096)
    for n, text in enumerate(raw, 1):
        try:
            value = json.loads(text)
        except ValueError:
            assert r.reasons()[n].startswith("not valid JSON")
            continue
        if isinstance(value, dict):
            assert r.rows[n]["i"] == str(value["i"])
            if "big" in value:
                assert r.rows[n]["big"] == "98765432109876543210987"
        else:
            assert r.reasons()[n] == "not a JSON object"
    assert len(r.rows) + len(r.bad) == len(raw)


def test_json_value_texts(tmp_path: Path) -> None:
    big = 12345678901234567890123
    objs = [
        {"n": 1, "f": 1.0, "b": True, "m": "x", "x": big},
        {"n": -7, "f": 2.5e-8, "b": None, "m": True, "x": 2},
        {"n": None, "f": 1e100, "b": False, "m": [1, "两", big], "x": None},
    ]
    r = read(write(tmp_path / "f.jsonl", "\n".join(json.dumps(o) for o in objs)), "jsonl")
    assert r.values() == [
        ["1", "1.0", "true", "x", str(big)],
        ["-7", orjson.dumps(2.5e-8).decode(), None, "true", "2"],
        [None, orjson.dumps(1e100).decode(), "false", f'[1,"两",{big}]', None],
    ]


def test_json_lines_across_read_chunks(tmp_path: Path) -> None:
    lines = [json.dumps({"i": i, "pad": "p" * (i % 97)}) for i in range(40_000)]
    path = write(tmp_path / "f.jsonl", "\r\n".join(lines))
    assert path.stat().st_size > 2 * CHUNK
    r = read(path, "jsonl", batch_rows=10_000)
    assert [row["i"] for _, row in sorted(r.rows.items())] == [str(i) for i in range(40_000)]
    assert r.bad == {}
    # A last line past the cap.
    write(path, "\n".join([*lines[:3], json.dumps({"i": "x" * (3 << 20)})]))
    r = read(path, "jsonl", max_field_bytes=1 << 19)
    assert sorted(r.rows) == [1, 2, 3]
    assert "larger than" in r.bad[4].reason


def test_json_array_large_elements_at_the_end(tmp_path: Path) -> None:
    big = json.dumps({"a": "y" * (3 << 20)})
    r = read(write(tmp_path / "f.json", f'[{{"a": 1}}, {big}]'), "json", max_field_bytes=1 << 19)
    assert r.values() == [["1"]]
    assert "larger than" in r.bad[2].reason
    r = read(write(tmp_path / "g.json", f'[{{"a": 1}}, {big}'), "json", max_field_bytes=1 << 19)
    assert r.values() == [["1"]]
    assert "larger than" in r.bad[2].reason


def test_json_field_larger_than_the_limit(tmp_path: Path) -> None:
    text = "\n".join(json.dumps({"a": "x" * n, "b": n}) for n in (10, 5000, 20))
    r = read(write(tmp_path / "f.jsonl", text), "jsonl", max_field_bytes=1000)
    assert [row["b"] for _, row in sorted(r.rows.items())] == ["10", "20"]
    assert r.reasons() == {2: "field 'a' is larger than 1000 bytes"}


DIRTY = st.lists(
    st.sampled_from(
        [b"a", b"bc", b",", b'"', b"\n", b"\r", b"\r\n", b" ", b"\t", b";", b"\xff", b"\x00"]
        + [s.encode(c) for s, c in (("é", "utf-8"), ("张", "utf-8"), ("张", "gbk"))]
    ),
    max_size=120,
).map(b"".join)


@settings(max_examples=300)
@given(
    body=DIRTY,
    fmt=st.sampled_from(["csv", "tsv", "ssv"]),
    charset=st.sampled_from(["utf-8", "gb18030"]),
    batch_rows=st.integers(1, 6),
    block=st.sampled_from([16, 64, 4096]),
    limit=st.sampled_from([3, 64 << 20]),
)
def test_any_bytes_read_the_same_by_both_paths(
    body: bytes, fmt: str, charset: str, batch_rows: int, block: int, limit: int
) -> None:
    """Whatever the bytes, the fast path (handing over as often as it must) and the slow path
    give the same batches, and every record is accounted for once."""
    header = DELIMITER[fmt].join(["h1", "h2", "h3"]).encode() + b"\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / "f", header + body)
        kw: dict[str, Any] = {"charset": charset, "max_field_bytes": limit}
        slow = read_slow(path, fmt, batch_rows, **kw)
        assert_same(read_fast(path, fmt, batch_rows, block, **kw), slow)
        assert_same(list(read_file(path, fmt, batch_rows=batch_rows, **kw)), slow)
        Read(slow)


# ---- bounds: a batch's text, a file's columns ----------------------------------------------


def long_rows(path: Path, rows: int, size: int, fmt: str = "csv") -> Path:
    value = "y" * size
    with path.open("w") as f:
        if fmt == "csv":
            f.write("email,bio\n")
            f.writelines(f"u{i}@x.com,{value}\n" for i in range(rows))
        else:
            f.writelines(
                json.dumps({"email": f"u{i}@x.com", "bio": value}) + "\n" for i in range(rows)
            )
    return path


@pytest.mark.parametrize("fast", [True, False])
def test_delimited_batches_are_bounded_by_their_text(tmp_path: Path, fast: bool) -> None:
    path = long_rows(tmp_path / "f.csv", 400, 50_000)  # 20 MB in rows of 50 KB
    budget = 1 << 20
    batches = list(
        read_file(
            path, "csv", None, 10_000, 0, 64 << 20, budget, fast=fast, block_size=delimited.BLOCK
        )
    )
    got = Read(batches)
    assert sorted(got.rows) == list(range(1, 401))
    # A batch ends after the piece that passes the budget: a piece is an Arrow block (2 MiB)
    # or, read slowly, about 1 MiB of records.
    assert all(b.rows.nbytes <= budget + delimited.BLOCK for b in batches)
    assert len(batches) >= 20_000_000 // (budget + delimited.BLOCK)
    # Resuming after a batch gives exactly the rest, batched the same way.
    first = batches[0].row_numbers.to_pylist()[-1]
    rest = list(
        read_file(path, "csv", None, 10_000, first, 64 << 20, budget, fast=fast, block_size=2 << 20)
    )
    assert Read(rest).rows == {n: r for n, r in got.rows.items() if n > first}


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_json_batches_are_bounded_by_their_text(tmp_path: Path, fmt: str) -> None:
    path = long_rows(tmp_path / "f.json", 400, 50_000, "jsonl")
    if fmt == "json":
        lines = path.read_text().splitlines()
        path.write_text("[" + ",\n".join(lines) + "]")
    budget = 1 << 20
    batches = list(read_file(path, fmt, batch_rows=10_000, batch_bytes=budget))
    assert sorted(Read(batches).rows) == list(range(1, 401))
    # A batch ends after the read (1 MiB) that passes the budget.
    assert all(b.rows.nbytes <= budget + 2 * CHUNK for b in batches)
    assert len(batches) >= 20_000_000 // (budget + 2 * CHUNK)


def test_a_header_with_too_many_columns_is_refused_before_any_record(tmp_path: Path) -> None:
    header = ",".join(f"c{i}" for i in range(5001))
    # The records after it would be bad ones: none is read.
    path = write(tmp_path / "f.csv", header + "\n" + '"never closed\n' * 1000)
    with pytest.raises(CdpError) as err:
        read_file(path, "csv", max_columns=1000)
    assert err.value.code is Code.LIMIT_EXCEEDED
    assert err.value.message == (
        "file: 5001 columns, at most 1000 are allowed (the limit on properties per record)"
    )
    assert read_header(path, "csv", max_columns=5001) == header.split(",")
    with pytest.raises(CdpError, match="5001 columns"):
        read_header(path, "csv", max_columns=5000)
    assert read_header(path, "jsonl") is None


def test_a_header_that_never_ends_is_not_read_whole(tmp_path: Path) -> None:
    # No line end: only the first MiB is looked at.
    path = write(tmp_path / "f.csv", "a," * (3 << 20))
    with pytest.raises(CdpError, match="more than 1000 columns"):
        read_file(path, "csv", max_columns=1000)
    # Quoted, so that its delimiters cannot be counted: it must end within the first MiB.
    path = write(tmp_path / "g.csv", '"' + "x" * (3 << 20) + '"\n1\n')
    with pytest.raises(CdpError, match="header is larger than 1048576 bytes"):
        read_file(path, "csv", max_columns=1000)
    # A line end in a quoted name, and bare CR line ends, are read as without the bound.
    path = write(tmp_path / "h.csv", '"a\nb",c\r1,2\r' + "3,4\r" * 2000)
    assert Read(list(read_file(path, "csv", max_columns=2))).columns == ["a\nb", "c"]


def test_json_keys_past_the_column_limit(tmp_path: Path) -> None:
    lines = [{f"k{i}_{j}": j for j in range(4)} for i in range(3)]
    path = write(tmp_path / "f.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    batches = read_file(path, "jsonl", batch_rows=1, max_columns=10)
    assert len(next(batches).columns) == 4
    assert len(next(batches).columns) == 8
    with pytest.raises(CdpError) as err:
        next(batches)
    assert err.value.code is Code.LIMIT_EXCEEDED
    assert "more than 10 distinct keys" in err.value.message


@settings(max_examples=500)
@given(
    body=DIRTY,
    delimiter=st.sampled_from([",", "\t", ";"]),
    cap=st.integers(1, 40),
    max_delimiters=st.integers(0, 4),
)
def test_records_past_a_bound_end_where_they_would_have(
    body: bytes, delimiter: str, cap: int, max_delimiters: int
) -> None:
    """A record past the byte cap or the delimiter bound is not fed to csv but followed to its
    end: the records are the same ones, ending at the same offsets, and those within the
    bounds are read as without them."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / "f", body)
        whole = list(records.read_records(path, 0, delimiter, 1 << 30))
        bounded = list(records.read_records(path, 0, delimiter, cap, max_delimiters))
        by_delimiters = list(records.read_records(path, 0, delimiter, 1 << 30, max_delimiters))
    assert [r[1] for r in bounded] == [r[1] for r in whole]
    assert [r[1] for r in by_delimiters] == [r[1] for r in whole]
    for (fields, _, _, problem), (b_fields, _, _, b_problem) in zip(whole, bounded, strict=True):
        if b_problem is None:
            assert (b_fields, problem) == (fields, None)
        elif problem is None:
            assert b_problem.startswith(("record larger than", "record with more than"))
    for (fields, _, raw, problem), (d_fields, _, _, d_problem) in zip(
        whole, by_delimiters, strict=True
    ):
        if problem is None and (
            max_delimiters == 0 or "".join(raw).count(delimiter) <= max_delimiters
        ):
            assert (d_fields, d_problem) == (fields, None)
        elif problem is None:
            assert d_problem == f"record with more than {max_delimiters} delimiters"


def test_a_record_of_millions_of_fields_is_not_held(tmp_path: Path) -> None:
    """csv keeps each field of a record: one of 30 million fields is followed, not read."""
    for unit in (",", "a,", '"a",'):
        path = write(
            tmp_path / "f.csv", "email,bio\n" + unit * ((30 << 20) // len(unit)) + "\nb,c\n"
        )
        got = Read(list(read_file(path, "csv")))
        assert got.reasons() == {1: "record with more than 1048578 delimiters"}
        assert got.rows == {2: {"email": "b", "bio": "c"}}
