"""Segment and tag definitions as typed models.

The definition language is the condition JSON of the ThinkingData user-cluster API (the shape
the clients that define segments already write): user-property filters, per-user event
measures compared with a number over a window of whole days, and relations joining them. The
models keep the vendor's field names as aliases and our own names in code; parsing is strict
about what the compiler relies on (comparators, analyses, relations, windows) so that a
definition either means exactly one thing or is refused with the field that is wrong.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from opencdp.errors import invalid


class Comparator(StrEnum):
    EQUAL = "equal"
    NOT_EQUAL = "notEqual"
    GREATER = "greater"
    GREATER_EQUAL = "greaterEqual"
    LESS = "less"
    LESS_EQUAL = "lessEqual"
    RANGE = "range"
    IS_TRUE = "isTrue"
    IS_FALSE = "isFalse"
    IS_NULL = "isNull"
    NOT_NULL = "notNull"
    INCLUDE = "include"
    NOT_INCLUDE = "notInclude"
    REGEX_MATCH = "regexMatch"
    NOT_REGEX_MATCH = "notRegexMatch"


# Comparators a per-user measure (a number) can be compared with.
MEASURE_COMPARATORS = {
    Comparator.EQUAL,
    Comparator.NOT_EQUAL,
    Comparator.GREATER,
    Comparator.GREATER_EQUAL,
    Comparator.LESS,
    Comparator.LESS_EQUAL,
    Comparator.RANGE,
}


class Analysis(StrEnum):
    TIMES = "TIMES"  # matching events
    SUM = "SUM"
    AVG = "AVG"
    MAX = "MAX"
    MIN = "MIN"
    DISTINCT = "DISTINCT"  # distinct values of the quota property


class Relation(StrEnum):
    AND = "and"
    OR = "or"


class TableType(StrEnum):
    USER = "user"
    EVENT = "event"


_MODEL = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)
_RECENT = re.compile(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*")


def _relation(value: Any) -> Any:
    """A missing or empty relation means ``and``; the vendor's clients send either case."""
    if value is None or value == "":
        return Relation.AND
    return value.lower() if isinstance(value, str) else value


class Window(BaseModel):
    """``recentDay: "a-b"``: from ``b`` days ago to ``a`` days ago, whole days in the project's
    timezone (``"0-1"`` is yesterday and today)."""

    model_config = _MODEL
    near: int
    far: int

    @classmethod
    def parse(cls, text: str) -> Window:
        m = _RECENT.fullmatch(text)
        if m is None:
            raise ValueError(f'expected "a-b" (whole days ago, a <= b), got {text!r}')
        near, far = int(m.group(1)), int(m.group(2))
        if near > far:
            raise ValueError(f"the nearer day comes first (a <= b), got {text!r}")
        return cls(near=near, far=far)

    def text(self) -> str:
        return f"{self.near}-{self.far}"


def _window(value: Any) -> Any:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f'expected "a-b" (whole days ago, a <= b), got {type(value).__name__}')
    return Window.parse(value)


RecentDays = Annotated[Window | None, BeforeValidator(_window)]
Rel = Annotated[Relation, BeforeValidator(_relation)]


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


AnalysisName = Annotated[Analysis, BeforeValidator(_upper)]  # the vendor's clients send any case


class Filter(BaseModel):
    """``{columnName, tableType, comparator, ftv}``: one condition on a property."""

    model_config = _MODEL
    column: str = Field(alias="columnName", min_length=1, max_length=200)
    table: TableType = Field(alias="tableType", default=TableType.USER)
    comparator: Comparator
    values: list[str] = Field(alias="ftv", default_factory=list, max_length=1000)

    @field_validator("values", mode="before")
    @classmethod
    def _texts(cls, v: Any) -> Any:
        if v is None:
            return []
        if isinstance(v, list):  # ftv values are strings; numbers sent bare are read as text
            out = []
            for i, x in enumerate(v):
                if isinstance(x, bool) or not isinstance(x, str | int | float):
                    raise ValueError(f"ftv.{i}: expected text, got {type(x).__name__}")
                out.append(x if isinstance(x, str) else _text(x))
            return out
        return v

    @model_validator(mode="after")
    def _arity(self) -> Filter:
        c = self.comparator
        if c in (Comparator.IS_TRUE, Comparator.IS_FALSE, Comparator.IS_NULL, Comparator.NOT_NULL):
            return self
        if c is Comparator.RANGE and len(self.values) != 2:
            raise ValueError("ftv: range takes two values, [low, high]")
        if not self.values:
            raise ValueError(f"ftv: {c.value} needs a value")
        if (
            c not in (Comparator.EQUAL, Comparator.NOT_EQUAL, Comparator.RANGE)
            and len(self.values) != 1
        ):
            raise ValueError(f"ftv: {c.value} takes one value")
        return self


class Measure(BaseModel):
    """``taPropQuota``: what is measured per user over the matching events."""

    model_config = _MODEL
    analysis: AnalysisName = Analysis.TIMES
    quota: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _quota(self) -> Measure:
        if self.analysis is not Analysis.TIMES and not self.quota:
            raise ValueError(f"quota: {self.analysis.value} needs the property it measures")
        return self


