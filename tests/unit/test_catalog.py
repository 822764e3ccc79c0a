"""The catalog over a real metadata DB, SQLite and PostgreSQL (catalog/service.py,
catalog/secrets.py, meta/)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from opencdp.catalog import secrets
from opencdp.catalog.service import Catalog, Credentials
from opencdp.catalog.types import PropertyType
from opencdp.errors import CdpError, Code
from opencdp.meta import tables
from opencdp.meta.db import connect
from opencdp.meta.migrations import LATEST, current_version, upgrade
from tests.engines import new_database

SERVER_KEY = b"k" * 32


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "meta.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, db_path: Path) -> Iterator[sa.Engine]:
    """The metadata DB on each engine: a SQLite file, a database of the tests' PostgreSQL."""
    eng = connect(f"sqlite:///{db_path}" if request.param == "sqlite" else new_database())
    yield eng
    eng.dispose()


@pytest.fixture
def catalog(engine: sa.Engine) -> Catalog:
    return Catalog(engine, SERVER_KEY)


def all_bytes(db_path: Path) -> bytes:
    """The DB file and its WAL/journal side files: everything SQLite has written."""
    return b"".join(p.read_bytes() for p in sorted(db_path.parent.glob(db_path.name + "*")))


# ---- projects ---------------------------------------------------------------------------------
def test_create_project(catalog: Catalog) -> None:
    project, creds = catalog.create_project("shop", timezone="Europe/Paris")
    assert project.name == "shop"
    assert project.timezone == "Europe/Paris"
    assert project.strict_schema is False
    assert len(project.key) == 16
    assert catalog.project(project.id) == project
    assert catalog.projects() == [project]
    for ref in (project.id, str(project.id), project.key, "shop", " shop "):
        assert catalog.resolve(ref) == project
    schema = catalog.schema(project.id)
    assert list(schema.identity_keys) == ["mobile", "email"]
    assert all(p.type is PropertyType.STRING for p in schema.identity_keys.values())
    assert creds.api_token.startswith("tok_")
    assert creds.client_id.startswith("ci_")
    assert creds.client_secret.startswith("cs_")


def test_project_errors(catalog: Catalog) -> None:
    catalog.create_project("shop")
    with pytest.raises(CdpError) as info:
        catalog.create_project(" shop ")
    assert info.value.code is Code.CONFLICT
    assert info.value.field == "name"
    for bad in ("", "  ", "a\tb", "x" * 129, "7", " 12 ", "a/b", "/", ".", ".."):
        with pytest.raises(CdpError) as info:
            catalog.create_project(bad)
        assert (info.value.code, info.value.field) == (Code.VALIDATION_FAILED, "name")
    with pytest.raises(CdpError) as info:
        catalog.create_project("tz", timezone="Moon/Base")
    assert (info.value.code, info.value.field) == (Code.VALIDATION_FAILED, "timezone")
    assert [p.name for p in catalog.projects()] == ["shop"]
    for ref in (999, "999", "nope"):
        with pytest.raises(CdpError) as info:
            catalog.resolve(ref)
        assert info.value.code is Code.NOT_FOUND
    with pytest.raises(CdpError):
        catalog.project(999)
    with pytest.raises(CdpError):
        catalog.schema(999)


def test_catalog_reloads_from_the_db(engine: sa.Engine, catalog: Catalog) -> None:
    project, creds = catalog.create_project("shop", strict_schema=True)
    catalog.add_property(project.id, "event", "amount", "number")
    again = Catalog(engine, SERVER_KEY)
    assert again.project(project.id) == project
    assert again.schema(project.id) == catalog.schema(project.id)
    assert again.authenticate_token(creds.api_token) == project
    assert again.authenticate_client(creds.client_id, creds.client_secret) == project


