"""The records of segments in the metadata DB: what a segment is (:class:`Segment`,
:class:`Spec`), the kinds there are, the checks of a definition's texts, and reading and
writing the rows.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from opencdp.catalog.service import Catalog
from opencdp.config import Limits
from opencdp.errors import CdpError, Code, invalid, not_found
from opencdp.jobs.service import Jobs
from opencdp.meta import tables as t
from opencdp.segments.compiler import Span
from opencdp.segments.kinds import Holds, SegmentKind, Source, TagValues
from opencdp.segments.sandbox import Sandbox
from opencdp.store.base import Budget, Store

KIND = "segment_refresh"
CLUSTER, TAG = Holds.CLUSTER, Holds.TAG
NAME = re.compile(r"[A-Za-z0-9_]{1,24}")
HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
USER_ID_COLUMNS = {"user_id", "#user_id"}
DEFAULT_REFRESH_AT = "01:00"
MAX_UPLOAD_ROWS = 1_000_000
DEFAULT_BUDGET = Budget(seconds=120.0, memory_bytes=1 << 30)


@dataclass(frozen=True)
class Segment:
    id: int
    project_id: int
    name: str
    display_name: str
    catalog: Holds
    kind: SegmentKind
    tag_values: TagValues | None  # of a tag defined by conditions
    definition: Any
    main_column: str
    upload_name: str
    remarks: str
    refresh_at: str
    progress: int
    message: str
    users_num: int
    version: int
    spans: Any
    upload_stats: Any
    job_id: int | None
    refreshed_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any) -> Segment:
        stored = {"catalog", "kind", "tag_values"}
        fields = {c: getattr(row, c) for c in cls.__dataclass_fields__ if c not in stored}
        return cls(
            **fields,
            catalog=Holds(row.catalog),
            kind=SegmentKind(row.type),
            tag_values=TagValues(row.sub_type) if row.sub_type else None,
        )

    @property
    def is_tag(self) -> bool:
        return self.catalog is TAG

    @property
    def is_ids(self) -> bool:
        """Its members are an uploaded list of IDs (changed by uploading, not refreshed)."""
        return self.kind.source is Source.IDS

    @property
    def dynamic(self) -> bool:
        return self.kind.daily


@dataclass
class Spec:
    """What a caller gives to create or change a segment (absent fields keep their value on
    an update)."""

    name: str | None = None
    display_name: str | None = None
    catalog: Holds | None = None
    kind: SegmentKind | None = None
    tag_values: TagValues | None = None
    definition: Any = None
    remarks: str | None = None
    refresh_at: str | None = None
    main_column: str | None = None


class TagValuesMismatch(CdpError):
    """The tag values asked for are not those the definition gives (each surface names
    them in its own words)."""

    def __init__(self, asked: TagValues, given: TagValues) -> None:
        super().__init__(
            Code.VALIDATION_FAILED,
            f"tag_values: {asked.value} does not match the definition, which gives {given.value}",
            "tag_values",
        )
        self.asked = asked
        self.given = given


@dataclass
class UploadStats:
    upload_num: int = 0
    user_num: int = 0
    unmatched_num: int = 0
    tag_value_null_num: int = 0

    def public(self) -> dict[str, int]:
        return {
            "uploadNum": self.upload_num,
            "userNum": self.user_num,
            "unmatchedNum": self.unmatched_num,
            "tagValueNullNum": self.tag_value_null_num,
        }


class SegmentRecords:
    """What every part of :class:`opencdp.segments.service.Segments` shares: its collaborators
    and the segment rows of the metadata DB."""

    _engine: sa.Engine
    catalog: Catalog
    store: Store
    jobs: Jobs
    barrier: Callable[[], bool]
    limits: Limits
    clock: Callable[[], datetime]
    budget: Budget
    sandbox: Sandbox
    _lock: threading.Lock

    # ---- reading -------------------------------------------------------------------------
    def get(self, project_id: int, ref: int | str) -> Segment:
        """A segment of this project by id or by name (another project's is not found)."""
        c = t.segments.c
        query = sa.select(t.segments).where(c.project_id == project_id)
        query = query.where(c.id == ref) if isinstance(ref, int) else query.where(c.name == ref)
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise not_found("cluster", ref)
        return Segment.from_row(row)

    def search(
        self,
        project_id: int,
        catalog: Holds | None = None,
        name_like: str | None = None,
        kinds: list[SegmentKind] | None = None,
        page: int = 1,
        size: int = 10,
    ) -> tuple[list[Segment], int]:
        c = t.segments.c
        cond = [c.project_id == project_id]
        if catalog:
            cond.append(c.catalog == catalog)
        if kinds is not None:
            cond.append(c.type.in_([k.value for k in kinds]))
        if name_like:  # fuzzy: in the name or the display name, literally
            pattern = "%" + escape_like(name_like) + "%"
            cond.append(
                sa.or_(c.name.like(pattern, escape="\\"), c.display_name.like(pattern, escape="\\"))
            )
        with self._engine.connect() as conn:
            total = conn.execute(
                sa.select(sa.func.count()).select_from(t.segments).where(*cond)
            ).scalar_one()
            rows = conn.execute(
                sa.select(t.segments)
                .where(*cond)
                .order_by(c.id.desc())
                .limit(size)
                .offset((page - 1) * size)
            ).all()
        return [Segment.from_row(r) for r in rows], int(total)

    def _insert(self, values: dict[str, Any]) -> int:
        try:
            with self._engine.begin() as conn:
                key = conn.execute(sa.insert(t.segments).values(**values)).inserted_primary_key
        except sa.exc.IntegrityError:
            raise CdpError(
                Code.CONFLICT, f"clusterName: {values['name']!r} is already used", "clusterName"
            ) from None
        assert key is not None
        return int(key[0])

    def _set(self, segment_id: int, **values: Any) -> int:
        with self._engine.begin() as conn:
            res = conn.execute(
                sa.update(t.segments).where(t.segments.c.id == segment_id).values(**values)
            )
        return int(res.rowcount)


# ---- helpers -----------------------------------------------------------------------------
def segment_kind(kind: SegmentKind | None, catalog: Holds | None) -> SegmentKind:
    """The kind asked for (one of conditions, refreshed on demand, when none is), which must
    hold what the catalog given says."""
    if kind is None:
        return SegmentKind.of(catalog or CLUSTER, Source.CONDITIONS)
    if catalog is not None and kind.holds is not catalog:
        raise invalid("kind", f"a {kind.value} segment is a {kind.holds.value}, not a {catalog}")
    return kind


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise invalid("clusterName", "letters, digits and _ only, at most 24 characters")
    return name


def check_display(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise invalid("displayName", "is required")
    if len(name) > 50:
        raise invalid("displayName", "at most 50 characters")
    return name


def check_remarks(text: object) -> str:
    if text is None:
        return ""
    if not isinstance(text, str) or len(text) > 1000:
        raise invalid("remarks", "text of at most 1000 characters")
    return text


def check_refresh_at(value: object) -> str:
    if value is None or value == "":
        return DEFAULT_REFRESH_AT
    if not isinstance(value, str) or not HHMM.fullmatch(value):
        raise invalid("refreshAt", 'a time of day, "HH:MM" in the project\'s timezone')
    return value


def sql_text(definition: Any) -> str:
    sql = definition.get("sql") if isinstance(definition, dict) else definition
    if not isinstance(sql, str) or not sql.strip():
        raise invalid("sql", "a SELECT returning user ids is required")
    return sql


def escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def span_json(span: Span | None) -> dict[str, str] | None:
    if span is None:
        return None
    return {
        "startTime": f"{span.start_local:%Y-%m-%d %H:%M:%S}",
        "endTime": f"{span.end_local:%Y-%m-%d %H:%M:%S}",
    }
