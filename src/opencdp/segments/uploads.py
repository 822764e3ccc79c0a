"""ID-upload segments: members matched from an uploaded list of IDs (an identity key, the
user id or a typed user property), and static lists (Marketo ``listId``) kept as ID clusters.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pyarrow as pa
import sqlglot.expressions as exp

from opencdp.catalog.model import Schema
from opencdp.catalog.types import PropertyType, coerce
from opencdp.errors import CdpError, Code, invalid
from opencdp.identity import normalize
from opencdp.meta import tables as t
from opencdp.segments.kinds import SegmentKind, Source
from opencdp.segments.records import (
    CLUSTER,
    MAX_UPLOAD_ROWS,
    TAG,
    USER_ID_COLUMNS,
    Segment,
    SegmentRecords,
    Spec,
    UploadStats,
    check_display,
    check_name,
    check_remarks,
)
from opencdp.store import tree
from opencdp.store.base import SEGMENT_ROWS


class Uploads(SegmentRecords):
    # ---- ID uploads ----------------------------------------------------------------------
    def upload(
        self,
        project_id: int,
        ref: int | str | None,
        spec: Spec,
        body: bytes,
        upload_name: str = "",
    ) -> tuple[Segment, UploadStats]:
        """Create (``ref`` None) or replace the members of an ID-upload segment from a CSV
        body: one ID per line, or ``id,tagValue`` for a tag; a header line is allowed."""
        if ref is None:
            catalog = spec.catalog or CLUSTER
            kind = SegmentKind.of(catalog, Source.IDS)
            if not spec.display_name:
                raise CdpError(Code.VALIDATION_FAILED, "displayName: is required", "displayName")
            name = check_name(spec.name) if spec.name else None
            main = spec.main_column
            if not main:
                raise CdpError(
                    Code.VALIDATION_FAILED, "mainColumnName: is required", "mainColumnName"
                )
            seg = None
        else:
            seg = self.get(project_id, ref)
            if not seg.is_ids:
                raise invalid("clusterId", f"cluster {seg.name!r} is not an ID-upload cluster")
            catalog, kind, name, main = (
                seg.catalog,
                seg.kind,
                seg.name,
                spec.main_column or seg.main_column,
            )
        schema = self.catalog.schema(project_id)
        match = self._matcher(project_id, schema, main)
        self.barrier()  # IDs match every profile acknowledged before the upload
        stats, user_ids, tags = self._read_ids(body, catalog == TAG, main, match)
        now = t.utcnow()
        if seg is None:
            values = {
                "project_id": project_id,
                "name": name or f"id{now:%Y%m%d%H%M%S%f}"[:24],
                "display_name": check_display(spec.display_name),
                "catalog": catalog.value,
                "type": kind.value,
                "sub_type": "",
                "definition": None,
                "main_column": main,
                "upload_name": upload_name[:256],
                "remarks": check_remarks(spec.remarks),
                "refresh_at": "",
                "progress": 0,
                "message": "",
                "users_num": 0,
                "version": 0,
                "created_at": now,
                "updated_at": now,
            }
            seg_id = self._insert(values)
            seg = self.get(project_id, seg_id)
        rows = pa.table(
            {"user_id": pa.array(user_ids, pa.int64()), "tag_value": pa.array(tags, pa.string())},
            schema=SEGMENT_ROWS,
        )
        with self.store.writer() as w:
            count = w.write_segment_rows(project_id, seg.id, seg.version + 1, rows)
        stats.user_num = count
        changes: dict[str, Any] = {
            "version": seg.version + 1,
            "users_num": count,
            "refreshed_at": now,
            "updated_at": now,
            "progress": 100,
            "main_column": main,
            "upload_stats": stats.public(),
        }
        if spec.display_name is not None and ref is not None:
            changes["display_name"] = check_display(spec.display_name)
        if spec.remarks is not None and ref is not None:
            changes["remarks"] = check_remarks(spec.remarks)
        if upload_name:
            changes["upload_name"] = upload_name[:256]
        self._set(seg.id, **changes)
        return self.get(project_id, seg.id), stats

    def _matcher(
        self, project_id: int, schema: Schema, main: str
    ) -> Callable[[list[str]], dict[str, list[int]]]:
        """How uploaded ID texts find users: by an identity key, our user id, or a user
        property (typed)."""
        if main in schema.identity_keys:
            key = schema.identity_keys[main]

            def by_identity(values: list[str]) -> dict[str, list[int]]:
                tokens = {v: normalize(main, v) for v in values}
                wanted = [(key.id, n) for n in set(tokens.values()) if n is not None]
                with self.store.writer() as w:
                    found = w.lookup_identities(project_id, wanted)
                return {
                    v: [found[(key.id, n)]]
                    for v, n in tokens.items()
                    if n is not None and (key.id, n) in found
                }

            return by_identity
        if main in USER_ID_COLUMNS:

            def by_user_id(values: list[str]) -> dict[str, list[int]]:
                ids = {v: int(v) for v in values if v.strip().isdigit()}
                with self.store.writer() as w:
                    known = w.existing_users(project_id, sorted(set(ids.values())))
                return {v: [i] for v, i in ids.items() if i in known}

            return by_user_id
        prop = schema.user.get(main)
        if prop is None or prop.type is PropertyType.LIST:
            raise invalid(
                "mainColumnName", f"{main!r} is not an identity key, user_id or a user property"
            )

        def by_property(values: list[str]) -> dict[str, list[int]]:
            typed: dict[str, Any] = {}
            for v in values:
                try:
                    typed[v] = coerce(
                        prop.type, v, main, self.limits, self.catalog.project(project_id).tz
                    )
                except CdpError:
                    continue
            if prop.type is PropertyType.DATETIME:
                typed = {
                    k: datetime(1970, 1, 1) + timedelta(microseconds=x) for k, x in typed.items()
                }
            with self.store.writer() as w:
                found = w.match_property(project_id, prop, list(set(typed.values())))
            return {v: found[x] for v, x in typed.items() if x in found}

        return by_property

    def _read_ids(
        self,
        body: bytes,
        is_tag: bool,
        main: str,
        match: Callable[[list[str]], dict[str, list[int]]],
    ) -> tuple[UploadStats, list[int], list[str | None]]:
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise invalid("body", "the ID list is not UTF-8 text") from None
        rows = [r for r in csv.reader(io.StringIO(text)) if r and any(x.strip() for x in r)]
        if rows and rows[0][0].strip().lower() in {main.lower(), "id"}:
            rows = rows[1:]  # a header line naming the column
        if len(rows) > MAX_UPLOAD_ROWS:
            raise CdpError(
                Code.LIMIT_EXCEEDED, f"body: at most {MAX_UPLOAD_ROWS} IDs per upload", "body"
            )
        stats = UploadStats(upload_num=len(rows))
        ids = [r[0].strip() for r in rows]
        found = match(sorted(set(i for i in ids if i)))
        user_ids: list[int] = []
        tags: list[str | None] = []
        for r, ident in zip(rows, ids, strict=True):
            tag = (r[1].strip() if len(r) > 1 else "") if is_tag else None
            users = found.get(ident)
            if not users:
                stats.unmatched_num += 1
                continue
            if is_tag and not tag:
                stats.tag_value_null_num += 1
                continue
            for u in users:
                user_ids.append(u)
                tags.append(tag)
        return stats, user_ids, tags

    def sync_list(self, project_id: int, list_id: int) -> Segment:
        """A static list (Marketo ``listId``) as an ID cluster named ``list<id>``: its members
        are the list's as they are now."""
        name = f"list{int(list_id)}"
        try:
            seg = self.get(project_id, name)
        except CdpError:
            now = t.utcnow()
            values = {
                "project_id": project_id,
                "name": name,
                "display_name": f"Marketo list {int(list_id)}",
                "catalog": CLUSTER.value,
                "type": SegmentKind.CLUSTER_IDS.value,
                "sub_type": "",
                "definition": None,
                "main_column": "listId",
                "upload_name": "",
                "remarks": "",
                "refresh_at": "",
                "progress": 0,
                "message": "",
                "users_num": 0,
                "version": 0,
                "created_at": now,
                "updated_at": now,
            }
            try:
                seg = self.get(project_id, self._insert(values))
            except CdpError:  # created meanwhile by another import of the same list
                seg = self.get(project_id, name)
        query = (
            exp.select(exp.column("user_id"), exp.cast(exp.null(), "VARCHAR").as_("tag_value"))
            .from_(exp.to_table(tree.LISTS))
            .where(exp.column("list_id").eq(exp.Literal.number(int(list_id))))
        )
        with self.store.writer() as w:
            w.ensure_project(project_id)
            count = w.write_segment(project_id, seg.id, seg.version + 1, query)
        now = t.utcnow()
        self._set(
            seg.id,
            version=seg.version + 1,
            users_num=count,
            refreshed_at=now,
            updated_at=now,
            progress=100,
        )
        return self.get(project_id, seg.id)
