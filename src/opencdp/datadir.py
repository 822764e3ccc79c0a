"""The data directory, checked before and as the server opens it.

A deployment is its metadata DB, its analytic store, its ingest log and its server key
together; one without the others is not a deployment to start on. Starting over a missing
metadata DB would create a new ``default`` project with new credentials and drop every record
waiting in the log; starting over a missing key would change every client secret and signed
link. So the server refuses, and says which file is missing and what to do.

Each deployment has an id, kept both in the metadata DB and in the store: a store that does not
carry the metadata DB's id (emptied, replaced, or another deployment's) is refused too.

Everything the server creates in the data directory is readable by its owner only: the
process creates files with umask 077, and the files and directories at the top of an
existing data directory are tightened at start.
"""

from __future__ import annotations

import base64
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path
from urllib.parse import urlsplit

import sqlalchemy as sa

from opencdp.config import Settings
from opencdp.meta import tables as t
from opencdp.store.base import Store

log = logging.getLogger(__name__)

KEY_BYTES = 32
DEPLOYMENT = "deployment"  # its name among the store's checkpoints


class DataDirError(RuntimeError):
    """The data directory cannot be started on as it is; the message says what to do."""


def prepare(settings: Settings) -> None:
    """Before anything is opened: private files from now on, and refuse a deployment whose
    metadata DB is gone."""
    os.umask(0o077)
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    _tighten(data)
    if settings.meta_url:
        return  # an external metadata DB: the deployment id check covers it
    meta = data / "meta.db"
    if meta.exists():
        return
    held = [
        str(p)
        for p in (
            None if settings.store_url else data / "store.duckdb",
            *sorted(settings.log_dir.glob("*.log")),
        )
        if p is not None and p.exists() and (p.suffix != ".log" or p.stat().st_size > 0)
    ]
    if held:
        raise DataDirError(
            f"{meta} is missing, but {', '.join(held[:3])} hold data of an existing "
            "deployment. Starting would create new credentials and discard the records "
            "waiting in the ingest log. Restore meta.db from a backup, or move the data "
            "directory aside to start a new deployment."
        )


def server_key(settings: Settings, engine: sa.Engine) -> bytes:
    """The server key, exactly as it was created (every client secret and signed link is
    derived from it); created with a new deployment only.

    It comes from ``OPENCDP_SECRET_KEY`` when given (what every process of a deployment
    shares), else from the data directory's ``secret.key`` (the embedded default), else, for a
    shared metadata DB, from the metadata DB itself. Whichever it is, its fingerprint is kept
    in the metadata DB: a process given another deployment's key, or a key that changed, is
    refused rather than left to fail every credential."""
    given = parse_key(settings.secret_key) if settings.secret_key else None
    if given is not None:
        key = given
        path = settings.secret_key_path
        if path.exists() and path.read_bytes() != given:
            raise DataDirError(
                f"OPENCDP_SECRET_KEY is not the key in {path}, which this deployment's client "
                "secrets and links were made with. Give that key, or remove the variable."
            )
    elif not settings.meta_url:
        key = _key_file(settings, engine)
    else:
        key = _kept_key(engine)
    check = hmac.new(key, b"opencdp key check", "sha256").digest()
    with engine.begin() as conn:
        kept = conn.execute(
            sa.select(t.deployment_keys.c.value).where(t.deployment_keys.c.name == "key_check")
        ).scalar()
        if kept is None:
            conn.execute(sa.insert(t.deployment_keys).values(name="key_check", value=check))
        elif not hmac.compare_digest(bytes(kept), check):
            raise DataDirError(
                "the server key is not this deployment's: the metadata DB's client secrets and "
                "links were made with another. Give the deployment's OPENCDP_SECRET_KEY."
            )
    return key


