"""Checks of the places a command is about to use, run before any work or write.

A bad flag or path is bad input (`InputError`, exit 2). A place that cannot be used as it is,
such as a full or read-only disk, a locked or corrupt mlflow.db or a busy port, is an
environment fault (`EnvironmentFault`, exit 3): the input was fine, and the same command works
once the environment is fixed. Either way the user sees one line that names the flag or the file.
"""

from __future__ import annotations

import errno
import os
import socket
import sqlite3
from pathlib import Path
from urllib.parse import urlparse

from sweeps.spec import InputError

ENV_EXIT = 3
MIN_FREE_BYTES = 64 * 2**20  # an empty mlflow.db alone is ~1 MB; a sweep's tables need headroom
# MLflow 3 stores; a plain folder or file: URI is a file store, which MLflow 3 refuses
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")
SQLITE_MAGIC = b"SQLite format 3\x00"
# OSError numbers that mean "the machine, not the input": shown as one line, exit 3
ENV_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO}


class EnvironmentFault(Exception):
    """The environment cannot be used as it is: exit 3 with str(e) as the one line shown."""


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def results_root(root: Path, flag: str = "--results") -> Path:
    """A results root a sweep can create and write, with room on its disk."""
    shown = f"{flag} {root}"
    text = str(root.absolute())
    bad = [c for c in "#?%" if c in text]
    if bad:  # SQLAlchemy would read them as URL syntax and put mlflow.db somewhere else
        raise InputError(f"{shown}: the path contains {' '.join(repr(c) for c in bad)}, which a "
                         "SQLite URI cannot hold; allowed: a folder path without # ? %")
    if root.exists() and not root.is_dir():
        raise InputError(f"{shown}: exists and is not a folder; allowed: a folder (created if "
                         "missing)")
    home = _existing_ancestor(root)
    if not home.is_dir():
        raise InputError(f"{shown}: {home} is a file; allowed: a folder path")
    writable(home, shown)
    free = os.statvfs(home).f_bavail * os.statvfs(home).f_frsize
    if free < MIN_FREE_BYTES:
        raise EnvironmentFault(f"{shown}: only {free / 2**20:.1f} MiB free on its disk "
                               f"({home}); sam-lab needs at least {MIN_FREE_BYTES // 2**20} MiB")
    return root


def writable(folder: Path, shown: str):
    """Create and remove a probe file: os.access says yes to root on a read-only mount."""
    probe = folder / f".sam-lab-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise EnvironmentFault(f"{shown}: cannot write in {folder} ({e.strerror})") from None


def tracking_uri(uri: str) -> str:
    """A tracking URI MLflow 3 accepts, refused here (exit 2) rather than deep inside MLflow."""
    scheme = urlparse(uri).scheme
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        raise InputError(f"--tracking-uri {uri}: a folder or file: URI is a file store, which "
                         "MLflow 3 refuses; allowed: sqlite:///PATH/mlflow.db or "
                         "http://HOST:PORT of an mlflow server")
    if scheme.split("+")[0] not in TRACKING_SCHEMES:  # postgresql+psycopg2 is fine
        raise InputError(f"--tracking-uri {uri}: unknown scheme {scheme!r}; allowed: "
                         f"{', '.join(TRACKING_SCHEMES)}")
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The file behind a sqlite:/// URI (None for any other store)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):])  # sqlite:////abs/path -> /abs/path


def sqlite_store(uri: str):
    """An existing mlflow.db must be an SQLite file that nobody holds a write lock on.

    MLflow would retry a locked database for minutes and print a SQLAlchemy traceback for a
    garbage one; both are one line here, before any trial runs."""
    path = sqlite_path(uri)
    if path is None or not path.exists():
        return
    if not path.is_file():
        raise EnvironmentFault(f"{path}: not a file; the MLflow store must be an SQLite file")
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head and head != SQLITE_MAGIC:
        raise EnvironmentFault(f"{path}: not an SQLite database (corrupt or another file); move "
                               "it aside to start a new store, or pass --tracking-uri")
    try:
        con = sqlite3.connect(path, timeout=2.0)
        try:
            con.execute("BEGIN IMMEDIATE")  # takes the write lock, or waits 2 s and fails
            con.rollback()
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        reason = "locked by another process" if "locked" in str(e) else str(e)
        raise EnvironmentFault(f"{path}: {reason}; stop the other writer (a sweep or "
                               "`mlflow ui` of another version?) and rerun") from None
    except sqlite3.DatabaseError as e:
        raise EnvironmentFault(f"{path}: unreadable SQLite database ({e}); move it aside to "
                               "start a new store, or pass --tracking-uri") from None


def port(host: str, number: int) -> int:
    """A port the dashboard can listen on: valid, and free now."""
    if not 1 <= number <= 65535:
        raise InputError(f"--port {number}: allowed: 1..65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, number))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise EnvironmentFault(f"--port {number}: already in use on {host}; pick another "
                                       "with --port") from None
            raise InputError(f"--host {host}: cannot listen there ({e.strerror})") from None
    return number


def out_dir(path: Path, flag: str = "--out") -> Path:
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path}: exists and is not a folder; allowed: a folder "
                         "(created if missing)")
    home = _existing_ancestor(path)
    if not home.is_dir():
        raise InputError(f"{flag} {path}: {home} is a file; allowed: a folder path")
    writable(home, f"{flag} {path}")
    return path


def storage(value: str | None) -> str | None:
    """Tune storage: a URI (s3://, gs://, ...) as given; a local path made absolute, since Tune
    takes only URIs or absolute paths and each trial runs in a folder of its own."""
    if value is None or "://" in value:
        return value
    path = Path(value).expanduser().absolute()
    home = _existing_ancestor(path)
    if not home.is_dir():
        raise InputError(f"--storage {value}: {home} is a file; allowed: a folder or a URI")
    writable(home, f"--storage {value}")
    return str(path)


def describe_os_error(e: OSError) -> str | None:
    """One line for an OSError that is the environment's fault (full or read-only disk, no
    permission), or None for one that is a bug."""
    if e.errno not in ENV_ERRNOS:
        return None
    where = e.filename or "a file"
    return f"{where}: {e.strerror}"


def units_per_fit() -> int:
    """Units per Tune run. Tune keeps every trial it made, and a JSON state of each, for the
    whole run, so a sweep beyond this many units runs as several Tune runs in a row, at the cost
    of one drain of the cluster between runs. SAM_LAB_UNITS_PER_FIT overrides it."""
    value = os.environ.get("SAM_LAB_UNITS_PER_FIT", "10000")
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"SAM_LAB_UNITS_PER_FIT: got {value!r}; allowed: an int >= 1")
    return int(value)
