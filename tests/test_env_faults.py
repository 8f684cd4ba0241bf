"""Environment and results-folder faults at the CLI: every one is a single line on stderr that
names the file, flag or path, exit 3 (the environment: a full or read-only disk, a locked or
corrupt store, a corrupt results file, a busy port) or 2 (input), nothing written and no earlier
result touched, and never a Ray start.

The cases run in one subprocess (`HARNESS`, as in test_bad_input.py), each in its own copy of
the session's tiny sweep (tests/conftest.py), which the harness hashes before and after. A few
cases need a real small or read-only file system (tmpfs, as root) and are skipped without one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY, sam_lab

from sweeps import artifacts

HARNESS = r"""
import contextlib, hashlib, io, json, os, sys

class NoRay:  # a fault must be refused before Ray is even imported
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("ray imported while handling a fault")

sys.meta_path.insert(0, NoRay())
from sweeps import cli

def state(root):
    out = {}
    for d, subdirs, names in os.walk(root):
        for n in subdirs:
            out[os.path.relpath(os.path.join(d, n), root)] = "dir"
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = hashlib.sha1(open(p, "rb").read()).hexdigest()
    return out

out = {}
for case in json.load(sys.stdin):
    os.chdir(case["cwd"])
    before, err, std = state("."), io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        try:
            code = cli.main(case["argv"])
        except SystemExit as e:
            code = e.code
        except BaseException as e:
            code = f"crash: {type(e).__name__}: {e}"
    after = state(".")
    out[case["id"]] = {"code": code, "stderr": err.getvalue(), "stdout": std.getvalue(),
                       "changed": sorted(k for k in before.keys() | after.keys()
                                         if before.get(k) != after.get(k)),
                       "ray": "ray" in sys.modules}
