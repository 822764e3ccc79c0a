"""The ``opencdp`` command: ``serve``, and thin clients of the admin API.

Admin commands find the server by ``--url`` (or ``OPENCDP_URL``) and the admin token by
``OPENCDP_ADMIN_TOKEN`` or the data dir. With ``--json`` they print JSON; on an error they print
``{"error": {...}}`` and exit non-zero.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx
import orjson

from opencdp import __version__
from opencdp.config import from_env

DEFAULT_URL = "http://127.0.0.1:8600"


# ---- serve -------------------------------------------------------------------------------
@click.group()
@click.version_option(__version__, prog_name="opencdp")
def main() -> None:
    """OpenCDP: a self-hosted customer data platform."""


@main.command()
@click.option("--host", default=None, help="Address to listen on [127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port to listen on [8600].")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="[./data]")
@click.option("--flush-interval", type=float, default=None, help="Seconds between store flushes.")
@click.option(
    "--workers/--no-workers",
    default=None,
    help="Also apply the ingest queue and run jobs and the scheduler in this process [yes]. "
    "--no-workers: a server of a deployment on shared engines whose `opencdp worker` "
    "processes do that.",
)
@click.option("--log-level", default="info", show_default=True)
def serve(
    host: str | None,
    port: int | None,
    data_dir: Path | None,
    flush_interval: float | None,
    workers: bool | None,
    log_level: str,
) -> None:
    """Start the server (DuckDB + SQLite in the data dir unless configured otherwise)."""
    import uvicorn

    from opencdp.app import create_app

    _logging(log_level)
    settings = from_env().with_overrides(
        host=host,
        port=port,
        data_dir=data_dir,
        flush_interval=flush_interval,
        serve_workers=workers,
    )
    app = create_app(settings)
    # Cyclic GC passes over the objects of thousands of in-flight records stall the event loop
    # for tens of milliseconds (they dominated the import p99 in `make bench`): keep start-up
    # objects out of the collector and collect the young generation less often.
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    click.echo(
        f"OpenCDP {__version__} on http://{settings.host}:{settings.port} "
        f"(data in {settings.data_dir.resolve()})"
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=False,
        lifespan="on",
        loop="auto",
        http="auto",
        timeout_graceful_shutdown=10,
    )


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="[./data]")
@click.option("--flush-interval", type=float, default=None, help="Seconds between store flushes.")
@click.option("--log-level", default="info", show_default=True)
def worker(data_dir: Path | None, flush_interval: float | None, log_level: str) -> None:
    """Do a scaled-out deployment's work, with no HTTP: apply the ingest queue (the process
    holding the queue's lock), run import, refresh and export jobs, and the scheduler. Needs the
    shared engines (OPENCDP_META_URL on PostgreSQL, OPENCDP_STORE_URL on PostgreSQL or a
    ClickHouse server); run any number."""
    import signal
    import threading

    from opencdp.datadir import DataDirError
    from opencdp.runtime import Runtime

    _logging(log_level)
    settings = from_env().with_overrides(data_dir=data_dir, flush_interval=flush_interval)
    if not (settings.shared_meta and settings.shared_store):
        fail(
            "invalid_setting",
            "opencdp worker works for a deployment on shared engines: set OPENCDP_META_URL "
            "to PostgreSQL (postgresql+psycopg://…) and OPENCDP_STORE_URL to PostgreSQL or a "
            "ClickHouse server (clickhouse://…); the embedded server runs its workers itself",
        )
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    try:
        runtime = Runtime.open(settings)
    except DataDirError as exc:
        fail("invalid_setting", str(exc))
    runtime.start(announce=False, work=True)
    click.echo(f"OpenCDP {__version__} worker (pid {os.getpid()}) started")
    try:
        while not done.wait(1.0):
            pass
    finally:
        runtime.stop()
        click.echo("OpenCDP worker stopped")


# ---- admin client ------------------------------------------------------------------------
class Client:
    def __init__(self, url: str | None, data_dir: Path | None) -> None:
        self.url = (url or os.environ.get("OPENCDP_URL") or DEFAULT_URL).rstrip("/")
        token = os.environ.get("OPENCDP_ADMIN_TOKEN")
        if not token:
            settings = from_env().with_overrides(data_dir=data_dir)
            try:
                token = settings.admin_token_path.read_text().strip()
            except OSError:
                fail(
                    "missing_credential",
                    f"no admin token: set OPENCDP_ADMIN_TOKEN or point --data-dir at the "
                    f"server's data dir (looked in {settings.admin_token_path})",
                )
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = httpx.request(
                method,
                self.url + "/admin/v1" + path,
                headers=self.headers,
                **{"timeout": 60, **kwargs},
            )
        except httpx.HTTPError as exc:
            fail("unavailable", f"cannot reach the server at {self.url}: {exc}")
        try:
            data = resp.json()
        except ValueError:
            fail("internal", f"HTTP {resp.status_code} from the server: {resp.text[:200]}")
        if resp.status_code >= 400:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            fail(err.get("code", "error"), err.get("message", resp.text), err.get("field"))
        return data


@main.command("clickhouse-ddl")
@click.option("--database", default="opencdp", show_default=True)
@click.option("--cluster", required=True, help="The cluster's name in the servers' config.")
def clickhouse_ddl(database: str, cluster: str) -> None:
    """Print the ClickHouse store's schema for a cluster (replicated tables on every shard
    behind Distributed tables), to run once before the first server starts; then set
    OPENCDP_STORE_URL=clickhouse://…/DATABASE?cluster=CLUSTER."""
    from opencdp.store.clickhouse.sql import cluster_ddl

    try:
        statements = cluster_ddl(database, cluster)
    except ValueError:
        fail("invalid_setting", "database and cluster are names: a-z, 0-9 and _", "database")
    click.echo(";\n".join(statements) + ";")


