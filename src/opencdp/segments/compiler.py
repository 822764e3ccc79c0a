"""Definitions → neutral sqlglot trees, which each store renders in its own SQL.

The compiler is pure: it takes a definition, the project's schema and timezone, and "now", and
returns a query selecting ``(user_id, tag_value)`` from the logical tables ``users`` and
``events`` (:mod:`opencdp.store.tree`), which the store scopes to the project and renders in
its dialect. It never queries a database: the regular expressions it meets are returned with
the field that holds each, for the store's engine to judge. Every property is resolved through
the catalog to its generated column (a user's name never becomes an identifier); every value
from the definition becomes a literal built by sqlglot after being read as the property's
type, or the definition is refused with the field that is wrong. Operations whose spelling
differs between engines are the neutral nodes of :mod:`opencdp.store.tree`.

Semantics, which the reference evaluator in the tests restates in plain Python:

- A filter on a null value is false, except ``isNull`` (true) — also for the negated comparators
  (``notEqual``, ``notInclude``, ``notRegexMatch``): they match users who have a value. An empty
  list is no value, like null.
- An event condition measures, per user, the events of one name in the window that pass its
  filters: ``TIMES`` counts them, ``SUM``/``AVG``/``MAX``/``MIN`` aggregate the ``quota``
  property, ``DISTINCT`` counts its distinct values. A user without such events has ``TIMES``,
  ``SUM`` and ``DISTINCT`` 0 (so "fewer than 3 times" includes them) and no ``AVG``/``MAX``/
  ``MIN`` (which compares true with nothing).
- Event tags (first/last event, metric) tag the users with at least one matching event: a
  metric tag gives no ``TIMES`` of 0 to everyone else.
- ``recentDay: "a-b"`` covers whole days from ``b`` days ago to ``a`` days ago in the project's
  timezone; without it, all time.
- A condition that holds for a user without events is compiled as ``NOT IN`` the users whose
  events make it false; otherwise as ``IN`` the users whose events make it true. Both scan only
  the events of that name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any

import sqlglot.expressions as exp

from opencdp.catalog import types as ct
from opencdp.catalog.model import Property, Schema
from opencdp.catalog.types import PropertyType
from opencdp.config import Limits
from opencdp.errors import CdpError, invalid
from opencdp.segments.model import (
    Analysis,
    ClusterDef,
    Comparator,
    EventCondition,
    Filter,
    FirstLastEvent,
    Measure,
    QuotaEvent,
    Relation,
    TableType,
    TagDef,
    Window,
)
from opencdp.store import tree
from opencdp.store.tree import EVENTS, USERS, SqlDialect

USER_ID = "user_id"
TAG_VALUE = "tag_value"
EVENT_NAME = "event_name"
EVENT_TIME = "event_time"
EVENT_ID = "event_id"

# Measures that are 0 for a user without matching events; the others are absent.
ZERO_WHEN_NONE = {Analysis.TIMES, Analysis.SUM, Analysis.DISTINCT}
ORDERED = {PropertyType.NUMBER, PropertyType.DATETIME}
_LIMITS = Limits()


@dataclass(frozen=True)
class Span:
    """A resolved ``recentDay`` window: local wall-clock bounds for the detail, UTC bounds for
    the query (``start`` inclusive, ``end`` exclusive)."""

    start_local: datetime
    end_local: datetime  # the last second of the last day
    start_utc: datetime
    end_utc: datetime


@dataclass
class Compiled:
    query: exp.Select  # the neutral tree, over the logical tables
    spans: list[Span | None] = field(default_factory=list)  # per event condition, in order
    patterns: list[tuple[str, str]] = field(default_factory=list)  # (regex, its field)

    def sql(self, dialect: SqlDialect, tables: Mapping[str, str]) -> str:
        """The query in ``dialect``, reading the physical ``tables`` (logical name -> name)."""
        return tree.render(self.query, dialect, tables)

    def check(self, dialect: SqlDialect, pattern_error: Callable[[str], str | None]) -> None:
        """Refuse what an engine cannot run: an operation ``dialect`` lacks, a regular
        expression its engine cannot compile (``pattern_error`` says why, or None), named by
        the field that holds it."""
        tree.check(self.query, dialect)
        for pattern, where in self.patterns:
            reason = pattern_error(pattern)
            if reason is not None:
                raise invalid(where, f"not a valid regular expression ({reason})")


class Compiler:
    def __init__(self, schema: Schema, tz: tzinfo, now: datetime) -> None:
        self.schema = schema
        self.tz = tz
        self.now = now
        self.spans: list[Span | None] = []
        self.patterns: list[tuple[str, str]] = []

    # ---- entry points --------------------------------------------------------------------
    def cluster(self, d: ClusterDef, field: str = "qp") -> Compiled:
        self.spans, self.patterns = [], []
        where = self._definition(d, field)
        q = exp.select(exp.column(USER_ID), exp.cast(exp.null(), "VARCHAR").as_(TAG_VALUE))
        q = q.from_(exp.to_table(USERS)).where(where)
        return Compiled(q, self.spans, self.patterns)

    def tag(self, t: TagDef, field: str = "tagQp") -> Compiled:
        self.spans, self.patterns = [], []
        if t.values is not None:
            case = exp.Case()
            for i, v in enumerate(t.values):
                cond = self._definition(
                    v.definition, f"{field}.userTagValueDefs.{i}.userClusterDef"
                )
                case = case.when(cond, exp.Literal.string(v.value))
            inner = exp.select(exp.column(USER_ID), case.as_(TAG_VALUE)).from_(exp.to_table(USERS))
            q = (
                exp.select(USER_ID, TAG_VALUE)
                .from_(inner.subquery("t"))
                .where(exp.column(TAG_VALUE).is_(exp.null()).not_())
            )
            return Compiled(q, self.spans, self.patterns)
        if t.first_last is not None:
            where = f"{field}.userTagConFirstLastEventDef.userTagConFirstLastEvent"
            q = self._first_last(t.first_last, where)
            return Compiled(q, self.spans, self.patterns)
        assert t.quota is not None
        where = f"{field}.userTagConQuotaDef.userTagConQuotaEvent"
        return Compiled(self._quota_tag(t.quota, where), self.spans, self.patterns)

    # ---- definitions ---------------------------------------------------------------------
    def _definition(self, d: ClusterDef, field: str) -> exp.Expr:
        users = [
            self._filter(f, self.schema.user, f"{field}.filts.{i}") for i, f in enumerate(d.filters)
        ]
        events = [self._event(e, f"{field}.events.{i}") for i, e in enumerate(d.events)]
        parts = []
        if users:
            parts.append(_join(users, d.relation))
        if events:
            parts.append(_join(events, d.event_relation))
        return _join(parts, d.event_user_relation)

    def _event(self, e: EventCondition, field: str) -> exp.Expr:
        span = self.span(e.window)
        self.spans.append(span)
        measure = self._measure(e.measure, f"{field}.taPropQuota")
        test = self._compare_measure(measure, e.comparator, e.num, f"{field}.num")
        scope = self._event_scope(e.event, span, e.filters, e.relation, f"{field}.filts")
        if _holds_without_events(e):
            # True for users without such events: everyone except those whose events make it
            # false.
            having = exp.not_(exp.func("COALESCE", test, exp.false()))
            sub = self._users(scope, having)
            return exp.column(USER_ID).isin(query=sub).not_()
        return exp.column(USER_ID).isin(query=self._users(scope, test))

    def _users(self, scope: exp.Expr, having: exp.Expr) -> exp.Select:
        return (
            exp.select(USER_ID)
            .from_(exp.to_table(EVENTS))
            .where(scope)
            .group_by(USER_ID)
            .having(having)
        )

    def _event_scope(
        self,
        event: str,
        span: Span | None,
        filters: list[Filter],
        relation: Relation,
        field: str,
    ) -> exp.Expr:
        conds: list[exp.Expr] = [exp.column(EVENT_NAME).eq(exp.Literal.string(event))]
        if span is not None:
            conds.append(exp.column(EVENT_TIME) >= _timestamp(span.start_utc))
            conds.append(exp.column(EVENT_TIME) < _timestamp(span.end_utc))
        if filters:
            preds = [
                self._filter(f, self.schema.event, f"{field}.{i}") for i, f in enumerate(filters)
            ]
            conds.append(exp.paren(_join(preds, relation)))
        return exp.and_(*conds)

    def _measure(self, m: Measure, field: str) -> exp.Expr:
        if m.analysis is Analysis.TIMES:
            return exp.Count(this=exp.Star())
        assert m.quota is not None
        prop = self._property(m.quota, self.schema.event, f"{field}.quota")
        col = exp.column(prop.column)
        if m.analysis is Analysis.DISTINCT:
            return exp.Count(this=exp.Distinct(expressions=[col]))
        if prop.type is not PropertyType.NUMBER:
            raise invalid(
                f"{field}.quota",
                f"{m.analysis.value} needs a number property; {m.quota!r} is {prop.type.value}",
            )
        if m.analysis is Analysis.SUM:
            return exp.func("COALESCE", exp.Sum(this=col), exp.Literal.number(0))
        agg = {Analysis.AVG: exp.Avg, Analysis.MAX: exp.Max, Analysis.MIN: exp.Min}
        return agg[m.analysis](this=col)

    def _compare_measure(
        self, measure: exp.Expr, comparator: Comparator, num: str, field: str
    ) -> exp.Expr:
        values = _range(num, field) if comparator is Comparator.RANGE else [_number(num, field)]
        lits: list[exp.Expr] = [exp.Literal.number(_num_text(v)) for v in values]
        return _ordered(measure, comparator, lits)

    # ---- tags of one event ---------------------------------------------------------------
    def _first_last(self, d: FirstLastEvent, field: str) -> exp.Select:
        if d.property.table is not TableType.EVENT:
            raise invalid(f"{field}.calcPropVo.property.tableType", "expected an event property")
        span = self.span(d.window)
        self.spans.append(span)
        prop = self._property(d.property.column, self.schema.event, f"{field}.calcPropVo")
        # The value on that event, null included (a null is no tag, not an earlier value).
        pick = tree.ArgMinNull if d.first else tree.ArgMaxNull
        order = exp.Tuple(expressions=[exp.column(EVENT_TIME), exp.column(EVENT_ID)])
        value = pick(this=exp.column(prop.column), expression=order)
        scope = self._event_scope(d.event, span, d.filters, d.relation, f"{field}.filts")
        return self._per_user(value, prop.type, scope)

    def _per_user(self, value: exp.Expr, ptype: PropertyType, scope: exp.Expr) -> exp.Select:
        """Users with their ``value`` over their events in ``scope``, as tag text."""
        inner = (
            exp.select(exp.column(USER_ID), value.as_("v"))
            .from_(exp.to_table(EVENTS))
            .where(scope)
            .group_by(USER_ID)
        )
        return (
            exp.select(exp.column(USER_ID), self._as_text(exp.column("v"), ptype).as_(TAG_VALUE))
            .from_(inner.subquery("t"))
            .where(exp.column("v").is_(exp.null()).not_())
        )

    def _quota_tag(self, d: QuotaEvent, field: str) -> exp.Select:
        span = self.span(d.window)
        self.spans.append(span)
        measure = self._measure(d.measure, field)
        scope = self._event_scope(d.event, span, d.filters, d.relation, f"{field}.filts")
        return self._per_user(measure, PropertyType.NUMBER, scope)

    # ---- filters -------------------------------------------------------------------------
    def _property(self, name: str, props: dict[str, Property], field: str) -> Property:
        prop = props.get(name)
        if prop is None:
            table = "user" if props is self.schema.user else "event"
            raise invalid(field, f"unknown {table} property {name!r}")
        return prop

    def _filter(self, f: Filter, props: dict[str, Property], field: str) -> exp.Expr:
        prop = self._property(f.column, props, f"{field}.columnName")
        col = exp.column(prop.column)
        c, t = f.comparator, prop.type
        where = f"{field}.comparator"
        if c is Comparator.IS_NULL:
            if t is PropertyType.LIST:
                return exp.or_(col.is_(exp.null()), tree.ListLength(this=col).eq(0))
            return col.is_(exp.null())
        if c is Comparator.NOT_NULL:
            if t is PropertyType.LIST:
                return exp.and_(col.is_(exp.null()).not_(), tree.ListLength(this=col) > 0)
            return col.is_(exp.null()).not_()
        if c in (Comparator.IS_TRUE, Comparator.IS_FALSE):
            if t is not PropertyType.BOOL:
                raise invalid(where, f"{c.value} needs a bool property; {f.column!r} is {t.value}")
            return _false_if_null(col.eq(exp.true() if c is Comparator.IS_TRUE else exp.false()))
        if t is PropertyType.LIST:
            return self._list_filter(f, col, field)
        if c in (Comparator.EQUAL, Comparator.NOT_EQUAL):
            lits = [_literal(self._typed(v, t, f"{field}.ftv"), t) for v in f.values]
            same: exp.Expr = col.isin(*lits) if len(lits) > 1 else col.eq(lits[0])
            return _false_if_null(same if c is Comparator.EQUAL else exp.not_(same))
        if c in (
            Comparator.GREATER,
            Comparator.GREATER_EQUAL,
            Comparator.LESS,
            Comparator.LESS_EQUAL,
            Comparator.RANGE,
        ):
            if t not in ORDERED:
                raise invalid(
                    where,
                    f"{c.value} needs a number or datetime property; {f.column!r} is {t.value}",
                )
            typed = [self._typed(v, t, f"{field}.ftv") for v in f.values]
            if c is Comparator.RANGE and typed[0] > typed[1]:
                raise invalid(f"{field}.ftv", "range: the low value comes first")
            return _false_if_null(_ordered(col, c, [_literal(v, t) for v in typed]))
        if t is not PropertyType.STRING:
            raise invalid(where, f"{c.value} needs a string property; {f.column!r} is {t.value}")
        text = exp.Literal.string(_checked_text(f.values[0], f"{field}.ftv"))
        if c in (Comparator.INCLUDE, Comparator.NOT_INCLUDE):
            found: exp.Expr = exp.StrPosition(this=col, substr=text) > 0
            return _false_if_null(found if c is Comparator.INCLUDE else exp.not_(found))
        self.patterns.append((f.values[0], f"{field}.ftv"))  # for the store's engine to judge
        match: exp.Expr = exp.RegexpLike(this=col, expression=text)
        return _false_if_null(match if c is Comparator.REGEX_MATCH else exp.not_(match))

    def _list_filter(self, f: Filter, col: exp.Expr, field: str) -> exp.Expr:
        c = f.comparator
        if c not in (
            Comparator.EQUAL,
            Comparator.NOT_EQUAL,
            Comparator.INCLUDE,
            Comparator.NOT_INCLUDE,
        ):
            raise invalid(f"{field}.comparator", f"{c.value} does not apply to a list property")
        items = [exp.Literal.string(_checked_text(v, f"{field}.ftv")) for v in f.values]
        test: exp.Expr = tree.ListHasAny(this=col, expression=exp.Array(expressions=items))
        if c in (Comparator.EQUAL, Comparator.INCLUDE):
            return _false_if_null(test)
        # An empty list is no value, as for isNull: a negation matches users who have one.
        return _false_if_null(exp.and_(tree.ListLength(this=col) > 0, exp.not_(test)))

    def _typed(self, value: str, ptype: PropertyType, field: str) -> Any:
        """An ``ftv`` text as a value of the property's type (datetimes: µs since the epoch,
        UTC)."""
        if ptype is PropertyType.NUMBER:
            return _number(value, field)
        if ptype is PropertyType.DATETIME:
            try:
                return ct.coerce(ptype, value, field, _LIMITS, self.tz)
            except CdpError as exc:
                raise invalid(field, exc.message.partition(": ")[2]) from None
        if ptype is PropertyType.BOOL:
            low = value.strip().lower()
            if low in ct.TRUE_TEXTS:
                return True
            if low in ct.FALSE_TEXTS:
                return False
            raise invalid(field, f"expected true or false, got {value[:80]!r}")
        return _checked_text(value, field)

    def _as_text(self, value: exp.Expr, ptype: PropertyType) -> exp.Expr:
        """A tag value as text: whole numbers without ``.0``; datetimes as wall-clock time in
        the project's timezone (as definitions read them); lists comma-joined."""
        if ptype is PropertyType.NUMBER:
            return tree.NumberText(this=value)
        if ptype is PropertyType.DATETIME:
            return tree.LocalTimeText(this=value, zone=exp.Literal.string(_zone_name(self.tz)))
        if ptype is PropertyType.LIST:
            return tree.ListText(this=value, expression=exp.Literal.string(","))
        return exp.cast(value, "VARCHAR")

    # ---- time ----------------------------------------------------------------------------
    def span(self, window: Window | None) -> Span | None:
        if window is None:
            return None
        return resolve_window(window, self.now, self.tz)