print(json.dumps(out))
"""

FRESH = {**TINY, "name": "fresh"}  # not run yet: a sweep of it would start Ray


def garbage_db(cwd):
    (cwd / "results" / "mlflow.db").write_bytes(b"this is not a database\n" * 50)


def truncate(path: Path, size: int = 100):
    with open(path, "r+b") as f:
        f.truncate(size)


def second_sweep(cwd) -> Path:
    """A second, healthy sweep beside `tiny` (what `status --results` must still list)."""
    other = cwd / "results" / "other"
    shutil.copytree(cwd / "results" / "tiny", other)
    record = yaml.safe_load((other / "spec.yaml").read_text())
    (other / "spec.yaml").write_text(yaml.safe_dump({**record, "name": "other"}, sort_keys=False))
    return other


def truncated_trials(cwd):
    second_sweep(cwd)
    truncate(cwd / "results" / "tiny" / "trials.parquet")


def truncated_part(cwd):
    parts = cwd / "results" / "tiny" / "trials.parts"
    parts.mkdir(exist_ok=True)
    shutil.copy(cwd / "results" / "tiny" / "trials.parquet", parts / "0001.parquet")
    truncate(parts / "0001.parquet")


def corrupt_spec(cwd):
    second_sweep(cwd)
    (cwd / "results" / "tiny" / "spec.yaml").write_text("name: [tiny\n")


def truncated_curve(cwd):
    truncate(sorted((cwd / "results" / "tiny" / "curves").glob("*.parquet"))[0], 50)


def other_family(cwd):
    (cwd / "grok.yaml").write_text(yaml.safe_dump(
        {"name": "tiny", "experiment": "grokking", "base": {}, "grid": {"lr": [1e-3]},
         "seeds": 1}))


def long_name(cwd):
    (cwd / "long.yaml").write_text(yaml.safe_dump({**TINY, "name": "x" * 300}))


def reserved_name(cwd):
    (cwd / "reserved.yaml").write_text(yaml.safe_dump({**TINY, "name": "mlflow.db"}))


def nothing(cwd):
    pass


# id: (setup(cwd), argv, exit code, fragments of the one line). `{cwd}` in argv is the case's
# folder; `{mount:NAME}` a tmpfs mounted there (NAME: ro or full); `{port:busy}` a port the test
# listens on. Exit 3: the environment; exit 2: input.
CASES = {
    "garbage mlflow.db": (garbage_db, ["sweep", "fresh.yaml"], 3,
                          ["results/mlflow.db: not an SQLite database"]),
    "garbage mlflow.db, sync": (garbage_db, ["sync", "results/tiny"], 3,
                                ["results/mlflow.db: not an SQLite database"]),
    "garbage mlflow.db, ui": (garbage_db, ["ui", "--port", "{port:free}"], 3,
                              ["results/mlflow.db: not an SQLite database"]),
    "locked mlflow.db": (nothing, ["sweep", "fresh.yaml"], 3,
                         ["results/mlflow.db: locked by another process"]),
    "read-only results root": (nothing, ["sweep", "fresh.yaml", "--results", "{mount:ro}/r"], 3,
                               ["--results ", "cannot write in", "Read-only file system"]),
    "full disk": (nothing, ["sweep", "fresh.yaml", "--results", "{mount:full}/r"], 3,
                  ["--results ", "MiB free on its disk"]),
    "plot onto a full disk": (nothing, ["plot", "results/tiny", "--out", "{mount:full}/figs"], 3,
                              ["No space left on device"]),
    "--tracking-uri bogus://x": (nothing, ["sweep", "fresh.yaml", "--tracking-uri", "bogus://x"],
                                 2, ["--tracking-uri bogus://x: unknown scheme 'bogus'"]),
    "--tracking-uri a plain folder": (nothing, ["sweep", "fresh.yaml", "--tracking-uri", "store"],
                                      2, ["--tracking-uri store: a folder or file: URI"]),
    "--storage under a file": (nothing, ["sweep", "fresh.yaml", "--storage", "fresh.yaml/tune"],
                               2, ["--storage fresh.yaml/tune:", "is a file"]),
    "300-character name": (long_name, ["sweep", "long.yaml"], 2,
                           ["long.yaml: name: got 'xxxxxxxx", "at most"]),
    "reserved name mlflow.db": (reserved_name, ["sweep", "reserved.yaml"], 2,
                                ["name: 'mlflow.db' is reserved"]),
    "name used by another family": (other_family, ["sweep", "grok.yaml"], 2,
                                    ["name: 'tiny' already holds a sweep of experiment classify"]),
    "# in --results": (nothing, ["sweep", "fresh.yaml", "--results", "a#b"], 2,
                       ["--results a#b: the path contains '#'"]),
    "? in --results": (nothing, ["sweep", "fresh.yaml", "--results", "a?b"], 2,
                       ["--results a?b: the path contains '?'"]),
    "truncated trials.parquet, status of all": (truncated_trials, ["status"], 3,
                                                ["results/tiny/trials.parquet: unreadable Parquet"]),
    "truncated trials.parquet, re-sweep": (truncated_trials, ["sweep", "tiny.yaml"], 3,
                                           ["results/tiny/trials.parquet: unreadable Parquet"]),
    "truncated part, status": (truncated_part, ["status", "results/tiny"], 3,
                               ["results/tiny/trials.parts/0001.parquet: unreadable Parquet"]),
    "corrupt spec.yaml, status of all": (corrupt_spec, ["status"], 3,
                                         ["results/tiny/spec.yaml: not valid YAML"]),
    "truncated curve file, plot": (truncated_curve, ["plot", "results/tiny"], 3,
                                   ["results/tiny/curves/", ".parquet: unreadable Parquet"]),
    "plot --out a file": (nothing, ["plot", "results/tiny", "--out", "fresh.yaml"], 2,
                          ["--out fresh.yaml: exists and is not a folder"]),
    "ui on an invalid port": (nothing, ["ui", "--port", "99999"], 2,
                              ["--port 99999: allowed: 1..65535"]),
    "ui on a busy port": (nothing, ["ui", "--port", "{port:busy}"], 3,
                          ["already in use on 127.0.0.1"]),
}
# `status` of every sweep still lists the healthy one
LISTED = {"truncated trials.parquet, status of all", "corrupt spec.yaml, status of all"}


def tmpfs(path: Path, options: str) -> bool:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def fill(path: Path):
    """Fill a file system up to its last block (a file that gets ENOSPC, kept)."""
    with open(path / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


@pytest.fixture(scope="module")
def outcomes(tiny_sweep, tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    mounts, cases = {}, []
    for name, options in (("ro", "size=1m,ro"), ("full", "size=1m")):
        if tmpfs(base / name, options):
            mounts[name] = base / name
    if "full" in mounts:
        fill(mounts["full"])
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    ports = {"busy": busy.getsockname()[1], "free": free.getsockname()[1]}
    free.close()
    lock = None
    try:
        for case, (setup, argv, _, _) in CASES.items():
            needs = [m for m in ("ro", "full") if f"{{mount:{m}}}" in " ".join(argv)]
            if any(m not in mounts for m in needs):
                continue
            cwd = base / f"case{len(cases)}"
            shutil.copytree(tiny_sweep.results, cwd / "results", symlinks=True)
            artifacts.rebase(cwd / "results")  # the copy's own paths, before the snapshot
            (cwd / "fresh.yaml").write_text(yaml.safe_dump(FRESH, sort_keys=False))
            shutil.copy(tiny_sweep.spec, cwd / "tiny.yaml")
            setup(cwd)
            argv = [a.replace("{cwd}", str(cwd)).replace("{port:busy}", str(ports["busy"]))
                    .replace("{port:free}", str(ports["free"])) for a in argv]
            for m, path in mounts.items():
                argv = [a.replace(f"{{mount:{m}}}", str(path)) for a in argv]
            if case == "locked mlflow.db":  # held by this process while the harness runs
                lock = sqlite3.connect(cwd / "results" / "mlflow.db", isolation_level=None)
                lock.execute("BEGIN IMMEDIATE")
            cases.append({"id": case, "cwd": str(cwd), "argv": argv})
        done = subprocess.run([sys.executable, "-c", HARNESS], input=json.dumps(cases),
                              capture_output=True, text=True, timeout=300)
    finally:
        busy.close()
        if lock is not None:
            lock.close()
        for path in mounts.values():
            subprocess.run(["umount", str(path)], check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_every_fault_of_the_issue_has_a_case():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", list(CASES))
def test_fault_is_one_line_with_its_exit_code_and_touches_nothing(outcomes, case):
    if case not in outcomes:
        pytest.skip("needs a tmpfs mount (root)")
    got = outcomes[case]
    _, _, code, fragments = CASES[case]
    assert got["code"] == code, got
    lines = got["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].startswith("sam-lab: error: "), got["stderr"]
    assert "Traceback" not in got["stderr"]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert got["changed"] == [], f"files changed: {got['changed']}"
    assert not got["ray"], "a fault was found only after Ray was imported"
    if case in LISTED:
        assert got["stdout"].startswith("other: 2 ok, 2 failed, 0 pending"), got["stdout"]


def test_plot_on_a_copied_folder_writes_nothing_into_the_original(tiny_sweep, tmp_path):
    """Artifact paths follow the folder: the copy's figures go to the copy's mlartifacts."""
    original = tiny_sweep.results

    def digest(root: Path) -> dict:
        return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    before = digest(original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    done = sam_lab("plot", str(copy / "tiny"), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "logged to MLflow run" in done.stdout
    assert digest(original) == before
    logged = list((copy / "mlartifacts" / "tiny").rglob("figures/*.png"))
    assert logged, "figures not logged into the copy's artifacts"
    db = sqlite3.connect(copy / "mlflow.db")
    try:
        locations = [r[0] for r in db.execute("SELECT artifact_uri FROM runs")]
    finally:
        db.close()
    assert all(str(copy.resolve()) in loc for loc in locations if "mlartifacts" in loc)
    assert os.path.isdir(copy / "tiny" / "figures")
