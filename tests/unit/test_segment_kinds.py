"""The core's words for kinds of segment: the core modules speak none of ThinkingData's, a data
directory written with the vendor's words reads in the core's after upgrade, and the
ThinkingData surface translates every kind both ways."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sqlalchemy as sa

import opencdp
from opencdp.meta import tables
from opencdp.meta.migrations import MIGRATIONS, upgrade
from opencdp.segments.kinds import DAILY_KINDS, Holds, SegmentKind, Source, TagValues
from opencdp.segments.records import Segment
from opencdp.surfaces import thinkingdata as td

SRC = Path(opencdp.__file__).parent
# The vendor's values of clusterType, clusterCatalog and subConditionTabType.
VENDOR_WORDS = re.compile(
    r"\b(cluster|tag)_by_(static|dynamic)_(condition|sql)\b|\b(cluster|tag)_by_(import|result)\b"
    r"|\bcatalog_(cluster|tag)\b|\btag_condition_(default|by_firstlast_event|by_quotation)\b"
)


def core_sources() -> list[Path]:
    """The segments core and the exports (whose vendor layouts name their own columns)."""
    return sorted([*(SRC / "segments").glob("*.py"), *(SRC / "exports").glob("*.py")])


def test_the_pattern_finds_the_vendor_words() -> None:
    # (So that the test below can fail.)
    text = Path(td.__file__).read_text(encoding="utf-8")
    found = {m.group(0) for m in VENDOR_WORDS.finditer(text)}
    assert set(td.CLUSTER_TYPES) | set(td.CATALOGS) | set(td.TAB_TYPES) <= found
    assert td.UNSUPPORTED_TYPE in found


@pytest.mark.parametrize("path", core_sources(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_core_speaks_none_of_the_vendor_words(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    found = [
        f"{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
        for m in VENDOR_WORDS.finditer(text)
    ]
    assert found == [], f"{path.name} speaks ThinkingData's words"


def test_core_sources_are_found() -> None:
    names = {p.name for p in core_sources()}
    assert {"records.py", "definitions.py", "kinds.py", "columns.py"} <= names


def test_kinds_are_their_parts() -> None:
    for kind in SegmentKind:
        assert SegmentKind.of(kind.holds, kind.source, kind.daily) is kind
    assert SegmentKind.TAG_SQL_DAILY.holds is Holds.TAG
    assert SegmentKind.TAG_SQL_DAILY.source is Source.SQL
    assert SegmentKind.CLUSTER_IDS.source is Source.IDS and not SegmentKind.CLUSTER_IDS.daily
    assert {k for k in SegmentKind if k.value.endswith("_daily")} == DAILY_KINDS
    with pytest.raises(ValueError):
        SegmentKind.of(Holds.CLUSTER, Source.IDS, daily=True)  # an ID list is never daily


def test_the_surface_translates_every_kind_both_ways() -> None:
    assert set(td.TYPE_NAMES) == set(SegmentKind)
    assert all(td.CLUSTER_TYPES[td.TYPE_NAMES[k]] is k for k in SegmentKind)
    assert all(td.CATALOGS[td.CATALOG_NAMES[h]] is h for h in Holds)
    assert all(td.TAB_TYPES[td.TAB_NAMES[v]] is v for v in TagValues)
    # The vendor's names say the same as the kinds' parts.
    for name, kind in td.CLUSTER_TYPES.items():
        assert name.startswith(kind.holds.value + "_by_")
        assert ("_dynamic_" in name) is kind.daily
        assert name.endswith(
            {"conditions": "_condition", "sql": "_sql", "ids": "_import"}[kind.source]
        )


OLD_ROWS = [  # (name, catalog, type, sub_type) as a data directory held them
    ("a", "catalog_cluster", "cluster_by_static_condition", ""),
    ("b", "catalog_cluster", "cluster_by_dynamic_sql", ""),
    ("c", "catalog_tag", "tag_by_dynamic_condition", "tag_condition_by_firstlast_event"),
    ("d", "catalog_tag", "tag_by_static_condition", "tag_condition_by_quotation"),
    ("e", "catalog_tag", "tag_by_import", ""),
    ("list7", "catalog_cluster", "cluster_by_import", ""),
]


def test_old_rows_read_as_the_core_kinds_after_upgrade(tmp_path: Path) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'meta.db'}")
    try:
        upgrade(eng)
        before = max(v for v, step in MIGRATIONS if step.__name__ == "_v11_segment_kinds") - 1
        now = tables.utcnow()
        with eng.begin() as conn:
            pid = conn.execute(
                sa.insert(tables.projects).values(
                    key="old", name="old", timezone="UTC", created_at=now
                )
            ).inserted_primary_key
            assert pid is not None
            for name, catalog, typ, sub_type in OLD_ROWS:
                conn.execute(
                    sa.insert(tables.segments).values(
                        project_id=pid[0], name=name, display_name=name, catalog=catalog,
                        type=typ, sub_type=sub_type, created_at=now, updated_at=now,
                    )
                )  # fmt: skip
            # As it was before the step.
            conn.execute(sa.update(tables.schema_version).values(version=before))
        with eng.connect() as conn, pytest.raises(ValueError):  # not the core's words
            Segment.from_row(conn.execute(sa.select(tables.segments)).first())
        upgrade(eng)
        with eng.connect() as conn:
            rows = conn.execute(sa.select(tables.segments).order_by(tables.segments.c.name))
            got = {
                s.name: (s.catalog, s.kind, s.tag_values)
                for s in (Segment.from_row(r) for r in rows)
            }
    finally:
        eng.dispose()
    assert got == {
        "a": (Holds.CLUSTER, SegmentKind.CLUSTER_CONDITIONS, None),
        "b": (Holds.CLUSTER, SegmentKind.CLUSTER_SQL_DAILY, None),
        "c": (Holds.TAG, SegmentKind.TAG_CONDITIONS_DAILY, TagValues.FIRST_LAST),
        "d": (Holds.TAG, SegmentKind.TAG_CONDITIONS, TagValues.MEASURE),
        "e": (Holds.TAG, SegmentKind.TAG_IDS, None),
        "list7": (Holds.CLUSTER, SegmentKind.CLUSTER_IDS, None),
    }
    # The vendor's API names them as it did.
    assert [td.TYPE_NAMES[got[n][1]] for n, *_ in OLD_ROWS] == [r[2] for r in OLD_ROWS]