def resolve_window(window: Window, now: datetime, tz: tzinfo) -> Span:
    today = now.astimezone(tz).date()
    first = today - timedelta(days=window.far)
    last = today - timedelta(days=window.near)
    start = _local_midnight(first, tz)
    end = _local_midnight(last + timedelta(days=1), tz)
    return Span(
        start_local=start.replace(tzinfo=None),
        end_local=datetime.combine(last, time(23, 59, 59)),
        start_utc=start.astimezone(UTC).replace(tzinfo=None),
        end_utc=end.astimezone(UTC).replace(tzinfo=None),
    )


def _local_midnight(day: date, tz: tzinfo) -> datetime:
    return datetime.combine(day, time(0, 0), tzinfo=tz)


def _holds_without_events(e: EventCondition) -> bool:
    """Whether the condition is true for a user with no matching event."""
    if e.measure.analysis not in ZERO_WHEN_NONE:
        return False
    if e.comparator is Comparator.RANGE:
        low, high = _range(e.num, "num")
        return low <= 0 <= high
    n = _number(e.num, "num")
    return {
        Comparator.EQUAL: n == 0,
        Comparator.NOT_EQUAL: n != 0,
        Comparator.GREATER: n < 0,
        Comparator.GREATER_EQUAL: n <= 0,
        Comparator.LESS: n > 0,
        Comparator.LESS_EQUAL: n >= 0,
    }[e.comparator]


