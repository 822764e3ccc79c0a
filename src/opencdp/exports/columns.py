"""The columns of each data type's export: GrowingIO raw data export 2.0's own, in its order.

:data:`LAYOUT` is what each data type holds: the events named like it (``visit``, ``page``,
…), for ``custom_event`` every other event, for ``user`` the profiles changed in the period,
for ``user_cluster`` the members of the segments refreshed in it.

The event data types have exactly the vendor's columns (its field reference for export 2.0),
filled where OpenCDP holds the data and present but empty (null) where it does not, followed by
the few columns of ours a type needs so that nothing we hold is lost (``eventId`` always; the
user id, times or properties where the vendor's type has no column for them). ``user`` and
``user_cluster`` are OpenCDP's own types, with fixed columns named in the vendor's style.

Properties never become columns: an event's properties are one JSON object (the vendor's
``eventVariable``, ``pageVariable`` or ``conversionVariable``), a profile's are ``userVariable``
and its identity keys ``identities``; the keys are the property names, the values typed JSON
(whole numbers as integers, datetimes as epoch milliseconds, lists as arrays). So no property
name, whatever it is, can collide with a column. Times are epoch milliseconds, UTC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from opencdp.catalog.model import Property
from opencdp.exports.content import Dataset, Layout, Source
from opencdp.segments.kinds import Holds

# GrowingIO raw data export 2.0, field reference per data type (names and order).
_PAGE_ATTRIBUTES = (
    *(f"customerAttributes{i}" for i in range(2, 11)),
    *(f"pageAttributes{i}" for i in range(1, 11)),
)
VENDOR: dict[str, tuple[str, ...]] = {
    "visit": (
        "visitUserId", "sessionId", "accountVersion", "platform", "domain", "page",
        "queryParameters", "referrer", "language", "screenHeight", "screenWidth", "time",
        "sendTime", "ip", "userAgent", "operatingSystem", "operatingSystemVersion",
        "clientVersion", "channel", "deviceBrand", "deviceModel", "deviceType",
        "deviceOrientation", "latitude", "longitude", "vstRequestId", "idfa", "androidId",
        "IMEI",
    ),
    "page": (
        "visitUserId", "sessionId", "platform", "domain", "page", "queryParameters",
        "referrer", "referrerPage", "title", "time", "sendTime", "deviceOrientation",
        "loginUserId", "pageGroup", "appVariable", *_PAGE_ATTRIBUTES, "pageRequestId",
        "vstRequestId",
    ),
    "action": (
        "visitUserId", "sessionId", "requestType", "domain", "page", "sendTime", "time",
        "href", "requestValue", "index", "info", "pageRequestId", "actionRequestId",
    ),
    "action_tag": ("sendTime", "actionRequestId", "ruleId"),
    "custom_event": (
        "visitUserId", "sessionId", "time", "sendTime", "pageTime", "domain", "page",
        "queryParameters", "eventName", "eventNumber", "eventVariable", "loginUserId",
        "pageRequestId",
    ),
    "ads_track_activation": (
        "visitUserId", "idfa", "imei", "uuid", "androidId", "ip", "userAgent", "platform",
        "operatingSystemVersion", "sendTime", "linkId", "campaignId", "channelId", "linkName",
        "campaignName", "channelName",
    ),
    "ads_track_click": (
        "idfa", "imei", "uuid", "androidId", "ip", "userAgent", "platform",
        "operatingSystemVersion", "eventTime", "linkId", "campaignId", "channelId", "linkName",
        "campaignName", "channelName",
    ),
    "pvar": (
        "visitUserId", "sessionId", "time", "sendTime", "pageTime", "domain", "page",
        "pageVariable", "pageRequestId",
    ),
    "evar": ("visitUserId", "sessionId", "time", "sendTime", "domain", "conversionVariable"),
}  # fmt: skip

# The vendor's bigint and double columns; every other column is text.
_BIGINT = {"time", "sendTime", "pageTime", "eventTime", "index"}
_DOUBLE = {"eventNumber", "latitude", "longitude"}

# Where each of our event fields goes: the first of the vendor's columns the type has, all of
# them for the user id; a type with none of them gets the last name as a column of ours.
_USER = ("visitUserId", "loginUserId")
_TIME = ("time", "eventTime")
_SEND = ("sendTime",)
_VARIABLES = ("eventVariable", "pageVariable", "conversionVariable")
_JSON = {*_VARIABLES, "appVariable", "identities", "userVariable"}


def _event_columns(data_type: str) -> tuple[str, ...]:
    vendor = VENDOR[data_type]
    extra = ["eventId"]
    for names, ours in ((_USER, "loginUserId"), (_TIME, "time"), (_SEND, "sendTime")):
        if not any(n in vendor for n in names):
            extra.append(ours)
    if not any(n in vendor for n in _VARIABLES):
        extra.append("eventVariable")
    return (*vendor, *extra)


COLUMNS: dict[str, tuple[str, ...]] = {
    **{dt: _event_columns(dt) for dt in VENDOR},
    "user": (
        "visitUserId", "loginUserId", "createTime", "updateTime", "identities", "userVariable",
    ),
    "user_cluster": (
        "clusterId", "clusterName", "clusterType", "clusterVersion", "refreshTime",
        "visitUserId", "loginUserId", "tagValue", "identities",
    ),
}  # fmt: skip
_TYPES = {"clusterId": pa.int64(), "clusterVersion": pa.int64(), "refreshTime": pa.int64()}
_TYPES |= {"createTime": pa.int64(), "updateTime": pa.int64()}
assert all(len(set(c)) == len(c) for c in COLUMNS.values()), "a data type repeats a column"


def _field(name: str) -> pa.Field:
    if name in _JSON:
        return pa.field(name, pa.string(), metadata={b"json": b"1"})
    if name in _BIGINT:
        return pa.field(name, pa.int64())
    if name in _DOUBLE:
        return pa.field(name, pa.float64())
    return pa.field(name, _TYPES.get(name, pa.string()))


SCHEMAS: dict[str, pa.Schema] = {
    dt: pa.schema([_field(n) for n in cols]) for dt, cols in COLUMNS.items()
}


def is_json(field: pa.Field) -> bool:
    """Whether a column holds JSON text (written as an object in JSON lines)."""
    return bool(field.metadata and field.metadata.get(b"json"))


def json_object(batch: pa.RecordBatch, props: Iterable[tuple[str, str]]) -> pa.Array:
    """One JSON object per row from ``(key, column)`` pairs, where each column of ``batch``
    holds a value's JSON text or null (a null leaves the key out); ``{}`` when a row has
    none. Built column by column in Arrow, never row by row."""
    n = batch.num_rows
    names = set(batch.schema.names)
    pieces = []
    for key, column in props:
        if column not in names:
            continue
        prefix = "," + orjson.dumps(key).decode() + ":"
        pieces.append(
            pc.binary_join_element_wise(prefix, batch.column(column), "", null_handling="emit_null")
        )
    if not pieces:
        return pa.array(["{}"] * n, pa.string())
    body = pc.binary_join_element_wise(*pieces, "", null_handling="replace", null_replacement="")
    return pc.binary_join_element_wise("{", pc.utf8_slice_codeunits(body, 1), "}", "")


def _assemble(data_type: str, n: int, values: Mapping[str, Any]) -> pa.RecordBatch:
    schema = SCHEMAS[data_type]
    arrays = [
        pa.nulls(n, f.type) if f.name not in values else _cast(values[f.name], f.type)
        for f in schema
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _cast(values: Any, typ: pa.DataType) -> pa.Array:
    array = values if isinstance(values, pa.Array) else pa.array(values)
    return array if array.type == typ else pc.cast(array, typ)


def events(data_type: str, batch: pa.RecordBatch, props: Sequence[Property]) -> pa.RecordBatch:
    """A batch of :meth:`Store.export_events` in the data type's columns."""
    cols = set(COLUMNS[data_type])
    user, login = _user_ids(batch)
    values: dict[str, Any] = {"eventId": batch.column("event_id")}
    for name in _USER:
        if name in cols:
            values[name] = user if name == "visitUserId" else login
    values[next(n for n in _TIME if n in cols)] = batch.column("time")
    values["sendTime"] = batch.column("send_time")
    if "eventName" in cols:
        values["eventName"] = batch.column("event_name")
    variables = next(n for n in _VARIABLES if n in cols)
    values[variables] = json_object(batch, ((p.name, p.column) for p in props))
    return _assemble(data_type, batch.num_rows, values)


