"""Reading members: a version's members, who entered and left, a user's segments."""

from __future__ import annotations

from opencdp.segments.records import (
    Segment,
    SegmentRecords,
)


class Members(SegmentRecords):
    # ---- members -------------------------------------------------------------------------
    def members(
        self, project_id: int, ref: int | str, limit: int = 1000, after: int = 0
    ) -> tuple[Segment, list[tuple[int, str | None]]]:
        seg = self.get(project_id, ref)
        return seg, self.store.segment_members(project_id, seg.id, seg.version, limit, after)

    def changes(
        self, project_id: int, ref: int | str, limit: int = 1000
    ) -> tuple[Segment, list[int], list[int]]:
        seg = self.get(project_id, ref)
        if seg.version < 2:
            entered = [
                u for u, _ in self.store.segment_members(project_id, seg.id, seg.version, limit, 0)
            ]
            return seg, entered, []
        entered, left = self.store.segment_changes(project_id, seg.id, seg.version, limit)
        return seg, entered, left

    def of_user(self, project_id: int, user_id: int) -> list[tuple[Segment, str | None]]:
        """The segments (current versions) a user is in, with the tag value."""
        held = self.store.user_segments(project_id, user_id)
        segs, _ = self.search(project_id, size=100_000)
        current = {s.id: s for s in segs}
        return [
            (current[sid], tag)
            for sid, version, tag in held
            if sid in current and current[sid].version == version
        ]
