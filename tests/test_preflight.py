"""Environment checks made before any work (sweeps/preflight.py): each fault is one exception
whose text names the flag or file. The CLI-level cases (exit codes, nothing written) are in
tests/test_env_faults.py."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from sweeps import preflight
from sweeps.preflight import EnvironmentFault
from sweeps.spec import InputError


def tmpfs(path: Path, size: str, read_only: bool = False):
    """A real small or read-only file system (the tests run as root, as CI does)."""
    path.mkdir()
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return path


@pytest.fixture
def mounts(tmp_path):
    made = []

    def mount(name, size="1m", read_only=False):
        made.append(tmpfs(tmp_path / name, size, read_only))
        return made[-1]

    yield mount
    for path in made:
        subprocess.run(["umount", str(path)], check=False)


def test_results_root_with_uri_characters_is_bad_input(tmp_path):
    for name in ("a#b", "a?b", "100%"):
        with pytest.raises(InputError, match=r"--results .*SQLite URI"):
            preflight.results_root(tmp_path / name)
    assert not any(tmp_path.iterdir())  # nothing created


def test_read_only_and_full_disks_are_environment_faults(mounts):
    with pytest.raises(EnvironmentFault, match=r"--results .*: cannot write in .*Read-only"):
        preflight.results_root(mounts("ro", read_only=True) / "results")
    with pytest.raises(EnvironmentFault, match=r"MiB free on its disk"):
        preflight.results_root(mounts("small", size="2m") / "results")
    roomy = mounts("big", size="128m") / "results"
    assert preflight.results_root(roomy) == roomy and not roomy.exists()  # checked, not made


def test_tracking_uris_mlflow_3_refuses_are_bad_input(tmp_path):
    for uri, what in (("bogus://x", "unknown scheme"), (str(tmp_path), "file store"),
                      ("file:///tmp/mlruns", "file store")):
        with pytest.raises(InputError, match=what):
            preflight.tracking_uri(uri)
    for uri in ("sqlite:////tmp/x/mlflow.db", "http://127.0.0.1:5000",
                "postgresql+psycopg2://u@h/db"):
        assert preflight.tracking_uri(uri) == uri


def test_garbage_and_locked_mlflow_db_are_named_environment_faults(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_text("not a database\n" * 10)
    with pytest.raises(EnvironmentFault, match=r"garbage.db: not an SQLite database"):
        preflight.sqlite_store(f"sqlite:///{garbage}")

    locked = tmp_path / "locked.db"
    holder = sqlite3.connect(locked)
    holder.execute("CREATE TABLE t (x)")
    holder.commit()
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    start = time.monotonic()
    with pytest.raises(EnvironmentFault, match=r"locked.db: locked by another process"):
        preflight.sqlite_store(f"sqlite:///{locked}")
    assert time.monotonic() - start < 10  # seconds, not MLflow's minutes of retries
    holder.rollback()
    preflight.sqlite_store(f"sqlite:///{locked}")  # free again: fine
    holder.close()
    preflight.sqlite_store(f"sqlite:///{tmp_path / 'missing.db'}")  # created later: fine


def test_ports_invalid_or_busy(tmp_path):
    with pytest.raises(InputError, match=r"--port 99999: allowed: 1\.\.65535"):
        preflight.port("127.0.0.1", 99999)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(EnvironmentFault, match=rf"--port {taken}: already in use"):
            preflight.port("127.0.0.1", taken)
    assert preflight.port("127.0.0.1", taken) == taken  # released


def test_out_dir_and_storage(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(InputError, match=r"--out .*afile: exists and is not a folder"):
        preflight.out_dir(afile)
    with pytest.raises(InputError, match=r"is a file"):
        preflight.out_dir(afile / "sub")
    assert preflight.storage("s3://bucket/x") == "s3://bucket/x"
    made = Path(preflight.storage("rel/store"))
    assert made.is_absolute() and made == Path.cwd() / "rel" / "store" and not made.exists()
