"""A local sweep exposes nothing: every socket that sam-lab's driver, its Ray (GCS, raylet,
agents) and its trial workers listen on is on the loopback interface."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest
from conftest import TINY, descendants, wait_for, write_spec
from test_faults import Cli


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None
                              and ip.ipv4_mapped.is_loopback)


def listening(pids) -> set[tuple[str, str]]:
    """(process name, address) of every TCP socket these processes listen on, from /proc."""
    owner = {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    owner[target[8:-1]] = name
        except OSError:  # gone meanwhile
            continue
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in owner:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((owner[fields[9]], socket.inet_ntop(family, words)))
    return found


@pytest.mark.slow
def test_nothing_a_local_sweep_starts_listens_beyond_loopback(tmp_path):
    spec = {**TINY, "name": "exposure", "grid": {"width": [8, 16]}, "base": {
        **TINY["base"], "epochs": 200}}
    write_spec(tmp_path, spec, "exposure.yaml")
    sweep = Cli(tmp_path, "exposure.yaml", "--results", "results")
    wait_for(lambda: sweep.trial_actors() or sweep.proc.poll() is not None, "a trial to start")
    assert sweep.proc.poll() is None, sweep.out.read_text()
    ours = {sweep.proc.pid, *descendants(sweep.proc.pid)}
    sockets = listening(ours)
    names = {name for name, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the check saw Ray's own servers
    assert all(_loopback(ip) for _, ip in sockets), sorted(sockets)
    done = sweep.wait()
    assert done.returncode == 0, done.stdout + done.stderr