def profiles(data_type: str, batch: pa.RecordBatch, props: Sequence[Property]) -> pa.RecordBatch:
    """A batch of :meth:`Store.export_profiles` in the ``user`` columns."""
    user, login = _user_ids(batch)
    values = {
        "visitUserId": user,
        "loginUserId": login,
        "createTime": batch.column("created"),
        "updateTime": batch.column("updated"),
        "identities": json_object(batch, ((p.name, p.column) for p in props if p.is_identity)),
        "userVariable": json_object(
            batch, ((p.name, p.column) for p in props if not p.is_identity)
        ),
    }
    return _assemble(data_type, batch.num_rows, values)


def members(
    data_type: str,
    batch: pa.RecordBatch,
    segments: Mapping[int, Any],
    keys: Sequence[Property],
) -> pa.RecordBatch:
    """A batch of :meth:`Store.export_members` in the ``user_cluster`` columns; ``segments``
    holds each segment's ``name``, ``catalog`` and ``refreshed_at`` (UTC, naive)."""
    ids = batch.column("segment_id").to_pylist()
    seg = [segments[i] for i in ids]
    user, login = _user_ids(batch)
    values = {
        "clusterId": batch.column("segment_id"),
        "clusterName": pa.array([s.name for s in seg], pa.string()),
        "clusterType": pa.array(
            ["tag" if s.catalog == Holds.TAG else "cluster" for s in seg], pa.string()
        ),
        "clusterVersion": batch.column("version"),
        "refreshTime": pa.array([_ms(s.refreshed_at) for s in seg], pa.int64()),
        "visitUserId": user,
        "loginUserId": login,
        "tagValue": batch.column("tag_value"),
        "identities": json_object(batch, ((p.name, p.column) for p in keys)),
    }
    return _assemble(data_type, batch.num_rows, values)


def _user_ids(batch: pa.RecordBatch) -> tuple[pa.Array, pa.Array]:
    """``visitUserId`` and ``loginUserId`` of a batch: our user id, and the value of the
    project's login user property where it has one (the store's ``login`` column; empty for a
    user without a value), else our user id again."""
    user = pc.cast(batch.column("user_id"), pa.string())
    if "login" in batch.schema.names:
        return user, pc.cast(batch.column("login"), pa.string())
    return user, user


def _ms(at: datetime) -> int:
    """Epoch milliseconds of a UTC datetime (naive ones are UTC)."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    delta = at - datetime(1970, 1, 1)
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


LAYOUT = Layout(
    [
        *(Dataset(dt, Source.EVENTS, None if dt == "custom_event" else (dt,)) for dt in VENDOR),
        Dataset("user", Source.PROFILES),
        Dataset("user_cluster", Source.MEMBERSHIPS),
    ],
    events=events,
    profiles=profiles,
    members=members,
)
assert set(LAYOUT.names) == set(COLUMNS), "a data type without columns, or columns without one"