def fail(code: str, message: str, field: str | None = None) -> NoReturn:
    body = {"error": {"code": code, "message": message, "field": field}}
    click.echo(orjson.dumps(body).decode(), err=True)
    sys.exit(2 if code == "not_found" else 1)


def emit(data: Any, as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    elif isinstance(data, list):
        for item in data:
            _print_mapping(item)
            click.echo()
    else:
        _print_mapping(data)


def _print_mapping(data: Any, indent: int = 0) -> None:
    pad = " " * indent
    if not isinstance(data, dict):
        click.echo(f"{pad}{data}")
        return
    for key, value in data.items():
        if isinstance(value, dict | list) and value:
            click.echo(f"{pad}{key}:")
            if isinstance(value, dict):
                _print_mapping(value, indent + 2)
            else:
                for item in value:
                    text = orjson.dumps(item).decode() if isinstance(item, dict) else item
                    click.echo(f"{pad}  - {text}")
        else:
            click.echo(f"{pad}{key}: {value}")


def client_options(f: Any) -> Any:
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)
    f = click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Where to find the admin token [./data].",
    )(f)
    f = click.option("--url", default=None, help=f"Server URL [{DEFAULT_URL}].")(f)
    return f


@main.group()
def project() -> None:
    """Projects and their credentials."""


