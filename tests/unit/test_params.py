"""The helpers that read request values at the edge (opencdp.params), and the surfaces' tables
of codes: every refusal names its field, and no error a client causes is an internal one."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opencdp import params
from opencdp.errors import CdpError, Code
from opencdp.surfaces import dmartech, growingio, marketo, thinkingdata, wechat


def refused(call: Any, field: str, code: Code = Code.VALIDATION_FAILED) -> str:
    with pytest.raises(CdpError) as caught:
        call()
    assert caught.value.code is code
    assert caught.value.field == field and caught.value.message.startswith(f"{field}: ")
    return caught.value.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1), ("42", 42), (" 7 ", 7), ("+3", 3), (5.0, 5), (2**63 - 1, 2**63 - 1)],
)
def test_ids(value: Any, expected: int) -> None:
    assert params.ident(value, "id") == expected


@pytest.mark.parametrize(
    "value",
    [0, -1, "0", "-5", 2**63, 10**23, str(10**23), "9" * 5000, True, False, 1.5, float("inf"),
     float("nan"), "²", "١٢", "１２", "1e3", "0x10", "1_000", "", " ", [], {}, "1 2"],
)  # fmt: skip
def test_not_ids(value: Any) -> None:
    code = Code.MISSING_PARAMETER if value == "" else Code.VALIDATION_FAILED
    refused(lambda: params.ident(value, "clusterId"), "clusterId", code)


@given(st.integers())
def test_integers_within_bounds_and_only_those(n: int) -> None:
    if -(2**63) <= n < 2**63:
        assert params.integer(str(n), "n") == n
    else:
        refused(lambda: params.integer(n, "n"), "n")


def test_optional_int_and_bounds() -> None:
    assert params.optional_int(None, "pageNum", 1, 1, params.MAX_INT32) == 1
    assert params.optional_int("", "pageNum", 1, 1, params.MAX_INT32) == 1
    assert params.optional_int("3", "pageNum", 1, 1, params.MAX_INT32) == 3
    refused(lambda: params.optional_int(2**31, "pageNum", 1, 1, params.MAX_INT32), "pageNum")
    refused(lambda: params.integer(3, "file_type", 1, 2), "file_type")


@pytest.mark.parametrize("value", ["2024-05-01", "0001-01-02", "9999-12-30"])
def test_days(value: str) -> None:
    assert params.day(value, "from") == date.fromisoformat(value)


@pytest.mark.parametrize(
    "value",
    ["0001-01-01", "9999-12-31", "2024-02-30", "2024-1-1", "20240101", "２０２４-01-01", 20240101],
)
def test_not_days(value: Any) -> None:
    refused(lambda: params.day(value, "from"), "from")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("20240501", datetime(2024, 5, 1)), ("2024050113", datetime(2024, 5, 1, 13)),
     ("202405011345", datetime(2024, 5, 1, 13, 45)), ("00010102", datetime(1, 1, 2))],
)  # fmt: skip
def test_compact_times(value: str, expected: datetime) -> None:
    assert params.compact_time(value, "export_date") == expected


@pytest.mark.parametrize(
    "value", ["00010101", "99991231", "9999123123", "2024013124", "202401011260", "2024051", "x"]
)
def test_not_compact_times(value: str) -> None:
    refused(lambda: params.compact_time(value, "export_date"), "export_date")


def test_shapes() -> None:
    assert params.mapping(None, "pagerHeader") == {}
    assert params.mapping({"a": 1}, "pagerHeader") == {"a": 1}
    message = refused(lambda: params.mapping("1", "pagerHeader"), "pagerHeader")
    assert "expected an object, got text" in message
    refused(lambda: params.mapping(None, "qp", required=True), "qp", Code.MISSING_PARAMETER)
    assert params.text(None, "remarks") == ""
    refused(lambda: params.text(3, "remarks"), "remarks")
    refused(lambda: params.text("", "env", required=True), "env", Code.MISSING_PARAMETER)
    refused(lambda: params.text("abc", "name", max_length=2), "name")
    assert params.flag(None, "stop_on_error") is False
    assert params.flag("true", "stop_on_error") is True
    assert params.flag(False, "stop_on_error") is False
    refused(lambda: params.flag(1, "stop_on_error"), "stop_on_error")
    assert params.word(" utf-8 ", "charset") == "utf-8"
    assert params.word(None, "charset") is None
    refused(lambda: params.word("utf\x00-8", "charset"), "charset")
    refused(lambda: params.word("../x", "charset"), "charset")


CLIENT_ERRORS = (
    Code.INVALID_JSON,
    Code.VALIDATION_FAILED,
    Code.MISSING_PARAMETER,
    Code.LIMIT_EXCEEDED,
    Code.NOT_FOUND,
    Code.AUTH_FAILED,
    Code.MISSING_CREDENTIAL,
)


@pytest.mark.parametrize(
    ("table", "internal"),
    [
        (marketo.ERRORS, marketo.ERRORS[Code.INTERNAL]),
        (wechat.ERRORS, wechat.ERRORS[Code.INTERNAL]),
        (thinkingdata.ERRORS, thinkingdata.ERRORS[Code.INTERNAL]),
        (growingio.ERRORS, growingio.ERRORS[Code.INTERNAL]),
    ],
)
def test_no_client_error_is_answered_as_an_internal_one(
    table: dict[Code, Any], internal: Any
) -> None:
    for code in CLIENT_ERRORS:
        assert table.get(code, internal)[0] != internal[0], code


def test_dmartech_parameter_codes() -> None:
    for code in (Code.INVALID_JSON, Code.VALIDATION_FAILED, Code.LIMIT_EXCEEDED):
        assert dmartech.ERRORS[code][0] != dmartech.ERRORS[Code.INTERNAL][0]