# ---- credentials ------------------------------------------------------------------------------
def test_credentials_are_stored_only_as_hashes(
    engine: sa.Engine, catalog: Catalog, db_path: Path
) -> None:
    creds = [catalog.create_project(f"p{i}")[1] for i in range(3)]
    creds.append(catalog.rotate_credentials(catalog.resolve("p0").id))
    # Through SQL: no column of any table holds a secret, or a distinctive part of one.
    with engine.connect() as conn:
        names = sa.inspect(conn).get_table_names()
        dump = repr([conn.execute(sa.text(f'SELECT * FROM "{n}"')).all() for n in names])
    for c in creds:
        for secret in (c.api_token, c.client_secret):
            assert secret not in dump and secret.split("_", 1)[1][:16] not in dump
        assert secrets.digest(c.api_token) in dump  # what is stored is the hash
        assert c.client_id in dump
    if engine.dialect.name != "sqlite":
        return
    engine.dispose()  # let SQLite checkpoint the WAL into the main file as it closes
    raw = all_bytes(db_path)
    assert raw, "the metadata DB is on disk"
    for c in creds:  # nor in any byte SQLite wrote (its free pages, its journal)
        for secret in (c.api_token, c.client_secret):
            assert secret.encode() not in raw
            assert secret.split("_", 1)[1][:16].encode() not in raw


def test_authenticate(catalog: Catalog) -> None:
    a, ca = catalog.create_project("a")
    b, cb = catalog.create_project("b")
    assert catalog.authenticate_token(ca.api_token) == a
    assert catalog.authenticate_token(cb.api_token) == b
    for wrong in ("", "tok_", ca.api_token + "x", ca.api_token[:-1], ca.api_token.upper(), " "):
        assert catalog.authenticate_token(wrong) is None
    assert catalog.authenticate_client(ca.client_id, ca.client_secret) == a
    assert catalog.authenticate_client(ca.client_id, cb.client_secret) is None
    assert catalog.authenticate_client(cb.client_id, ca.client_secret) is None
    assert catalog.authenticate_client("ci_unknown", ca.client_secret) is None
    assert catalog.authenticate_client(ca.client_id, "") is None


def test_rotate(catalog: Catalog) -> None:
    a, old = catalog.create_project("a")
    b, other = catalog.create_project("b")
    new = catalog.rotate_credentials(a.id)
    assert isinstance(new, Credentials)
    assert new.api_token != old.api_token
    assert new.client_id != old.client_id
    assert new.client_secret != old.client_secret
    assert catalog.authenticate_token(old.api_token) is None
    assert catalog.authenticate_client(old.client_id, old.client_secret) is None
    assert catalog.authenticate_token(new.api_token) == a
    assert catalog.authenticate_client(new.client_id, new.client_secret) == a
    # The other project is untouched.
    assert catalog.authenticate_token(other.api_token) == b
    info = catalog.credentials_info(a.id)
    assert info["client_id"] == new.client_id
    assert new.api_token not in repr(info) and new.client_secret not in repr(info)
    with pytest.raises(CdpError) as err:
        catalog.rotate_credentials(999)
    assert err.value.code is Code.NOT_FOUND


def test_client_secret_is_derived_from_the_server_key(engine: sa.Engine) -> None:
    cat = Catalog(engine, SERVER_KEY)
    _, first = cat.create_project("a")
    second = cat.rotate_credentials(cat.resolve("a").id)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(tables.credentials).order_by(tables.credentials.c.id)).all()
    assert [r.secret_generation for r in rows] == [1, 2]
    assert rows[0].revoked_at is not None and rows[1].revoked_at is None
    for creds, row in zip((first, second), rows, strict=True):
        assert creds.client_secret == secrets.derive_client_secret(
            SERVER_KEY, creds.client_id, row.secret_generation
        )
        assert row.client_secret_hash == secrets.digest(creds.client_secret)
        assert row.api_token_hash == secrets.digest(creds.api_token)
    # Another server key derives other secrets.
    assert secrets.derive_client_secret(b"other", first.client_id, 1) != first.client_secret


def test_tokens_are_random() -> None:
    tokens = {secrets.new_token("tok") for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(t) >= 40 for t in tokens)
    assert secrets.matches("abc", secrets.digest("abc"))
    assert not secrets.matches("abd", secrets.digest("abc"))


def test_read_or_create_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secret.key"
    made = secrets.read_or_create_private(path, b"first")
    assert made == b"first"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert secrets.read_or_create_private(path, b"second") == b"first"


