"""Defining segments: create, change and delete, each definition checked when it is given
(so that a bad one is refused, not accepted and failed at refresh).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from opencdp.errors import CdpError, Code, invalid
from opencdp.meta import tables as t
from opencdp.segments.kinds import SegmentKind, Source, TagValues
from opencdp.segments.model import parse_cluster, parse_tag
from opencdp.segments.records import (
    TAG,
    Segment,
    Spec,
    TagValuesMismatch,
    check_display,
    check_name,
    check_refresh_at,
    check_remarks,
    segment_kind,
)
from opencdp.segments.refresh import Refreshes


class Definitions(Refreshes):
    # ---- defining ------------------------------------------------------------------------
    def create(self, project_id: int, spec: Spec, surface: str) -> Segment:
        kind = segment_kind(spec.kind, spec.catalog)
        if kind.source is Source.IDS:
            raise invalid("clusterType", "an ID-list segment is created by uploading its IDs")
        name = check_name(spec.name)
        display = check_display(spec.display_name if spec.display_name is not None else name)
        tag_values = self._check(project_id, kind, spec.tag_values, spec.definition)
        refresh_at = check_refresh_at(spec.refresh_at)
        now = t.utcnow()
        values = {
            "project_id": project_id,
            "name": name,
            "display_name": display,
            "catalog": kind.holds.value,
            "type": kind.value,
            "sub_type": tag_values.value if tag_values else "",
            "definition": spec.definition,
            "main_column": "",
            "upload_name": "",
            "remarks": check_remarks(spec.remarks),
            "refresh_at": refresh_at,
            "progress": 0,
            "message": "",
            "users_num": 0,
            "version": 0,
            "created_at": now,
            "updated_at": now,
        }
        seg_id = self._insert(values)
        try:
            self.refresh(project_id, seg_id, surface)
        except CdpError:  # e.g. the job queue is full: not created, so that a retry can be
            with self._engine.begin() as conn:
                conn.execute(sa.delete(t.segments).where(t.segments.c.id == seg_id))
            raise
        return self.get(project_id, seg_id)

    def update(self, project_id: int, ref: int | str, spec: Spec, surface: str) -> Segment:
        seg = self.get(project_id, ref)
        if seg.is_ids:
            raise invalid("clusterType", "an ID-upload segment is changed by uploading IDs")
        kind = segment_kind(spec.kind or seg.kind, spec.catalog)
        if kind.source is Source.IDS:
            raise invalid("clusterType", "a segment cannot become an ID-list segment")
        if kind.holds is not seg.catalog:
            raise invalid("clusterCatalog", "a cluster cannot become a tag, nor a tag a cluster")
        definition = spec.definition if spec.definition is not None else seg.definition
        tag_values = self._check(project_id, kind, spec.tag_values or seg.tag_values, definition)
        values: dict[str, Any] = {
            "type": kind.value,
            "sub_type": tag_values.value if tag_values else "",
            "definition": definition,
            "updated_at": t.utcnow(),
        }
        if spec.display_name is not None:
            values["display_name"] = check_display(spec.display_name)
        if spec.remarks is not None:
            values["remarks"] = check_remarks(spec.remarks)
        if spec.refresh_at is not None:
            values["refresh_at"] = check_refresh_at(spec.refresh_at)
        self._set(seg.id, **values)
        try:
            self.refresh(project_id, seg.id, surface)
        except CdpError as exc:
            # A refresh already queued reads the new definition when it starts; one running
            # finishes with the old, and the next refresh uses the new.
            if exc.code is not Code.BUSY:
                raise
        return self.get(project_id, seg.id)

    def delete(self, project_id: int, ref: int | str) -> None:
        """Delete the segment and its members. A refresh under way finds it gone and leaves
        nothing behind."""
        seg = self.get(project_id, ref)
        with self._engine.begin() as conn:
            conn.execute(sa.delete(t.segments).where(t.segments.c.id == seg.id))
        with self.store.writer() as w:
            w.delete_segment(project_id, seg.id)

    def _check(
        self, project_id: int, kind: SegmentKind, asked: TagValues | None, definition: Any
    ) -> TagValues | None:
        """Validate a definition now (so that a bad one is refused, not accepted and failed at
        refresh); returns where a tag's values come from."""
        if kind.source is Source.SQL:
            self._ensure_columns(project_id)
            self._run_sql(project_id, self._sql(kind, definition), "check")
            return None
        if kind.holds is TAG:
            tag = parse_tag(definition, "tagQp")
            given = (
                TagValues.VALUES
                if tag.values
                else TagValues.FIRST_LAST
                if tag.first_last
                else TagValues.MEASURE
            )
            if asked is not None and asked is not given:
                raise TagValuesMismatch(asked, given)
            self._compile(project_id, tag, self.clock())
            return given
        self._compile(project_id, parse_cluster(definition, "qp"), self.clock())
        return None
