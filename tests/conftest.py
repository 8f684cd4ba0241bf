"""Shared fixtures: spec files, the CLI as a subprocess, one real tiny sweep per session, and a
real multi-node Ray cluster on this machine (`RayNodes`).

The sweep (digits MLP, 2 widths x 2 learning rates, 1 seed; lr 1e6 diverges to NaN at epoch 1
for both widths) is run once and then re-run twice (plain, and --rerun-failed); each test reads
the snapshot it needs, so the session pays for two Ray start-ups, not one per test.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

TINY = {
    "name": "tiny",
    "experiment": "classify",
    "description": "4 digits MLPs, 2 of which diverge",
    "base": {"dataset": "digits", "model": "mlp", "n_train": 300, "epochs": 2},
    "grid": {"width": [8, 16], "lr": [0.1, 1.0e6]},
    "seeds": 1,
}


@pytest.fixture
def one_thread():
    """The machine is shared: one intra-op thread per test process, as trials use."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_spec(directory: Path, spec: dict | str, name: str = "spec.yaml") -> Path:
    path = Path(directory) / name
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    return path


def sam_lab(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """The installed `sam-lab` console script, as a user runs it."""
    script = Path(sys.executable).with_name("sam-lab")
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([str(script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def wait_for(condition, what: str, timeout: float = 240, every: float = 0.2):
    """Poll until condition() is truthy (returned); the machine is shared, so be generous."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, str]]:
    """{pid: (ppid, cmdline)} of every process visible in /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:  # gone meanwhile
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after "(comm)", which may hold spaces
            out[int(entry)] = (ppid, cmdline.decode(errors="replace"))
    return out


def descendants(pid: int, table: dict | None = None) -> list[int]:
    table = _processes() if table is None else table
    children = [p for p, (ppid, _) in table.items() if ppid == pid]
    return children + [d for c in children for d in descendants(c, table)]


class RayNodes:
    """A real Ray cluster on this machine, started the way users do: `ray start --head`, then
    `ray start --address` per extra node, each with 1 CPU and its own --temp-dir (so no other
    Ray user on this machine finds it, nor it theirs).

    Every process it starts carries a marker in its environment, and `stop` kills exactly the
    processes carrying it, by pid: never `ray stop`, which stops every Ray on the machine. Token
    auth is on with a token of its own, passed by environment (`env`) to anything that joins.
    """

    MARKER = "SAM_LAB_TEST_RAY_NODES"

    def __init__(self):
        self.marker = secrets.token_hex(8)
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
            "RAY_USAGE_STATS_ENABLED": "0", self.MARKER: self.marker}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dirs: dict[str, str] = {}

    def start(self, name: str, cpus: int = 1, gpus: int = 0):
        """Start node `name`: the head if it is the first one. Ray takes `gpus` on trust: a
        node without any still offers them to the scheduler (enough to test GPU shares)."""
        head = not self.dirs
        for attempt in (1, 2):  # once more on a shared machine: a port taken meanwhile, say
            # Short path: Ray's unix sockets live under it (108-byte limit).
            self.dirs[name] = tempfile.mkdtemp(prefix="sl-ray-", dir="/tmp")
            ray = Path(sys.executable).with_name("ray")
            args = [str(ray), "start", "--num-cpus", str(cpus), "--num-gpus", str(gpus),
                    "--temp-dir", self.dirs[name], "--disable-usage-stats"]
            if head:
                args += ["--head", "--port", str(self.port), "--include-dashboard", "false",
                         "--dashboard-port", str(free_port())]
            else:
                args += ["--address", self.address]
            done = subprocess.run(args, env=self.env, capture_output=True, text=True,
                                  timeout=300)
            if done.returncode == 0 or attempt == 2:
                break
            if head:  # nothing joined yet: start over on fresh ports
                self.stop()
                self.dirs.clear()
                self.port = free_port()
                self.address = f"127.0.0.1:{self.port}"
            else:
                shutil.rmtree(self.dirs.pop(name), ignore_errors=True)
        assert done.returncode == 0, f"ray start {name} failed:\n{done.stdout}{done.stderr}"
        return self.node_id(name)

    def _raylet(self, name: str) -> tuple[int, str]:
        for pid, (_, cmd) in _processes().items():
            if "raylet/raylet " in cmd and f"--temp_dir={self.dirs[name]} " in cmd + " ":
                return pid, cmd
        raise LookupError(f"no raylet for node {name}")

    def node_id(self, name: str) -> str:
        _, cmd = self._raylet(name)
        return next(a.split("=", 1)[1] for a in cmd.split() if a.startswith("--node_id="))

    def ours(self) -> set[int]:
        """Pids of every process carrying this cluster's marker, and of everything under them.
        (Ray's agents and workers rename themselves, which can overwrite what /proc shows of
        their environment: they are found as children of a marked raylet.)"""
        tag = f"{self.MARKER}={self.marker}".encode()
        table, pids = _processes(), set()
        for pid in table:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:  # another user's process, or gone
                continue
            if tag in env:
                pids |= {pid, *descendants(pid, table)}
        return pids

    def kill_node(self, name: str):
        """What a dead machine does: SIGKILL the node's raylet and everything under it."""
        table = _processes()
        raylet, _ = self._raylet(name)
        node = [p for p, (_, cmd) in table.items() if f"{self.dirs[name]}/" in cmd]
        for pid in {raylet, *node, *descendants(raylet, table)}:
            _kill(pid)

    def stop(self):
        for _ in range(3):  # a dying raylet may still spawn a worker: sweep again
            pids = self.ours()
            if not pids:
                break
            for pid in pids:
                _kill(pid)
            time.sleep(0.5)
        for d in self.dirs.values():
            shutil.rmtree(d, ignore_errors=True)


def _kill(pid: int):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def ray_nodes():
    """A 2-node cluster (head + worker, 1 CPU each), torn down even when the test fails."""
    nodes = RayNodes()
    try:
        nodes.start("head")
        nodes.start("worker")
        yield nodes
    finally:
        nodes.stop()


def _snapshot(results: Path) -> SimpleNamespace:
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return SimpleNamespace(trials=pd.read_parquet(results / "tiny" / "trials.parquet"),
                           runs=runs, client=client)


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    work = tmp_path_factory.mktemp("tiny")
    spec = write_spec(work, TINY, "tiny.yaml")
    results = work / "results"
    # 3 units per Tune run: the 4 trials run as two Tune runs in a row, as a sweep of more than
    # launcher.units_per_fit() units does
    first = sam_lab("sweep", "tiny.yaml", "--results", "results", cwd=work,
                    env={**os.environ, "SAM_LAB_UNITS_PER_FIT": "3"})
    assert first.returncode == 0, first.stdout + first.stderr
    after_first = _snapshot(results)
    rerun = sam_lab("sweep", "tiny.yaml", "--results", "results", cwd=work)
    after_rerun = _snapshot(results)
    rerun_failed = sam_lab("sweep", "tiny.yaml", "--results", "results", "--rerun-failed",
                           cwd=work)
    after_rerun_failed = _snapshot(results)
    return SimpleNamespace(work=work, spec=spec, results=results, sweep_dir=results / "tiny",
                           first=first, after_first=after_first, rerun=rerun,
                           after_rerun=after_rerun, rerun_failed=rerun_failed,
                           after_rerun_failed=after_rerun_failed)