class EventCondition(BaseModel):
    """Users whose measure over the matching events in the window compares true with ``num``.
    A user with no matching event has TIMES, SUM and DISTINCT 0, and AVG/MAX/MIN of nothing
    (which compares true with nothing)."""

    model_config = _MODEL
    event: str = Field(alias="eventName", min_length=1, max_length=200)
    filters: list[Filter] = Field(alias="filts", default_factory=list, max_length=100)
    relation: Rel = Relation.AND
    measure: Measure = Field(alias="taPropQuota", default_factory=Measure)
    comparator: Comparator
    num: str
    window: RecentDays = Field(alias="recentDay", default=None)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            if data.get("comparator") is None and "uceCalcuSymbol" in data:
                data["comparator"] = data["uceCalcuSymbol"]
            if data.get("num") is not None and not isinstance(data["num"], str):
                data["num"] = _text(data["num"])
        return data

    @model_validator(mode="after")
    def _comparable(self) -> EventCondition:
        if self.comparator not in MEASURE_COMPARATORS:
            allowed = ", ".join(c.value for c in MEASURE_COMPARATORS)
            raise ValueError(f"comparator: a measure is compared with one of {allowed}")
        for f in self.filters:
            if f.table is not TableType.EVENT:
                raise ValueError("filts: an event condition filters event properties")
        return self


class ClusterDef(BaseModel):
    """``qp`` / ``userClusterDef``: user filters and event conditions, and how they combine."""

    model_config = _MODEL
    events: list[EventCondition] = Field(default_factory=list, max_length=50)
    event_relation: Rel = Relation.AND
    filters: list[Filter] = Field(alias="filts", default_factory=list, max_length=100)
    relation: Rel = Relation.AND
    event_user_relation: Rel = Relation.AND

    @model_validator(mode="after")
    def _not_empty(self) -> ClusterDef:
        if not self.events and not self.filters:
            raise ValueError("events, filts: a definition needs at least one condition")
        for f in self.filters:
            if f.table is not TableType.USER:
                raise ValueError("filts: the user filters of a definition are user properties")
        return self


class TagValueDef(BaseModel):
    model_config = _MODEL
    value: str = Field(alias="tagValue", min_length=1, max_length=200)
    remark: str = Field(alias="tagRemark", default="")
    definition: ClusterDef = Field(alias="userClusterDef")

    @field_validator("value", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return _text(v) if isinstance(v, int | float) and not isinstance(v, bool) else v


class PropertyRef(BaseModel):
    model_config = _MODEL
    column: str = Field(alias="columnName", min_length=1, max_length=200)
    table: TableType = Field(alias="tableType", default=TableType.EVENT)


class FirstLastEvent(BaseModel):
    """The value of an event property on the user's first (or last) matching event."""

    model_config = _MODEL
    event: str = Field(alias="eventName", min_length=1, max_length=200)
    first: bool = Field(alias="isFirstEvent", default=True)
    property: PropertyRef
    window: RecentDays = Field(alias="recentDay", default=None)
    filters: list[Filter] = Field(alias="filts", default_factory=list, max_length=100)
    relation: Rel = Relation.AND

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            calc = data.get("calcPropVo")
            if isinstance(calc, dict) and "property" not in data:
                data["property"] = calc.get("property")
        return data


class QuotaEvent(BaseModel):
    """A metric tag: the per-user measure itself is the tag value."""

    model_config = _MODEL
    event: str = Field(alias="eventName", min_length=1, max_length=200)
    analysis: AnalysisName = Analysis.TIMES
    quota: str | None = Field(default=None, max_length=200)
    window: RecentDays = Field(alias="recentDay", default=None)
    filters: list[Filter] = Field(alias="filts", default_factory=list, max_length=100)
    relation: Rel = Relation.AND

    @property
    def measure(self) -> Measure:
        return Measure(analysis=self.analysis, quota=self.quota)

    @model_validator(mode="after")
    def _quota(self) -> QuotaEvent:
        Measure(analysis=self.analysis, quota=self.quota)  # the same rule
        return self


class FirstLastDef(BaseModel):
    model_config = _MODEL
    event: FirstLastEvent = Field(alias="userTagConFirstLastEvent")


class QuotaDef(BaseModel):
    model_config = _MODEL
    event: QuotaEvent = Field(alias="userTagConQuotaEvent")


class TagDef(BaseModel):
    """``tagQp``: exactly one of the three kinds of condition tag."""

    model_config = _MODEL
    values: list[TagValueDef] | None = Field(alias="userTagValueDefs", default=None, max_length=100)
    first_last_def: FirstLastDef | None = Field(alias="userTagConFirstLastEventDef", default=None)
    quota_def: QuotaDef | None = Field(alias="userTagConQuotaDef", default=None)

    @property
    def first_last(self) -> FirstLastEvent | None:
        return self.first_last_def.event if self.first_last_def else None

    @property
    def quota(self) -> QuotaEvent | None:
        return self.quota_def.event if self.quota_def else None

    @model_validator(mode="after")
    def _one(self) -> TagDef:
        kinds = [k for k in (self.values, self.first_last_def, self.quota_def) if k]
        if len(kinds) != 1:
            raise ValueError(
                "tagQp: give one of userTagValueDefs, userTagConFirstLastEventDef, "
                "userTagConQuotaDef"
            )
        if self.values is not None:
            seen: set[str] = set()
            for v in self.values:
                if v.value in seen:
                    raise ValueError(f"tagValue: {v.value!r} is defined twice")
                seen.add(v.value)
        return self


def _text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def parse_cluster(data: Any, field: str = "qp") -> ClusterDef:
    return _parse(ClusterDef, data, field)


def parse_tag(data: Any, field: str = "tagQp") -> TagDef:
    return _parse(TagDef, data, field)


M = TypeVar("M", bound=BaseModel)


def _parse(model: type[M], data: Any, field: str) -> M:
    if not isinstance(data, dict):
        raise invalid(field, "expected an object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise invalid(f"{field}.{where}" if where else field, msg) from None
