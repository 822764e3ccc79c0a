"""Defining segments: create, change and delete, each definition checked when it is given
(so that a bad one is refused, not accepted and failed at refresh).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from opencdp.errors import CdpError, Code, invalid
from opencdp.meta import tables as t
from opencdp.segments.model import parse_cluster, parse_tag
from opencdp.segments.records import (
    IMPORT_TYPES,
    SQL_TYPES,
    TAG_SUBTYPES,
    Segment,
    Spec,
    catalog_of,
    check_display,
    check_name,
    check_refresh_at,
    check_remarks,
    segment_type,
)
from opencdp.segments.refresh import Refreshes


class Definitions(Refreshes):
    # ---- defining ------------------------------------------------------------------------
    def create(self, project_id: int, spec: Spec, surface: str) -> Segment:
        typ = segment_type(spec.type, spec.catalog)
        if typ in IMPORT_TYPES:
            raise invalid(
                "clusterType",
                f"{typ} segments are created by uploading IDs (import-id-cluster-add)",
            )
        catalog = catalog_of(typ, spec.catalog)
        name = check_name(spec.name)
        display = check_display(spec.display_name if spec.display_name is not None else name)
        sub_type = self._check(project_id, typ, spec.sub_type, spec.definition)
        refresh_at = check_refresh_at(spec.refresh_at)
        now = t.utcnow()
        values = {
            "project_id": project_id,
            "name": name,
            "display_name": display,
            "catalog": catalog,
            "type": typ,
            "sub_type": sub_type,
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
        if seg.type in IMPORT_TYPES:
            raise invalid("clusterType", "an ID-upload segment is changed by uploading IDs")
        typ = segment_type(spec.type or seg.type, spec.catalog or seg.catalog)
        if typ in IMPORT_TYPES:
            raise invalid("clusterType", f"cannot turn a segment into {typ}")
        catalog = catalog_of(typ, spec.catalog or seg.catalog)
        if catalog != seg.catalog:
            raise invalid("clusterCatalog", "a cluster cannot become a tag, nor a tag a cluster")
        definition = spec.definition if spec.definition is not None else seg.definition
        sub_type = self._check(project_id, typ, spec.sub_type or seg.sub_type, definition)
        values: dict[str, Any] = {
            "type": typ,
            "sub_type": sub_type,
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

    def _check(self, project_id: int, typ: str, sub_type: str | None, definition: Any) -> str:
        """Validate a definition now (so that a bad one is refused, not accepted and failed at
        refresh); returns the tag sub-type."""
        if typ in SQL_TYPES:
            self._ensure_columns(project_id)
            self._run_sql(project_id, self._sql(typ, definition), "check")
            return ""
        if typ.startswith("tag_"):
            tag = parse_tag(definition, "tagQp")
            kind = "values" if tag.values else "first_last" if tag.first_last else "quota"
            if sub_type and TAG_SUBTYPES.get(sub_type) is None:
                raise invalid("subConditionTabType", f"unknown tag kind {sub_type!r}")
            if sub_type and TAG_SUBTYPES[sub_type] != kind:
                raise invalid("subConditionTabType", f"{sub_type} does not match the tagQp given")
            self._compile(project_id, tag, self.clock())
            return next(k for k, v in TAG_SUBTYPES.items() if v == kind)
        self._compile(project_id, parse_cluster(definition, "qp"), self.clock())
        return ""