def _ordered(left: exp.Expr, c: Comparator, lits: list[exp.Expr]) -> exp.Expr:
    if c is Comparator.RANGE:
        return exp.Between(this=left, low=lits[0], high=lits[1])
    ops = {
        Comparator.EQUAL: exp.EQ,
        Comparator.NOT_EQUAL: exp.NEQ,
        Comparator.GREATER: exp.GT,
        Comparator.GREATER_EQUAL: exp.GTE,
        Comparator.LESS: exp.LT,
        Comparator.LESS_EQUAL: exp.LTE,
    }
    return ops[c](this=left, expression=lits[0])


def _join(parts: list[exp.Expr], relation: Relation) -> exp.Expr:
    wrapped = [exp.paren(p) for p in parts]
    if len(wrapped) == 1:
        return wrapped[0]
    return exp.and_(*wrapped) if relation is Relation.AND else exp.or_(*wrapped)


def _false_if_null(test: exp.Expr) -> exp.Expr:
    """A filter's test, whose null (no value) must read as false. It is left as it is: a
    filter only ever reaches AND, OR, WHERE and CASE WHEN (never a NOT), where a null input
    cannot make a result true that a false input would not — so it already acts as false, and
    a bare comparison lets the engine push the filter down into the scan."""
    return test


def _zone_name(tz: tzinfo) -> str:
    name = getattr(tz, "key", None)
    return name if isinstance(name, str) else "UTC"


