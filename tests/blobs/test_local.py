"""The local directory store: the data directory's layout, durability after a crash."""

from __future__ import annotations

import errno
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from opencdp.blobs.local import INCOMING, LocalBlobs


def test_blobs_keep_the_data_directory_layout(tmp_path: Path) -> None:
    # An upload and an export part where earlier versions put them: no migration needed.
    (tmp_path / "files" / "3").mkdir(parents=True)
    (tmp_path / "files" / "3" / "5.dat").write_bytes(b"an old upload")
    files = LocalBlobs(tmp_path / "files")
    assert files.read(3, "5.dat") == b"an old upload"
    files.put(3, "job-9-failures.csv", [b"a,b\n"])
    assert (tmp_path / "files" / "3" / "job-9-failures.csv").read_bytes() == b"a,b\n"
    exports = LocalBlobs(tmp_path / "exports")
    exports.put(4, "12/part0001.csv.gz", [b"gz"])
    assert (tmp_path / "exports" / "4" / "12" / "part0001.csv.gz").read_bytes() == b"gz"
    exports.delete_prefix(4, "12/")
    assert not (tmp_path / "exports" / "4" / "12").exists()  # no empty folder left behind
    assert list((tmp_path / "exports" / "4").iterdir()) == []


def test_a_write_cut_by_a_crash_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    LocalBlobs(root).put(1, "kept", [b"kept"])
    crash = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from opencdp.blobs.local import LocalBlobs\n"
        "w = LocalBlobs(Path(sys.argv[1])).create(1, 'half')\n"
        "w.write(b'x' * 100000)\n"
        "w.flush()\n"
        "os._exit(9)\n"
    )
    done = subprocess.run([sys.executable, "-c", crash, str(root)], check=False)
    assert done.returncode == 9
    assert len(list((root / INCOMING).iterdir())) == 1  # the temporary file it left
    store = LocalBlobs(root)  # the next start
    assert [b.key for b in store.list(1)] == ["kept"] and store.stat(1, "half") is None
    assert list((root / INCOMING).iterdir()) == []


def test_a_write_in_progress_is_not_cleaned_by_another_store(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    writer = LocalBlobs(root).create(1, "slow")
    writer.write(b"part")
    LocalBlobs(root)  # another process opening the directory meanwhile
    writer.write(b" two")
    writer.commit()
    assert LocalBlobs(root).read(1, "slow") == b"part two"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs: a disk that fills up for real (mounting needs root, as in CI)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_fails_the_write_and_leaves_nothing(small_disk: Path) -> None:
    store = LocalBlobs(small_disk / "blobs")
    store.put(1, "small", [b"kept"])
    with pytest.raises(OSError) as failed:
        store.put(1, "big", (b"x" * (1 << 20) for _ in range(4)))
    assert failed.value.errno == errno.ENOSPC
    assert store.stat(1, "big") is None and [b.key for b in store.list(1)] == ["small"]
    assert list((small_disk / "blobs" / INCOMING).iterdir()) == []  # its space is back
    with pytest.raises(OSError):
        store.append(1, "log", b"y" * (4 << 20), 0)
    store.append(1, "log", b"", 0)  # cut back to what was committed: room again
    store.put(1, "after", [b"z" * (512 << 10)])  # without a restart
    assert store.size(1, "after") == 512 << 10
