"""Processes of one deployment on a shared metadata DB (PostgreSQL), each with a data directory
of its own, as servers on different machines: they share the server key (given by
OPENCDP_SECRET_KEY, or kept in the metadata DB), so a credential or a link made by one works on
every other; a process with another key, or none where the deployment's processes are given
one, is refused; so is one without the shared admin token."""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from opencdp import datadir
from opencdp.config import Settings
from opencdp.runtime import Runtime
from tests.engines import shared_deployment


@pytest.fixture
def shared(tmp_path: Path) -> dict[str, Any]:
    """What the processes of one deployment share: the metadata DB and the analytic store."""
    return shared_deployment(tmp_path)


@pytest.fixture
def opened() -> Iterator[list[Runtime]]:
    runtimes: list[Runtime] = []
    yield runtimes
    for rt in runtimes:
        rt.stop()


def process(tmp_path: Path, name: str, opened: list[Runtime], **settings: Any) -> Runtime:
    rt = Runtime.open(Settings(data_dir=tmp_path / name, **settings))
    opened.append(rt)
    return rt


def works_across(one: Runtime, two: Runtime) -> None:
    project, creds = one.catalog.create_project("shop")
    two.catalog.reload()  # (as the catalog's refresh does within catalog_refresh_seconds)
    assert two.catalog.authenticate_token(creds.api_token) == project
    found = two.catalog.client_secret(creds.client_id)
    assert found is not None and found[1] == creds.client_secret
    expires, sign = one.catalog.sign_link("export", "7", "part0001.csv.gz", ttl=60)
    two.catalog.check_link("export", "7", "part0001.csv.gz", expires=str(expires), signature=sign)


@pytest.mark.parametrize("form", ["hex", "base64"])
def test_processes_given_one_key_share_credentials_and_links(
    tmp_path: Path, shared: dict[str, Any], opened: list[Runtime], form: str
) -> None:
    raw = secrets.token_bytes(32)
    key = raw.hex() if form == "hex" else base64.urlsafe_b64encode(raw).decode()
    one = process(tmp_path, "one", opened, secret_key=key, **shared)
    two = process(tmp_path, "two", opened, secret_key=key, **shared)
    works_across(one, two)
    assert not (tmp_path / "one" / "secret.key").exists()  # the key is nowhere on disk
    # Another key is another deployment's: refused, not left to fail every credential.
    with pytest.raises(datadir.DataDirError, match="not this deployment's"):
        process(tmp_path, "three", opened, secret_key=secrets.token_hex(32), **shared)
    # So is a process given none, where the deployment's processes are given one.
    with pytest.raises(datadir.DataDirError, match="OPENCDP_SECRET_KEY"):
        process(tmp_path, "four", opened, **shared)


def test_without_a_given_key_the_metadata_db_keeps_it(
    tmp_path: Path, shared: dict[str, Any], opened: list[Runtime], caplog: Any
) -> None:
    with caplog.at_level(logging.WARNING, logger="opencdp.datadir"):
        one = process(tmp_path, "one", opened, **shared)
    assert "OPENCDP_SECRET_KEY" in caplog.text  # the operator is told to give it instead
    two = process(tmp_path, "two", opened, **shared)
    works_across(one, two)


@pytest.mark.parametrize(
    "bad", ["short", "zz" * 32, "ab" * 31, base64.b64encode(b"k" * 31).decode()]
)
def test_a_key_that_is_not_32_bytes_is_refused(
    tmp_path: Path, shared: dict[str, Any], opened: list[Runtime], bad: str
) -> None:
    with pytest.raises(datadir.DataDirError, match="32 random bytes"):
        process(tmp_path, "one", opened, secret_key=bad, **shared)


def test_a_shared_deployment_needs_its_admin_token_given(
    tmp_path: Path, shared: dict[str, Any], opened: list[Runtime]
) -> None:
    with pytest.raises(datadir.DataDirError, match="OPENCDP_ADMIN_TOKEN"):
        process(tmp_path, "one", opened, **{**shared, "admin_token": None})


def test_an_embedded_deployment_given_a_key_other_than_its_file_is_refused(
    tmp_path: Path, opened: list[Runtime]
) -> None:
    rt = process(tmp_path, "data", opened, job_workers=0)
    rt.stop()
    opened.clear()
    key = (tmp_path / "data" / "secret.key").read_bytes()
    again = process(tmp_path, "data", opened, job_workers=0, secret_key=key.hex())
    again.stop()
    opened.clear()
    with pytest.raises(datadir.DataDirError, match="not the key in"):
        process(tmp_path, "data", opened, job_workers=0, secret_key=secrets.token_hex(32))


def test_a_definition_naming_a_property_another_process_just_created_is_compiled(
    tmp_path: Path, shared: dict[str, Any], opened: list[Runtime]
) -> None:
    """The property came with another process's records a moment ago: this process's catalog
    snapshot (checked every hour here) does not hold it yet, and is checked again at once
    instead of refusing the definition as naming an unknown property."""
    from opencdp.catalog.types import PropertyType

    one = process(tmp_path, "one", opened, secret_key="ab" * 32, **shared)
    two = process(
        tmp_path, "two", opened, secret_key="ab" * 32, catalog_refresh_seconds=3600.0, **shared
    )
    project, _ = one.catalog.create_project("fresh")
    two.catalog.project(project.id)  # (its snapshot now holds the project, not the property)
    one.catalog.ensure_properties(project.id, "user", {"tier": PropertyType.NUMBER})
    qp = {"filts": [{"columnName": "tier", "comparator": "equal", "ftv": ["3"]}]}
    assert two.segments.preview(project.id, None, None, qp) == 0