def parse_key(text: str) -> bytes:
    """A server key given as text: 64 hexadecimal digits, or 32 bytes in base64."""
    text = text.strip()
    try:
        key = (
            bytes.fromhex(text)
            if len(text) == 2 * KEY_BYTES
            else base64.b64decode(
                text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True
            )
        )
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise DataDirError(
            f"OPENCDP_SECRET_KEY must be {KEY_BYTES} random bytes, as 64 hexadecimal digits "
            "or in base64 (for example: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


def _key_file(settings: Settings, engine: sa.Engine) -> bytes:
    path = settings.secret_key_path
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        if _has_projects(engine):
            raise DataDirError(
                f"{path} is missing, but the metadata DB holds projects: every client secret "
                "and signed link is derived from that key. Restore it from a backup."
            ) from None
        key = secrets.token_bytes(KEY_BYTES)
        _write_private(path, key)
        return key
    if len(key) != KEY_BYTES:
        raise DataDirError(
            f"{path} holds {len(key)} bytes, not the {KEY_BYTES} of a server key: it is "
            "damaged. Restore it from a backup."
        )
    return key


def _kept_key(engine: sa.Engine) -> bytes:
    """The key kept in a shared metadata DB, made with the deployment (by the first process
    to start: the caller holds the start-up lock)."""
    with engine.begin() as conn:
        kept = conn.execute(
            sa.select(t.deployment_keys.c.value).where(t.deployment_keys.c.name == "server_key")
        ).scalar()
        if kept is not None:
            return bytes(kept)
        if conn.execute(sa.select(t.deployment_keys.c.name)).first() is not None:
            raise DataDirError(
                "this deployment's server key is not in the metadata DB: it was given to its "
                "processes by OPENCDP_SECRET_KEY. Give it to this one too."
            )
        key = secrets.token_bytes(KEY_BYTES)
        conn.execute(sa.insert(t.deployment_keys).values(name="server_key", value=key))
    log.warning(
        "the server key is kept in the metadata DB; give it to every process as "
        "OPENCDP_SECRET_KEY instead, so that a copy of the database alone cannot sign links"
    )
    return key


def check_store(settings: Settings, engine: sa.Engine) -> None:
    """Before the store is opened: a store kept in a local file or folder (the default DuckDB
    file, a chdb path) must exist once projects do (opening would create an empty one)."""
    url = settings.store_url
    if not url:
        path = settings.data_dir / "store.duckdb"
    elif url.startswith("chdb://"):
        path = Path(urlsplit(url).path)
    else:
        return
    if not path.exists() and _has_projects(engine):
        raise DataDirError(
            f"{path} is missing, but the metadata DB holds projects: the analytic store "
            "holds nothing of this deployment. Restore the store from a backup."
        )


def check_deployment(engine: sa.Engine, store: Store) -> int:
    """The deployment id, recorded in both the metadata DB and the store on first start;
    a store or metadata DB that belongs elsewhere is refused."""
    with engine.connect() as conn:
        meta_id = conn.execute(sa.select(t.deployment.c.id)).scalar()
    store_id = store.checkpoint(DEPLOYMENT) or None
    if meta_id is not None and store_id is None and _has_projects(engine):
        raise DataDirError(
            "the analytic store holds nothing of this deployment (it has no deployment id, "
            f"the metadata DB has {meta_id}): it was emptied or replaced. Restore the store "
            "from a backup."
        )
    if store_id is not None and meta_id is None and _has_projects(engine) is False:
        raise DataDirError(
            f"the metadata DB is new, but the analytic store belongs to deployment {store_id}. "
            "Restore the metadata DB from a backup, or point OPENCDP_STORE_URL at a new store."
        )
    if meta_id is not None and store_id is not None and meta_id != store_id:
        raise DataDirError(
            f"the analytic store belongs to deployment {store_id}, the metadata DB to "
            f"{meta_id}: they are not one deployment."
        )
    deployment = int(meta_id or store_id or secrets.randbits(62) or 1)
    if meta_id is None:
        with engine.begin() as conn:
            conn.execute(sa.insert(t.deployment).values(id=deployment, created_at=t.utcnow()))
    if store_id is None:
        with store.writer() as w:
            w.set_checkpoint(DEPLOYMENT, deployment)
    return deployment


def _has_projects(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(sa.select(sa.func.count()).select_from(t.projects)).scalar())


def _tighten(data: Path) -> None:
    """Files and directories at the top of the data dir: the owner's only."""
    for entry in [data, *data.iterdir()]:
        try:
            mode = entry.lstat().st_mode
            if stat.S_ISLNK(mode) or not mode & 0o077:
                continue
            entry.chmod(0o700 if stat.S_ISDIR(mode) else 0o600)
        except OSError as exc:
            log.warning("cannot make %s private: %s", entry, exc)


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
