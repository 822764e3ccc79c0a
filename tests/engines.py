"""The scale-out engines the tests start on loopback, once per test process: S3 (moto's server
in a process of its own, objects in its memory) and, for the tests that ask for it, a
PostgreSQL cluster. Each test works in a bucket (or database) of its own."""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.liveserver import free_port

_lock = threading.Lock()
_moto: dict[str, Any] = {}
_buckets = itertools.count(1)
_pg: dict[str, Any] = {}
_databases = itertools.count(1)

# moto accepts any credentials; boto3 wants some (and a region) to sign with.
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "opencdp-test",
    "AWS_SECRET_ACCESS_KEY": "opencdp-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3_endpoint() -> str:
    """The URL of this process's moto server, started on first use."""
    with _lock:
        if "url" not in _moto:
            for name, value in S3_ENV.items():
                os.environ.setdefault(name, value)
            port = free_port()
            # (a process of its own: its memory is not the tests', nor its GIL)
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            atexit.register(_stop, proc)
            url = f"http://127.0.0.1:{port}"
            _wait_for(url, proc)
            _moto.update(url=url, proc=proc)
        return str(_moto["url"])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def _wait_for(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):  # (a start-up guard, not a performance limit)
        if proc.poll() is not None:
            raise RuntimeError(f"moto's server exited at start ({proc.returncode})")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("moto's server did not start")


def new_bucket() -> str:
    """A fresh, empty bucket on the moto server: its name."""
    from opencdp.blobs.s3 import client

    name = f"opencdp-test-{os.getpid()}-{next(_buckets)}"
    client(s3_endpoint()).create_bucket(Bucket=name)
    return name


# ---- PostgreSQL ------------------------------------------------------------------------------


def pg_bin(name: str) -> str:
    """A PostgreSQL program: on the PATH, or where Debian's packages put it."""
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK):
            return path
    raise RuntimeError(f"PostgreSQL's {name} is not installed (see .ci/run)")


def _as_postgres(*argv: str) -> None:
    """Run a PostgreSQL program as the ``postgres`` user (initdb refuses root)."""
    command = " ".join(shlex.quote(a) for a in argv)
    if os.geteuid() == 0:
        subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", command], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    else:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


class PostgresCluster:
    """A PostgreSQL cluster of the tests: a fresh data directory run as the ``postgres`` user on
    a free loopback port, with fsync and synchronous commit off (test speed only) unless
    ``durable``. :meth:`stop` (immediate: a crash) and :meth:`start` take it away and bring it
    back on the same port; only a durable cluster keeps every commit across that."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        self.folder = Path(tempfile.mkdtemp(prefix="opencdp-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self.data, self.port = self.folder / "data", free_port()
        _as_postgres(pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                     "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")  # fmt: skip
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.start()
        atexit.register(self.remove)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        options += " -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        _as_postgres(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"),
                     "-w", "-o", options, "start")  # fmt: skip

    def stop(self) -> None:
        _as_postgres(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        if not self.folder.exists():
            return
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def new_database(self) -> str:
        """A fresh, empty database on the cluster: its SQLAlchemy URL."""
        import sqlalchemy as sa

        name = f"t_{os.getpid()}_{next(_databases)}"
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url.rsplit("/", 1)[0] + "/" + name


def postgres_url() -> str:
    """The URL of this process's PostgreSQL cluster (its ``postgres`` database), started on
    first use, stopped and deleted when the process exits."""
    return _cluster().url


def _cluster() -> PostgresCluster:
    with _lock:
        if "cluster" not in _pg:
            _pg["cluster"] = PostgresCluster()
        cluster: PostgresCluster = _pg["cluster"]
        return cluster


def new_database() -> str:
    """A fresh, empty database on the tests' cluster: its SQLAlchemy URL."""
    return _cluster().new_database()


def shared_deployment(folder: Path, **more: Any) -> dict[str, Any]:
    """The settings the processes of one deployment share, for runtimes in one test process:
    a fresh PostgreSQL database holding both the metadata and the analytic store, the admin
    token; no job workers. (``folder``: where a test keeps files of its own.)"""
    database = new_database()
    return {
        "meta_url": database,
        "store_url": database,
        "admin_token": "adm_shared_" + "x" * 24,
        "job_workers": 0,
        **more,
    }