def _timestamp(dt: datetime) -> exp.Expr:
    return tree.Timestamp(this=exp.Literal.string(dt.strftime("%Y-%m-%d %H:%M:%S.%f")))


def _number(text: str, field: str) -> float:
    """A number as the rest of the platform reads one (no ``1_0``, no non-ASCII digits)."""
    if not ct.NUMBER_TEXT.fullmatch(text.strip()):
        raise invalid(field, f"expected a number, got {text[:80]!r}")
    value = float(text.strip())
    if not math.isfinite(value):
        raise invalid(field, f"expected a finite number, got {text[:80]!r}")
    return value


def _range(text: str, field: str) -> tuple[float, float]:
    parts = text.split(",")
    if len(parts) != 2:
        raise invalid(field, f'range takes "low,high", got {text[:80]!r}')
    low, high = _number(parts[0], field), _number(parts[1], field)
    if low > high:
        raise invalid(field, "range: the low value comes first")
    return low, high


def _num_text(value: float) -> str:
    return repr(value)


def _checked_text(value: str, field: str) -> str:
    if len(value.encode("utf-8", "surrogatepass")) > _LIMITS.max_string_bytes:
        raise invalid(field, f"a value longer than {_LIMITS.max_string_bytes} bytes")
    if "\x00" in value:
        raise invalid(field, "a value cannot contain NUL")
    return value


def _literal(value: Any, ptype: PropertyType) -> exp.Expr:
    """A typed value (from :meth:`Compiler._typed`) as a literal built by sqlglot."""
    if ptype is PropertyType.NUMBER:
        return exp.Literal.number(_num_text(value))
    if ptype is PropertyType.DATETIME:
        return _timestamp(datetime(1970, 1, 1) + timedelta(microseconds=value))
    if ptype is PropertyType.BOOL:
        return exp.true() if value else exp.false()
    return exp.Literal.string(value)