# ---- schema -----------------------------------------------------------------------------------
def test_properties(catalog: Catalog) -> None:
    p, _ = catalog.create_project("a")
    prop, new = catalog.add_property(p.id, "user", "level", "number")
    assert new and prop.type is PropertyType.NUMBER and prop.column == f"p_{prop.id}"
    assert catalog.add_property(p.id, "user", "level", "number") == (prop, False)
    with pytest.raises(CdpError) as info:
        catalog.add_property(p.id, "user", "level", "string")
    assert (info.value.code, info.value.field) == (Code.CONFLICT, "type")
    for table, name, ptype, identity, field in (
        ("users", "x", "string", False, "table"),
        ("user", "x", "integer", False, "type"),
        ("user", "", "string", False, "name"),
        ("event", "x", "string", True, "is_identity"),  # only user properties identify
        ("user", "x", "bool", True, "type"),  # identity keys are strings
    ):
        with pytest.raises(CdpError) as info:
            catalog.add_property(p.id, table, name, ptype, is_identity=identity)
        assert (info.value.code, info.value.field) == (Code.VALIDATION_FAILED, field)
    # Nothing was registered by the rejected calls.
    schema = catalog.schema(p.id)
    assert set(schema.user) == {"mobile", "email", "level"}
    assert schema.event == {}


def test_ensure_properties_keeps_existing_types(catalog: Catalog) -> None:
    p, _ = catalog.create_project("a")
    got = catalog.ensure_properties(p.id, "event", {"x": PropertyType.NUMBER})
    again = catalog.ensure_properties(
        p.id, "event", {"x": PropertyType.STRING, "y": PropertyType.BOOL}
    )
    assert again["x"] == got["x"] and again["x"].type is PropertyType.NUMBER
    assert again["y"].type is PropertyType.BOOL
    assert set(catalog.schema(p.id).event) == {"x", "y"}
    # Same name in the other table is another property.
    u = catalog.ensure_properties(p.id, "user", {"x": PropertyType.STRING})["x"]
    assert u.id != got["x"].id


def test_identity_keys(catalog: Catalog) -> None:
    p, _ = catalog.create_project("a")
    catalog.add_property(p.id, "user", "age", "number")
    schema = catalog.set_identity_keys(p.id, ["wechat_id", "email", "wechat_id"])
    assert set(schema.identity_keys) == {"wechat_id", "email"}
    assert schema.user["mobile"].is_identity is False
    assert schema.user["wechat_id"].type is PropertyType.STRING
    for bad in ([], [""], ["age"]):
        with pytest.raises(CdpError) as info:
            catalog.set_identity_keys(p.id, bad)
        assert info.value.field == "keys"
    assert set(catalog.schema(p.id).identity_keys) == {"wechat_id", "email"}
    prop, _ = catalog.add_property(p.id, "user", "member_no", "string", is_identity=True)
    assert prop.is_identity
    assert set(catalog.schema(p.id).identity_keys) == {"wechat_id", "email", "member_no"}


def test_strict(catalog: Catalog) -> None:
    p, _ = catalog.create_project("a")
    assert catalog.set_strict(p.id, True).strict_schema is True
    assert catalog.project(p.id).strict_schema is True
    assert catalog.set_strict(p.id, False).strict_schema is False


def test_projects_have_separate_schemas(catalog: Catalog) -> None:
    a, _ = catalog.create_project("a")
    b, _ = catalog.create_project("b")
    catalog.add_property(a.id, "user", "only_a", "string")
    catalog.set_identity_keys(a.id, ["uid"])
    assert "only_a" not in catalog.schema(b.id).user
    assert list(catalog.schema(b.id).identity_keys) == ["mobile", "email"]
    ids_a = set(catalog.schema(a.id).by_id)
    assert ids_a.isdisjoint(catalog.schema(b.id).by_id)


# ---- migrations -------------------------------------------------------------------------------
def test_migrations_are_idempotent(db_path: Path) -> None:
    url = f"sqlite:///{db_path}"
    eng = connect(url)  # migrates
    try:
        with eng.connect() as conn:
            assert current_version(conn) == LATEST
        cat = Catalog(eng, SERVER_KEY)
        project, creds = cat.create_project("kept")
        assert upgrade(eng) == LATEST
        assert upgrade(eng) == LATEST
        with eng.connect() as conn:
            rows = conn.execute(sa.select(tables.schema_version)).all()
        assert [r.version for r in rows] == [LATEST]
    finally:
        eng.dispose()
    # Opening again (a restart) migrates nothing and loses nothing.
    eng = connect(url)
    try:
        cat = Catalog(eng, SERVER_KEY)
        assert cat.resolve("kept") == project
        assert cat.authenticate_token(creds.api_token) == project
        with eng.connect() as conn:
            assert current_version(conn) == LATEST
            assert sa.inspect(conn).has_table("projects")
    finally:
        eng.dispose()


