"""The catalog: projects, their credentials and property schema, kept in the metadata DB.

Reads come from an in-memory snapshot (the hot path looks up a project per request); every change
is written to the DB first and then swaps the snapshot, under one lock.

Every change also bumps the catalog's version number (``catalog_version``) in its own
transaction. A reader compares the stored version with its snapshot's at most every
``refresh_seconds`` and reloads when they differ, so a change made by another process is seen
within that delay; a snapshot is never replaced by one loaded at an older version.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from opencdp.catalog import secrets
from opencdp.catalog.model import Project, Property, Schema
from opencdp.catalog.types import COLUMN_TYPES, TABLES, PropertyType, zone
from opencdp.config import Limits
from opencdp.errors import CdpError, Code, invalid, not_found
from opencdp.meta import tables as t

log = logging.getLogger(__name__)

DEFAULT_TIMEZONE = "Asia/Shanghai"
EXPORT_FORMATS = ("csv", "jsonl", "parquet")
DEFAULT_IDENTITY_KEYS = ("mobile", "email")
TD_IDENTITY_KEYS = ("#account_id", "#distinct_id")  # for projects that take ThinkingData SDKs
# Kinds of project aliases (names a vendor's clients use for a project; see tables.py).
WECHAT_ENV = "wechat_env"
TD_APP = "thinkingdata_app"
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_APP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Credentials:
    """Secrets as issued: shown once, then only their hashes remain."""

    client_id: str
    client_secret: str
    api_token: str


_COLLECTION = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,127}")


def check_name(name: object, field: str, max_length: int = 128) -> str:
    if not isinstance(name, str) or not name.strip():
        raise invalid(field, "must be a non-empty string")
    if len(name) > max_length:
        raise invalid(field, f"longer than {max_length} characters")
    if _CONTROL.search(name):
        raise invalid(field, "contains control characters")
    return name


class Catalog:
    def __init__(
        self,
        engine: sa.Engine,
        server_key: bytes,
        max_properties: int = Limits.max_project_properties,
        refresh_seconds: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``refresh_seconds``: how often, at most, a read checks whether another process
        changed the catalog (0: at every read); ``monotonic``: the clock of those checks."""
        self._engine = engine
        self.refresh_seconds = refresh_seconds
        self._monotonic = monotonic
        self._version = -1  # of the snapshot
        self._next_check = 0.0
        self._checking = threading.Lock()
        self._server_key = server_key
        # Most properties of a project (user and event together), and most fields of a
        # collection: every way of adding one goes through ensure_properties or
        # ensure_collection_fields, which refuse to pass it.
        self.max_properties = max_properties
        self._lock = threading.RLock()
        self._projects: dict[int, Project] = {}
        self._by_token: dict[str, int] = {}
        self._by_client: dict[str, tuple[int, str]] = {}
        self._schemas: dict[int, Schema] = {}
        self._td_apps: dict[str, int] = {}
        self.reload()

    # ---- loading -------------------------------------------------------------------------
    def reload(self) -> None:
        with self._engine.connect() as conn:
            # Read first: a change committed while the rest is read makes the next check
            # reload again, never go unseen.
            version = _version(conn)
            envs: dict[int, list[str]] = {}
            a = t.project_aliases.c
            for r in conn.execute(
                sa.select(a.project_id, a.alias).where(a.kind == WECHAT_ENV).order_by(a.alias)
            ):
                envs.setdefault(r.project_id, []).append(r.alias)
            projects = {
                r.id: Project(
                    r.id,
                    r.key,
                    r.name,
                    r.timezone,
                    bool(r.strict_schema),
                    r.created_at,
                    r.export_format,
                    tuple(envs.get(r.id, ())),
                    r.login_user_key,
                )
                for r in conn.execute(sa.select(t.projects))
            }
            creds = conn.execute(
                sa.select(t.credentials).where(t.credentials.c.revoked_at.is_(None))
            ).all()
            props: dict[int, list[Property]] = {pid: [] for pid in projects}
            for r in conn.execute(sa.select(t.properties).order_by(t.properties.c.id)):
                props[r.project_id].append(
                    Property(r.id, r.table_name, r.name, PropertyType(r.type), bool(r.is_identity))
                )
            td_apps = {
                r.alias: r.project_id
                for r in conn.execute(sa.select(a.alias, a.project_id).where(a.kind == TD_APP))
            }
        with self._lock:
            if version < self._version:
                return  # another thread swapped in a newer snapshot meanwhile
            self._version = version
            self._projects = projects
            self._by_token = {c.api_token_hash: c.project_id for c in creds}
            self._by_client = {c.client_id: (c.project_id, c.client_secret_hash) for c in creds}
            self._generation = {c.client_id: int(c.secret_generation) for c in creds}
            self._schemas = {pid: _schema(pid, ps) for pid, ps in props.items()}
            self._td_apps = td_apps

    @property
    def engine(self) -> sa.Engine:
        """The metadata DB."""
        return self._engine

    @property
    def version(self) -> int:
        """The catalog version the snapshot was loaded at."""
        return self._version

    def refresh(self, now_: bool = False) -> None:
        """Reload the snapshot if the stored version moved (another process changed the
        catalog); checked at most every ``refresh_seconds``, by one thread at a time (with
        ``now_``: at once, waiting for a check under way). A metadata DB that cannot be read
        keeps the snapshot as it is."""
        now = self._monotonic()
        if now_:
            self._checking.acquire()
        elif now < self._next_check or not self._checking.acquire(blocking=False):
            return
        try:
            self._next_check = now + self.refresh_seconds
            with self._engine.connect() as conn:
                stored = _version(conn)
            if stored != self._version:
                self.reload()
        except Exception:
            log.warning("the catalog's version could not be read; the snapshot is kept")
        finally:
            self._checking.release()

    # ---- projects ------------------------------------------------------------------------
    def create_project(
        self, name: str, timezone: str = DEFAULT_TIMEZONE, strict_schema: bool = False
    ) -> tuple[Project, Credentials]:
        name = check_name(name, "name").strip()
        # Wherever a project is referred to, its id, key or name will do: a name must not read
        # as an id, nor break the path segment it appears in.
        if name.isdigit() or "/" in name or name in (".", ".."):
            raise invalid("name", "must not be all digits, '.', '..' or contain '/'")
        try:
            zone(timezone)
        except ValueError as exc:
            raise invalid("timezone", str(exc)) from None
        now = t.utcnow()
        with self._lock, self._engine.begin() as conn:
            if conn.execute(sa.select(t.projects.c.id).where(t.projects.c.name == name)).first():
                raise CdpError(Code.CONFLICT, f"a project named {name!r} already exists", "name")
            pid = conn.execute(
                sa.insert(t.projects).values(
                    key=secrets.new_id(8),
                    name=name,
                    timezone=timezone,
                    strict_schema=strict_schema,
                    created_at=now,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
            for key in DEFAULT_IDENTITY_KEYS:
                conn.execute(
                    sa.insert(t.properties).values(
                        project_id=pid,
                        table_name="user",
                        name=key,
                        type=PropertyType.STRING.value,
                        is_identity=True,
                        created_at=now,
                    )
                )
            creds = self._issue(conn, pid)
            bump(conn)
        self.reload()
        return self.project(pid), creds

    def _issue(self, conn: sa.Connection, project_id: int) -> Credentials:
        """Revoke a project's credentials and issue new ones."""
        now = t.utcnow()
        generation = (
            conn.execute(
                sa.select(sa.func.max(t.credentials.c.secret_generation)).where(
                    t.credentials.c.project_id == project_id
                )
            ).scalar()
            or 0
        ) + 1
        conn.execute(
            sa.update(t.credentials)
            .where(t.credentials.c.project_id == project_id, t.credentials.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        client_id = "ci_" + secrets.new_id(12)
        client_secret = secrets.derive_client_secret(self._server_key, client_id, generation)
        api_token = secrets.new_token("tok")
        conn.execute(
            sa.insert(t.credentials).values(
                project_id=project_id,
                client_id=client_id,
                api_token_hash=secrets.digest(api_token),
                secret_generation=generation,
                client_secret_hash=secrets.digest(client_secret),
                created_at=now,
            )
        )
        return Credentials(client_id, client_secret, api_token)

    def rotate_credentials(self, project_id: int) -> Credentials:
        with self._lock, self._engine.begin() as conn:
            creds = self._issue(conn, self.project(project_id).id)
            bump(conn)
        self.reload()
        return creds

    def credentials_info(self, project_id: int) -> dict[str, object]:
        """What can be shown of a project's live credentials (never the secrets)."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(t.credentials).where(
                    t.credentials.c.project_id == self.project(project_id).id,
                    t.credentials.c.revoked_at.is_(None),
                )
            ).first()
        if row is None:
            raise not_found("credentials of project", project_id)
        return {
            "client_id": row.client_id,
            "created_at": row.created_at.isoformat() + "Z",
            "api_token": "(hashed; rotate to issue a new one)",
            "client_secret": "(hashed; rotate to issue a new one)",
        }

    def set_strict(self, project_id: int, strict: bool) -> Project:
        with self._lock, self._engine.begin() as conn:
            conn.execute(
                sa.update(t.projects)
                .where(t.projects.c.id == self.project(project_id).id)
                .values(strict_schema=strict)
            )
            bump(conn)
        self.reload()
        return self.project(project_id)

    def _set_project(self, project_id: int, **values: Any) -> Project:
        """Update columns of a project's row, with the catalog's version, and reload."""
        with self._lock, self._engine.begin() as conn:
            conn.execute(
                sa.update(t.projects)
                .where(t.projects.c.id == self.project(project_id).id)
                .values(**values)
            )
            bump(conn)
        self.reload()
        return self.project(project_id)

    def set_export_format(self, project_id: int, fmt: str) -> Project:
        if fmt not in EXPORT_FORMATS:
            raise invalid("export_format", f"must be one of {', '.join(EXPORT_FORMATS)}")
        return self._set_project(project_id, export_format=fmt)

    def set_login_user_key(self, project_id: int, name: str | None) -> Project:
        """The user property whose value raw-data exports give as ``loginUserId`` (GrowingIO's
        login user id); None or "": our user id."""
        name = (name or "").strip() or None
        if name is not None and name not in self.schema(project_id).user:
            raise invalid("login_user_key", f"{name[:64]!r} is not a user property")
        return self._set_project(project_id, login_user_key=name)

    def set_wechat_envs(self, project_id: int, envs: Iterable[str]) -> Project:
        """Give a project its WeChat cloud environment ids (replacing those it had): clients
        may name any of them, or the project's key, as ``env``."""
        wanted = sorted({check_name(e, "wechat_envs").strip() for e in envs})
        for env in wanted:
            if not _ALIAS.fullmatch(env):
                raise invalid("wechat_envs", f"{env[:40]!r}: use letters, digits, '_', '-' and '.'")
        a = t.project_aliases.c
        with self._lock, self._engine.begin() as conn:
            pid = self.project(project_id).id
            taken = conn.execute(
                sa.select(a.alias, a.project_id).where(
                    a.kind == WECHAT_ENV, a.alias.in_(wanted), a.project_id != pid
                )
            ).all()
            if taken:
                raise CdpError(
                    Code.CONFLICT,
                    f"wechat_envs: {taken[0].alias!r} is the environment of another project",
                    "wechat_envs",
                )
            conn.execute(
                sa.delete(t.project_aliases).where(a.kind == WECHAT_ENV, a.project_id == pid)
            )
            if wanted:
                conn.execute(
                    sa.insert(t.project_aliases),
                    [
                        {
                            "kind": WECHAT_ENV,
                            "alias": e,
                            "project_id": pid,
                            "created_at": t.utcnow(),
                        }
                        for e in wanted
                    ],
                )
            bump(conn)
        self.reload()
        return self.project(project_id)

    def projects(self) -> list[Project]:
        self.refresh()
        return sorted(self._projects.values(), key=lambda p: p.id)

    def project(self, project_id: int) -> Project:
        """A project by id. One this snapshot does not hold is looked up again at once: the
        id came from somewhere (a job, a queued record) and another process may have created
        the project since the last check."""
        self.refresh()
        if project_id not in self._projects:
            self.refresh(now_=True)
        try:
            return self._projects[project_id]
        except KeyError:
            raise not_found("project", project_id) from None

    def resolve(self, ref: str | int) -> Project:
        """A project by id, key or name, in that order.

        >>> # catalog.resolve("default") is the project named "default"
        """
        self.refresh()
        text = str(ref).strip()
        if text.isdigit() and int(text) in self._projects:
            return self._projects[int(text)]
        for p in self._projects.values():
            if p.key == text:
                return p
        for p in self._projects.values():
            if p.name == text:
                return p
        raise not_found("project", text)

    def authenticate_token(self, token: str) -> Project | None:
        """The project an api token belongs to, or None.

        The token is hashed and the hash looked up; equality of two SHA-256 digests of a
        256-bit secret leaks nothing an attacker can use, and the final check is constant-time.
        """
        self.refresh()
        hashed = secrets.digest(token)
        pid = self._by_token.get(hashed)
        if pid is None:
            return None
        return self._projects.get(pid)

    def authenticate_client(self, client_id: str, client_secret: str) -> Project | None:
        self.refresh()
        entry = self._by_client.get(client_id)
        if entry is None:
            secrets.matches(client_secret, "0" * 64)  # same work either way
            return None
        pid, hashed = entry
        return self._projects.get(pid) if secrets.matches(client_secret, hashed) else None

    # ---- ThinkingData app ids ------------------------------------------------------------
    def td_project(self, app_id: str) -> Project | None:
        """The project a ThinkingData app id names, or None. The app id is the SDKs' only
        credential (as with ThinkingData's own receiver): it is not a secret."""
        self.refresh()
        pid = self._td_apps.get(app_id)
        return None if pid is None else self._projects.get(pid)

    def td_app_ids(self, project_id: int) -> list[str]:
        self.refresh()
        self.project(project_id)
        return sorted(a for a, p in self._td_apps.items() if p == project_id)

    def add_td_app(self, project_id: int, app_id: str | None = None) -> str:
        """Give the project a ThinkingData app id (``app_id``, or a new random one); its
        ``#account_id`` and ``#distinct_id`` become identity keys."""
        self.project(project_id)
        if app_id is None:
            app_id = secrets.new_id(16)
        if not isinstance(app_id, str) or not _APP_ID.fullmatch(app_id):
            raise invalid("app_id", "1 to 64 letters, digits, '_' or '-'")
        with self._lock:
            owner = self._td_apps.get(app_id)
            if owner is not None and owner != project_id:
                raise CdpError(
                    Code.CONFLICT, f"app_id: {app_id!r} belongs to another project", "app_id"
                )
            self.ensure_td_keys(project_id)
            if owner is None:
                with self._engine.begin() as conn:
                    conn.execute(
                        sa.insert(t.project_aliases).values(
                            kind=TD_APP, alias=app_id, project_id=project_id, created_at=t.utcnow()
                        )
                    )
                    bump(conn)
                self.reload()
        return app_id

    def remove_td_app(self, project_id: int, app_id: str) -> None:
        if self._td_apps.get(app_id) != project_id:
            raise not_found("app id", app_id)
        with self._lock, self._engine.begin() as conn:
            a = t.project_aliases.c
            conn.execute(sa.delete(t.project_aliases).where(a.kind == TD_APP, a.alias == app_id))
            bump(conn)
        self.reload()

    def ensure_td_keys(self, project_id: int) -> Schema:
        """Make ``#account_id`` and ``#distinct_id`` identity keys, besides the others."""
        schema = self.schema(project_id)
        keys = list(schema.identity_keys)
        if all(k in keys for k in TD_IDENTITY_KEYS):
            return schema
        with self._lock:
            keys = list(self.schema(project_id).identity_keys)
            missing_keys = [k for k in TD_IDENTITY_KEYS if k not in keys]
            if missing_keys:
                return self.set_identity_keys(project_id, [*keys, *missing_keys])
            return self.schema(project_id)

    # ---- access tokens -------------------------------------------------------------------
    def client_secret(self, client_id: str) -> tuple[Project, str] | None:
        """The project of an active client id and its secret, for verifying a request signed
        with it (GrowingIO's token handshake); None for an unknown or retired client."""
        self.refresh()
        entry = self._by_client.get(client_id)
        project = self._projects.get(entry[0]) if entry else None
        if project is None:
            return None
        generation = self._generation[client_id]
        return project, secrets.derive_client_secret(self._server_key, client_id, generation)

    def issue_access_token(self, client_id: str, audience: str, ttl: int) -> tuple[str, int]:
        """A signed, expiring bearer token for ``client_id`` on one surface; (token, expiry).

        Nothing is stored: the token carries the client id and its expiry, signed with the
        server key. Rotating the project's credentials retires the client id, and with it
        every token issued for it.
        """
        self.refresh()
        if client_id not in self._by_client:
            raise CdpError(Code.AUTH_FAILED, "client_id: unknown client", "client_id")
        expires = int(time.time()) + ttl
        mac = secrets.sign(self._server_key, "access", audience, client_id, str(expires))
        return f"{client_id}.{expires}.{mac}", expires

    def check_access_token(
        self, token: str, audience: str, client_id: str | None = None
    ) -> tuple[Project, int]:
        """The project a token from :meth:`issue_access_token` is for, and its expiry.

        Raises auth_failed for a forged, altered or retired token (or, with ``client_id``, one
        issued to another client) and token_expired for one whose time is up.
        """
        self.refresh()
        holder, _, rest = token.partition(".")
        if client_id is not None and not secrets.same(holder, client_id):
            raise CdpError(Code.AUTH_FAILED, "access token: not issued to this client", "client_id")
        client_id = holder
        expires_text, _, mac = rest.partition(".")
        entry = self._by_client.get(client_id)
        good = secrets.sign(self._server_key, "access", audience, client_id, expires_text)
        if not secrets.same(mac, good) or entry is None or not expires_text.isdigit():
            raise CdpError(Code.AUTH_FAILED, "access token: invalid", "access_token")
        project = self._projects.get(entry[0])
        if project is None:
            raise CdpError(Code.AUTH_FAILED, "access token: invalid", "access_token")
        expires = int(expires_text)
        if expires <= time.time():
            raise CdpError(Code.TOKEN_EXPIRED, "access token: expired", "access_token")
        return project, expires

    # ---- collections ---------------------------------------------------------------------
    def collection(self, project_id: int, name: str, create: bool = True) -> int:
        """The id of a project's collection, created on first use."""
        name = check_name(name, "collection_name")
        if not _COLLECTION.fullmatch(name):
            raise invalid(
                "collection_name", "use letters, digits, '_' and '-', starting with a letter"
            )
        c = t.collections.c
        with self._lock, self._engine.begin() as conn:
            found = conn.execute(
                sa.select(c.id).where(c.project_id == self.project(project_id).id, c.name == name)
            ).scalar()
            if found is not None:
                return int(found)
            if not create:
                raise not_found("collection", name)
            new = conn.execute(
                sa.insert(t.collections).values(
                    project_id=project_id, name=name, created_at=t.utcnow()
                )
            ).inserted_primary_key
            assert new is not None
            bump(conn)
            return int(new[0])

    def collection_dedupe(self, collection_id: int) -> list[str]:
        """The fields whose values identify a collection's documents (empty: its ``_id``)."""
        c = t.collections.c
        with self._engine.connect() as conn:
            raw = conn.execute(sa.select(c.dedupe_fields).where(c.id == collection_id)).scalar()
        return [str(f) for f in orjson.loads(raw)] if raw else []

    def set_collection_dedupe(self, collection_id: int, fields: list[str]) -> list[str]:
        names = [check_name(f, "dedupe_fields").strip() for f in fields]
        if len(set(names)) != len(names):
            raise invalid("dedupe_fields", "names a field twice")
        if len(names) > 3:
            raise invalid("dedupe_fields", "at most 3 fields identify a document")
        c = t.collections.c
        with self._lock, self._engine.begin() as conn:
            conn.execute(
                sa.update(t.collections)
                .where(c.id == collection_id)
                .values(dedupe_fields=orjson.dumps(names).decode() if names else None)
            )
            bump(conn)
        return names

    def collection_fields(self, collection_id: int) -> dict[str, PropertyType]:
        f = t.collection_fields.c
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(f.name, f.type).where(f.collection_id == collection_id).order_by(f.id)
            ).all()
        return {r.name: PropertyType(r.type) for r in rows}

    def ensure_collection_fields(
        self, collection_id: int, wanted: dict[str, PropertyType]
    ) -> dict[str, PropertyType]:
        """The collection's fields, adding those in ``wanted`` that it does not have yet (a
        field that exists keeps its type)."""
        for name in wanted:
            check_name(name, "field")
        with self._lock, self._engine.begin() as conn:
            f = t.collection_fields.c
            have = {
                r.name
                for r in conn.execute(
                    sa.select(f.name).where(f.collection_id == collection_id)
                ).all()
            }
            adding = len(wanted.keys() - have)
            if adding and len(have) + adding > self.max_properties:
                raise self._over(len(have), adding, "fields", "collection")
            if adding:
                bump(conn)
            for name, ptype in wanted.items():
                if name not in have:
                    conn.execute(
                        sa.insert(t.collection_fields).values(
                            collection_id=collection_id,
                            name=name,
                            type=ptype.value,
                            created_at=t.utcnow(),
                        )
                    )
        return self.collection_fields(collection_id)

    # ---- signed links --------------------------------------------------------------------
    def sign_link(self, purpose: str, *parts: str, ttl: int) -> tuple[int, str]:
        """(expiry, signature) for a download link; parts name what the link gives."""
        expires = int(time.time()) + ttl
        return expires, secrets.sign(self._server_key, "link", purpose, *parts, str(expires))

    def check_link(self, purpose: str, *parts: str, expires: str, signature: str) -> None:
        """Refuse a link that was altered in any part, or whose time is up."""
        good = secrets.sign(self._server_key, "link", purpose, *parts, expires)
        if not secrets.same(signature, good) or not expires.isdigit():
            raise CdpError(Code.AUTH_FAILED, "link: invalid signature", "sign")
        if int(expires) <= time.time():
            raise CdpError(Code.TOKEN_EXPIRED, "link: expired", "expires")

    # ---- schema --------------------------------------------------------------------------
    def schema(self, project_id: int) -> Schema:
        self.refresh()
        if project_id not in self._schemas:  # (as for project())
            self.refresh(now_=True)
        try:
            return self._schemas[project_id]
        except KeyError:
            raise not_found("project", project_id) from None

    def add_property(
        self, project_id: int, table: str, name: str, ptype: str, is_identity: bool = False
    ) -> tuple[Property, bool]:
        """Add a property; returns it and whether it was new. Re-adding with the same type is
        a no-op; with another type it is a conflict (types never change under stored data)."""
        if table not in TABLES:
            raise invalid("table", f"must be one of {', '.join(TABLES)}")
        try:
            typ = PropertyType(ptype)
            if typ not in COLUMN_TYPES:
                raise ValueError(ptype)
        except ValueError:
            allowed = ", ".join(x.value for x in COLUMN_TYPES)
            raise invalid("type", f"must be one of {allowed}, got {ptype!r}") from None
        name = check_name(name, "name")
        # Refuse before anything is registered: a rejected request leaves the schema as it was.
        if is_identity and table != "user":
            raise invalid("is_identity", "only user properties can be identity keys")
        if is_identity and typ is not PropertyType.STRING:
            raise invalid("type", f"an identity key must be a string property, not {typ.value}")
        existed = name in self.schema(project_id).table(table)
        prop = self.ensure_properties(project_id, table, {name: typ})[name]
        if prop.type is not typ:
            raise CdpError(
                Code.CONFLICT,
                f"property {name!r} already exists with type {prop.type.value}",
                "type",
            )
        if is_identity and not prop.is_identity:
            self.set_identity_keys(project_id, [*self.schema(project_id).identity_keys, name])
            prop = self.schema(project_id).user[name]
        return prop, not existed

    def ensure_properties(
        self, project_id: int, table: str, wanted: dict[str, PropertyType]
    ) -> dict[str, Property]:
        """The named properties of ``table``, adding those that do not exist yet.

        A property that already exists keeps its type; callers re-check values against it.
        """
        current = self.schema(project_id).table(table)
        missing = {n: ty for n, ty in wanted.items() if n not in current}
        for n, ty in missing.items():
            if ty not in COLUMN_TYPES:
                raise invalid(n, f"a {table} property cannot be of type {ty.value}")
        for attempt in range(3):
            if not missing:
                break
            with self._lock:
                current = self.schema(project_id).table(table)
                missing = {n: ty for n, ty in missing.items() if n not in current}
                if missing:
                    have = self.property_count(project_id)
                    if have + len(missing) > self.max_properties:
                        raise self._over(have, len(missing), "properties", "project")
                    try:
                        self._insert_properties(project_id, table, missing)
                    except sa.exc.IntegrityError:
                        if attempt == 2:
                            raise
                        self.reload()  # another process added one of them: take it as it is
                        continue
            current = self.schema(project_id).table(table)
            missing = {}
        return {n: current[n] for n in wanted}

    def property_count(self, project_id: int) -> int:
        """How many properties (user and event) the project has."""
        schema = self.schema(project_id)
        return len(schema.user) + len(schema.event)

    def property_room(self, project_id: int) -> int:
        """How many more properties the project may take."""
        return max(0, self.max_properties - self.property_count(project_id))

    def collection_room(self, collection_id: int) -> int:
        """How many more fields the collection may take."""
        return max(0, self.max_properties - len(self.collection_fields(collection_id)))

    def _over(self, have: int, adding: int, what: str, per: str) -> CdpError:
        one = {"properties": "property", "fields": "field"}[what]
        return CdpError(
            Code.LIMIT_EXCEEDED,
            f"{what}: {adding} new {one if adding == 1 else what} would pass the limit of "
            f"{self.max_properties} {what} per {per} (the {per} has {have})",
            what,
        )

    def _insert_properties(
        self, project_id: int, table: str, missing: dict[str, PropertyType]
    ) -> None:
        now = t.utcnow()
        with self._engine.begin() as conn:
            rows = [
                {
                    "project_id": project_id,
                    "table_name": table,
                    "name": n,
                    "type": ty.value,
                    "is_identity": False,
                    "created_at": now,
                }
                for n, ty in missing.items()
            ]
            conn.execute(sa.insert(t.properties), rows)
            version = bump(conn)
            added = conn.execute(
                sa.select(t.properties).where(
                    t.properties.c.project_id == project_id,
                    t.properties.c.table_name == table,
                    t.properties.c.name.in_(list(missing)),
                )
            ).all()
        if version != self._version + 1:  # another process changed the catalog meanwhile
            self.reload()
            return
        old = self._schemas[project_id]
        props = {**old.table(table)}
        for r in added:
            props[r.name] = Property(r.id, r.table_name, r.name, PropertyType(r.type), False)
        user, event = (props, old.event) if table == "user" else (old.user, props)
        self._schemas[project_id] = Schema(project_id, user, event)
        self._version = version

    def delete_property(self, project_id: int, table: str, name: str) -> None:
        """Remove a property from the schema. Its stored values are no longer readable (a
        property added later under the same name starts empty); segments that use it fail at
        their next refresh, saying so. Identity keys cannot be deleted."""
        if table not in TABLES:
            raise invalid("table", f"must be one of {', '.join(TABLES)}")
        prop = self.schema(project_id).table(table).get(name)
        if prop is None:
            raise not_found(f"{table} property", name)
        if prop.is_identity:
            raise CdpError(
                Code.CONFLICT,
                f"{name!r} is an identity key; change the identity keys first",
                "name",
            )
        with self._lock, self._engine.begin() as conn:
            conn.execute(sa.delete(t.properties).where(t.properties.c.id == prop.id))
            bump(conn)
        self.reload()

    def set_identity_keys(self, project_id: int, keys: Iterable[str]) -> Schema:
        """Make exactly ``keys`` the identity keys; unknown ones become string user properties."""
        names = list(dict.fromkeys(check_name(k, "keys") for k in keys))
        if not names:
            raise invalid("keys", "at least one identity key is required")
        schema = self.schema(project_id)
        for n in names:
            existing = schema.user.get(n)
            if existing is not None and existing.type is not PropertyType.STRING:
                raise invalid("keys", f"{n!r} is a {existing.type.value} property, not a string")
        self.ensure_properties(project_id, "user", {n: PropertyType.STRING for n in names})
        with self._lock, self._engine.begin() as conn:
            conn.execute(
                sa.update(t.properties)
                .where(t.properties.c.project_id == project_id, t.properties.c.table_name == "user")
                .values(is_identity=t.properties.c.name.in_(names))
            )
            bump(conn)
        self.reload()
        return self.schema(project_id)


def _schema(project_id: int, props: list[Property]) -> Schema:
    return Schema(
        project_id,
        {p.name: p for p in props if p.table == "user"},
        {p.name: p for p in props if p.table == "event"},
    )


def bump(conn: sa.Connection) -> int:
    """Bump the catalog version in the transaction of a change; the new version."""
    v = t.catalog_version.c
    conn.execute(sa.update(t.catalog_version).where(v.id == 1).values(version=v.version + 1))
    return _version(conn)


def _version(conn: sa.Connection) -> int:
    value = conn.execute(
        sa.select(t.catalog_version.c.version).where(t.catalog_version.c.id == 1)
    ).scalar()
    return int(value or 0)
