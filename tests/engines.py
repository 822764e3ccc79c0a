"""The scale-out engines the tests start on loopback, once per test process: S3 (moto's server
in a process of its own, objects in its memory) and, for the tests that ask for it, a
PostgreSQL cluster. Each test works in a bucket (or database) of its own."""

from __future__ import annotations

import atexit
import itertools
import os
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

from tests.liveserver import free_port

_lock = threading.Lock()
_moto: dict[str, Any] = {}
_buckets = itertools.count(1)

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
