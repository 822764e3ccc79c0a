"""The catalog's snapshot follows changes made by another process (here: a second Catalog over
connections of its own, on the same metadata DB: SQLite and PostgreSQL), within
``refresh_seconds``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from opencdp.catalog.service import Catalog
from opencdp.catalog.types import PropertyType
from opencdp.meta.db import connect

KEY = b"k" * 32


class Ticks:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engines(meta_url: str) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    one, two = connect(meta_url), connect(meta_url)
    yield one, two
    one.dispose()
    two.dispose()


def test_another_process_s_changes_are_seen_within_the_refresh_delay(
    engines: tuple[sa.Engine, sa.Engine],
) -> None:
    writer = Catalog(engines[0], KEY)
    ticks = Ticks()
    reader = Catalog(engines[1], KEY, refresh_seconds=5.0, monotonic=ticks)
    assert reader.projects() == []
    project, creds = writer.create_project("shop")
    assert writer.version > 0
    ticks.now += 4.9
    assert reader.projects() == []  # not yet checked again
    ticks.now += 0.2
    assert reader.resolve("shop") == project  # checked: reloaded
    assert reader.authenticate_token(creds.api_token) == project
    assert reader.version == writer.version

    # Properties (added without a full reload by the writer), identity keys, aliases.
    writer.ensure_properties(project.id, "event", {"amount": PropertyType.NUMBER})
    writer.set_identity_keys(project.id, ["mobile", "uid"])
    app = writer.add_td_app(project.id)
    rotated = writer.rotate_credentials(project.id)
    ticks.now += 5.0
    schema = reader.schema(project.id)
    assert schema.event["amount"].type is PropertyType.NUMBER
    assert list(schema.identity_keys) == ["mobile", "uid", "#account_id", "#distinct_id"]
    assert reader.td_project(app) == reader.project(project.id)
    assert reader.authenticate_token(creds.api_token) is None  # the old token is retired
    assert reader.authenticate_token(rotated.api_token) == reader.project(project.id)

    writer.delete_property(project.id, "event", "amount")
    ticks.now += 5.0
    assert "amount" not in reader.schema(project.id).event


def test_a_property_added_meanwhile_by_another_process_is_taken_as_it_is(
    engines: tuple[sa.Engine, sa.Engine],
) -> None:
    ticks = Ticks()
    one = Catalog(engines[0], KEY, refresh_seconds=60.0, monotonic=ticks)
    two = Catalog(engines[1], KEY, refresh_seconds=60.0, monotonic=ticks)
    ticks.now += 60.0
    project, _ = one.create_project("shop")
    ticks.now += 60.0
    two.project(project.id)  # two knows the project, not what follows
    added = one.ensure_properties(project.id, "user", {"city": PropertyType.STRING})["city"]
    # Two's snapshot is stale: it tries to add the same name, and takes the stored property.
    got = two.ensure_properties(
        project.id, "user", {"city": PropertyType.NUMBER, "age": PropertyType.NUMBER}
    )
    assert got["city"] == added and got["city"].type is PropertyType.STRING
    assert "age" in got
    # One's own next addition sees that two changed the catalog, and reloads.
    one.ensure_properties(project.id, "user", {"zip": PropertyType.STRING})
    assert set(one.schema(project.id).user) >= {"city", "age", "zip"}


def test_a_snapshot_is_never_replaced_by_an_older_one(
    engines: tuple[sa.Engine, sa.Engine],
) -> None:
    ticks = Ticks()
    one = Catalog(engines[0], KEY, refresh_seconds=60.0, monotonic=ticks)
    two = Catalog(engines[1], KEY, refresh_seconds=60.0, monotonic=ticks)
    project, _ = one.create_project("shop")
    before = one.version
    one.ensure_properties(project.id, "user", {"city": PropertyType.STRING})
    assert one.version == before + 1  # its own change: the snapshot is current
    two.reload()
    assert "city" in two.schema(project.id).user and two.version == one.version
    one.delete_property(project.id, "user", "city")
    # A reload that read the DB at an older version than the snapshot's swaps nothing in.
    two._version = one.version + 1  # (as if a newer snapshot had been swapped in meanwhile)
    two.reload()
    assert "city" in two.schema(project.id).user


def test_a_project_asked_for_by_id_is_looked_up_at_once_when_the_snapshot_lacks_it(
    engines: tuple[sa.Engine, sa.Engine],
) -> None:
    """A job or a queued record names a project another process created a moment ago: the
    catalog checks again at once instead of answering "no such project" until its next check."""
    writer = Catalog(engines[0], KEY)
    reader = Catalog(engines[1], KEY, refresh_seconds=3600.0, monotonic=Ticks())
    assert reader.projects() == []
    project, _ = writer.create_project("new")
    assert reader.project(project.id) == project
    assert reader.schema(project.id).project_id == project.id
    with pytest.raises(Exception, match="project"):
        reader.project(project.id + 100)