def test_fresh_db_records_its_version(tmp_path: Path) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        with eng.connect() as conn:
            assert current_version(conn) == 0
        assert upgrade(eng) == LATEST
        with eng.connect() as conn:
            assert current_version(conn) == LATEST
            insp = sa.inspect(conn)
            for name in ("schema_version", "projects", "credentials", "properties"):
                assert insp.has_table(name), name
    finally:
        eng.dispose()


def test_newer_db_is_refused(db_path: Path) -> None:
    eng = connect(f"sqlite:///{db_path}")
    try:
        with eng.begin() as conn:
            conn.execute(sa.update(tables.schema_version).values(version=LATEST + 1))
        with pytest.raises(RuntimeError, match="newer"):
            upgrade(eng)
    finally:
        eng.dispose()


def test_sqlite_pragmas(engine: sa.Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's settings")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


# ---- the property cap -------------------------------------------------------------------------
def test_property_cap_on_every_way_of_adding_one(engine: sa.Engine) -> None:
    cat = Catalog(engine, SERVER_KEY, max_properties=5)
    project, _ = cat.create_project("capped")  # mobile, email
    pid = project.id
    cat.ensure_properties(pid, "user", {"a": PropertyType.STRING, "b": PropertyType.NUMBER})
    # Two more would make 6: refused whole, naming the limit; nothing half added.
    with pytest.raises(CdpError) as err:
        cat.ensure_properties(pid, "event", {"c": PropertyType.STRING, "d": PropertyType.BOOL})
    assert err.value.code is Code.LIMIT_EXCEEDED
    assert err.value.field == "properties"
    assert err.value.message == (
        "properties: 2 new properties would pass the limit of 5 properties per project "
        "(the project has 4)"
    )
    assert cat.property_count(pid) == 4 and cat.property_room(pid) == 1
    cat.ensure_properties(pid, "event", {"c": PropertyType.STRING})
    assert cat.property_room(pid) == 0
    for add in (
        lambda: cat.add_property(pid, "user", "z", "string"),
        lambda: cat.set_identity_keys(pid, ["mobile", "wechat_id"]),
        lambda: cat.ensure_properties(pid, "event", {"e": PropertyType.NUMBER}),
    ):
        with pytest.raises(CdpError, match="limit of 5 properties per project"):
            add()
    # What exists still resolves, and a property the project has can become a key.
    assert cat.ensure_properties(pid, "user", {"a": PropertyType.STRING})["a"].name == "a"
    assert list(cat.set_identity_keys(pid, ["mobile", "a"]).identity_keys) == ["mobile", "a"]
    # The cap holds across a restart (it is counted from the DB), and per project.
    again = Catalog(engine, SERVER_KEY, max_properties=5)
    assert again.property_count(pid) == 5
    other, _ = again.create_project("other")
    again.ensure_properties(other.id, "user", {"x": PropertyType.STRING})
    # Collections: at most as many fields each.
    cid = again.collection(pid, "docs")
    wanted = {f"f{i}": PropertyType.STRING for i in range(6)}
    with pytest.raises(CdpError, match="6 new fields would pass the limit of 5 fields per"):
        again.ensure_collection_fields(cid, wanted)
    assert again.collection_fields(cid) == {}
    del wanted["f5"]
    assert len(again.ensure_collection_fields(cid, wanted)) == 5
    assert again.collection_room(cid) == 0


def test_messages_name_properties_not_store_columns() -> None:
    from opencdp.catalog.model import Property, Schema

    user = {"age": Property(12, "user", "age", PropertyType.NUMBER)}
    event = {"金额": Property(7, "event", "金额", PropertyType.NUMBER)}
    schema = Schema(1, user, event)
    text = 'Binder Error: column "p_12" vs t.p_7, p_123, p_99 and xp_12'
    assert schema.named(text) == 'Binder Error: column "age" vs t.金额, p_123, p_99 and xp_12'