@project.command("create")
@click.argument("name")
@click.option("--timezone", default="Asia/Shanghai", show_default=True)
@click.option("--strict", is_flag=True, help="Reject properties not in the schema.")
@client_options
def project_create(
    name: str, timezone: str, strict: bool, url: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Create a project; prints its credentials (shown only once)."""
    data = Client(url, data_dir).call(
        "POST", "/projects", json={"name": name, "timezone": timezone, "strict_schema": strict}
    )
    keys = ("project_id", "key", "name", "timezone", "client_id", "client_secret", "api_token")
    emit({k: data[k] for k in keys}, as_json)


@project.command("set")
@click.option("--project", "ref", required=True, help="Project name, key or id.")
@click.option("--strict/--no-strict", default=None, help="Reject properties not in the schema.")
@click.option("--export-format", type=click.Choice(["csv", "jsonl", "parquet"]), default=None)
@click.option(
    "--wechat-env",
    "wechat_envs",
    multiple=True,
    help="A WeChat cloud environment id of the project (repeat for several; replaces them).",
)
@click.option("--no-wechat-envs", is_flag=True, help="Remove the project's WeChat env ids.")
@click.option(
    "--login-user-key",
    default=None,
    help="The user property exported as GrowingIO's loginUserId ('' for our user id).",
)
@client_options
def project_set(
    ref: str,
    strict: bool | None,
    export_format: str | None,
    wechat_envs: tuple[str, ...],
    no_wechat_envs: bool,
    login_user_key: str | None,
    url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Change a project's settings."""
    body: dict[str, Any] = {}
    if strict is not None:
        body["strict_schema"] = strict
    if export_format is not None:
        body["export_format"] = export_format
    if wechat_envs or no_wechat_envs:
        body["wechat_envs"] = list(wechat_envs)
    if login_user_key is not None:
        body["login_user_key"] = login_user_key
    emit(Client(url, data_dir).call("PATCH", f"/projects/{_q(ref)}", json=body), as_json)


@main.group()
def collection() -> None:
    """Collections: WeChat cloud database collections and Marketo custom objects."""


@collection.command("declare")
@click.option("--project", "ref", required=True, help="Project name, key or id.")
@click.option("--field", "fields", multiple=True, help="NAME:TYPE of a field (repeatable).")
@click.option(
    "--dedupe",
    "dedupe",
    multiple=True,
    help="A field whose values identify a record (Marketo custom objects; repeatable).",
)
@click.argument("name")
@client_options
def collection_declare(
    ref: str,
    fields: tuple[str, ...],
    dedupe: tuple[str, ...],
    name: str,
    url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Declare collection NAME: its fields' types and its dedupe fields."""
    types: dict[str, str] = {}
    for spec in fields:
        field, sep, ftype = spec.rpartition(":")
        if not sep or not field:
            raise click.BadParameter(f"{spec!r}: expected NAME:TYPE", param_hint="--field")
        types[field] = ftype
    body: dict[str, Any] = {"fields": types}
    if dedupe:
        body["dedupe_fields"] = list(dedupe)
    path = f"/projects/{_q(ref)}/collections/{_q(name)}"
    emit(Client(url, data_dir).call("PUT", path, json=body), as_json)


@project.command("list")
@client_options
def project_list(url: str | None, data_dir: Path | None, as_json: bool) -> None:
    """List projects."""
    emit(Client(url, data_dir).call("GET", "/projects"), as_json)


@project.command("stats")
@click.option("--project", "ref", required=True, help="Project name, key or id.")
@client_options
def project_stats(ref: str, url: str | None, data_dir: Path | None, as_json: bool) -> None:
    """Counts of profiles and events, and records waiting to be flushed."""
    emit(Client(url, data_dir).call("GET", f"/projects/{_q(ref)}/stats"), as_json)


@project.command("rotate")
@click.option("--project", "ref", required=True, help="Project name, key or id.")
@client_options
def project_rotate(ref: str, url: str | None, data_dir: Path | None, as_json: bool) -> None:
    """Revoke a project's credentials and issue new ones."""
    emit(Client(url, data_dir).call("POST", f"/projects/{_q(ref)}/credentials/rotate"), as_json)


@main.group()
def property() -> None:
    """Properties of a project's user and event tables."""


@property.command("add")
@click.option("--project", "ref", required=True)
@click.option("--table", type=click.Choice(["user", "event"]), required=True)
@click.option("--identity", is_flag=True, help="Make this user property an identity key.")
@click.argument("name")
@click.argument("type", type=click.Choice(["string", "number", "bool", "datetime", "list"]))
@client_options
def property_add(
    ref: str,
    table: str,
    identity: bool,
    name: str,
    type: str,
    url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Add a property NAME of TYPE."""
    body = {"table": table, "name": name, "type": type, "is_identity": identity}
    emit(Client(url, data_dir).call("POST", f"/projects/{_q(ref)}/properties", json=body), as_json)


@property.command("list")
@click.option("--project", "ref", required=True)
@click.option("--table", type=click.Choice(["user", "event"]), default=None)
@client_options
def property_list(
    ref: str, table: str | None, url: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """List properties."""
    params = {"table": table} if table else {}
    emit(
        Client(url, data_dir).call("GET", f"/projects/{_q(ref)}/properties", params=params), as_json
    )


@main.group("identity-keys")
def identity_keys() -> None:
    """The user properties that identify a person."""


@identity_keys.command("set")
@click.option("--project", "ref", required=True)
@click.argument("keys", nargs=-1, required=True)
@client_options
def identity_keys_set(
    ref: str, keys: tuple[str, ...], url: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Make KEYS the project's identity keys."""
    emit(
        Client(url, data_dir).call(
            "PUT", f"/projects/{_q(ref)}/identity-keys", json={"keys": list(keys)}
        ),
        as_json,
    )


@main.group("td-app")
def td_app() -> None:
    """ThinkingData app ids: what ThinkingData's SDKs send as appid names the project."""


@td_app.command("add")
@click.option("--project", "ref", required=True)
@click.argument("app_id", required=False)
@client_options
def td_app_add(
    ref: str, app_id: str | None, url: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Give the project APP_ID (or a new random one) as a ThinkingData app id."""
    body = {"app_id": app_id} if app_id else {}
    emit(
        Client(url, data_dir).call("POST", f"/projects/{_q(ref)}/thinkingdata/app-ids", json=body),
        as_json,
    )


@td_app.command("list")
@click.option("--project", "ref", required=True)
@client_options
def td_app_list(ref: str, url: str | None, data_dir: Path | None, as_json: bool) -> None:
    """The project's ThinkingData app ids."""
    emit(Client(url, data_dir).call("GET", f"/projects/{_q(ref)}/thinkingdata/app-ids"), as_json)


@td_app.command("remove")
@click.option("--project", "ref", required=True)
@click.argument("app_id")
@client_options
def td_app_remove(
    ref: str, app_id: str, url: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Take APP_ID away from the project: the SDKs sending it are refused from then on."""
    path = f"/projects/{_q(ref)}/thinkingdata/app-ids/{_q(app_id)}"
    emit(Client(url, data_dir).call("DELETE", path), as_json)


@main.group()
def profile() -> None:
    """Customer profiles."""


@profile.command("show")
@click.option("--project", "ref", required=True)
@click.option("--key", default=None, help="Identity key, e.g. mobile.")
@click.option("--value", default=None, help="Its value.")
@click.option("--user-id", type=int, default=None)
@client_options
def profile_show(
    ref: str,
    key: str | None,
    value: str | None,
    user_id: int | None,
    url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Show a profile: its properties, identities, event count and latest events."""
    if user_id is None and (key is None or value is None):
        fail("validation_failed", "give --key and --value, or --user-id", "key")
    params: dict[str, Any] = (
        {"user_id": user_id} if user_id is not None else {"key": key, "value": value}
    )
    emit(Client(url, data_dir).call("GET", f"/projects/{_q(ref)}/profiles", params=params), as_json)


@main.group()
def segment() -> None:
    """Segments (clusters) and tags."""


@segment.command("list")
@click.option("--project", "ref", required=True)
@client_options
def segment_list(ref: str, url: str | None, data_dir: Path | None, as_json: bool) -> None:
    """The project's segments and tags, newest first."""
    emit(Client(url, data_dir).call("GET", f"/projects/{_q(ref)}/segments"), as_json)


@segment.command("show")
@click.option("--project", "ref", required=True)
@click.argument("name")
@client_options
def segment_show(
    ref: str, name: str, url: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """A segment: its definition and the state of its last refresh."""
    path = f"/projects/{_q(ref)}/segments/{_q(name)}"
    emit(Client(url, data_dir).call("GET", path), as_json)


@segment.command("refresh")
@click.option("--project", "ref", required=True)
@click.argument("name")
@client_options
def segment_refresh(
    ref: str, name: str, url: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """Queue a refresh of a segment."""
    path = f"/projects/{_q(ref)}/segments/{_q(name)}/refresh"
    emit(Client(url, data_dir).call("POST", path), as_json)


@segment.command("members")
@click.option("--project", "ref", required=True)
@click.argument("name")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--after", type=int, default=0, help="Page after this user id.")
@click.option("--csv", "as_csv", is_flag=True, help="Every member, as CSV on stdout.")
@client_options
def segment_members(
    ref: str,
    name: str,
    limit: int,
    after: int,
    as_csv: bool,
    url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """A page of a segment's members (with their tag value), or all of them with --csv."""
    client = Client(url, data_dir)
    path = f"/projects/{_q(ref)}/segments/{_q(name)}/members"
    if as_csv:
        try:
            with httpx.stream(
                "GET", client.url + "/admin/v1" + path + ".csv", headers=client.headers, timeout=600
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    err = resp.json().get("error", {})
                    fail(err.get("code", "error"), err.get("message", resp.text))
                for chunk in resp.iter_bytes():
                    sys.stdout.buffer.write(chunk)
        except httpx.HTTPError as exc:
            fail("unavailable", f"cannot reach the server at {client.url}: {exc}")
        return
    emit(client.call("GET", path, params={"limit": limit, "after": after}), as_json)


@segment.command("preview")
@click.option("--project", "ref", required=True)
@click.argument("definition", type=click.File("r"))
@client_options
def segment_preview(
    ref: str, definition: Any, url: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """How many users a definition holds now, without saving it. DEFINITION is a JSON file
    with ``qp`` (a cluster), ``tagQp`` (a tag) or ``sql``, and optionally the ``kind`` of
    segment (such as ``tag_sql``); ``-`` reads stdin."""
    try:
        body = orjson.loads(definition.read())
    except orjson.JSONDecodeError as exc:
        fail("invalid_json", f"definition: not valid JSON ({exc})", "definition")
    path = f"/projects/{_q(ref)}/segments/preview"
    emit(Client(url, data_dir).call("POST", path, json=body), as_json)


@segment.command("of-user")
@click.option("--project", "ref", required=True)
@click.argument("user_id", type=int)
@client_options
def segment_of_user(
    ref: str, user_id: int, url: str | None, data_dir: Path | None, as_json: bool
) -> None:
    """The segments and tags one user is in now."""
    path = f"/projects/{_q(ref)}/users/{user_id}/segments"
    emit(Client(url, data_dir).call("GET", path), as_json)


@main.group("export")
def export_group() -> None:
    """Raw-data exports."""


@export_group.command("backfill")
@click.option("--project", "ref", required=True)
@click.option("--from", "from_", required=True, help="First day, YYYY-MM-DD (project-local).")
@click.option("--to", "to", required=True, help="Last day, YYYY-MM-DD (included).")
@click.option("--type", "export_type", type=click.Choice(["hour", "day"]), default=None)
@client_options
def export_backfill(
    ref: str,
    from_: str,
    to: str,
    export_type: str | None,
    url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Queue the missing (or failed) exports of the closed periods between two days, to be
    written by the server's export jobs; prints how many exports were queued."""
    body = {"from": from_, "to": to, "export_type": export_type}
    path = f"/projects/{_q(ref)}/exports/backfill"
    emit(Client(url, data_dir).call("POST", path, json=body, timeout=3600), as_json)


def _q(ref: str) -> str:
    from urllib.parse import quote

    return quote(ref, safe="")


# ---- imports -----------------------------------------------------------------------------
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".ssv": "ssv", ".jsonl": "jsonl", ".json": "json"}


class _Counting:
    """A file whose reads advance a progress bar (the upload's)."""

    def __init__(self, path: Path, bar: Any) -> None:
        self._f = path.open("rb")
        self._bar = bar

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self._bar.update(len(data))
        return data

    def close(self) -> None:
        self._f.close()


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--project", "ref", required=True, help="Project name, key or id.")
@click.option("--into", default="users", show_default=True, help="users or events.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "tsv", "ssv", "jsonl", "json"]),
    default=None,
    help="[from the file name's extension, else csv]",
)
@click.option("--mode", type=click.Choice(["upsert", "insert"]), default="upsert")
@click.option("--lookup-field", default="email", show_default=True, help="For --into users.")
@click.option("--charset", default=None, help="e.g. gbk [detected]")
@click.option("--stop-on-error", is_flag=True, help="Import nothing if any row is bad.")
@click.option("--wait", is_flag=True, help="Wait for the job, showing its progress.")
@client_options
def import_file(
    file: Path,
    ref: str,
    into: str,
    fmt: str | None,
    mode: str,
    lookup_field: str,
    charset: str | None,
    stop_on_error: bool,
    wait: bool,
    url: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Upload FILE and import it as a job; with --wait, follow it to the end."""
    client = Client(url, data_dir)
    fields = {
        "into": into,
        "format": fmt or _EXTENSIONS.get(file.suffix.lower(), "csv"),
        "mode": mode,
        "lookup_field": lookup_field,
        "stop_on_error": str(stop_on_error).lower(),
    }
    if charset:
        fields["charset"] = charset
    size = file.stat().st_size
    with click.progressbar(
        length=size, label="upload", file=sys.stderr, hidden=not sys.stderr.isatty()
    ) as bar:
        body = _Counting(file, bar)
        try:
            job = client.call(
                "POST",
                f"/projects/{_q(ref)}/imports",
                data=fields,
                files={"file": (file.name, body, "application/octet-stream")},
            )
        finally:
            body.close()
    if wait:
        job = _follow(client, ref, job)
    job["failures_file"] = (
        f"{client.url}/admin/v1/projects/{_q(ref)}/imports/{job['job_id']}/failures"
    )
    emit(job, as_json)
    if job["state"] == "failed":
        sys.exit(1)


def _follow(client: Client, ref: str, job: dict[str, Any]) -> dict[str, Any]:
    import time

    path = f"/projects/{_q(ref)}/imports/{job['job_id']}"
    with click.progressbar(
        length=1, label="import", file=sys.stderr, hidden=not sys.stderr.isatty()
    ) as bar:
        while job["state"] not in ("complete", "failed"):
            time.sleep(0.2)
            job = client.call("GET", path)
            bar.label = f"import: {job['rows_read']:,} rows read, {job['failed']:,} failed"
            bar.render_progress()
        bar.update(1)
    return job
