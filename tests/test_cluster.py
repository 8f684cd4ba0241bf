"""cluster.yaml and cluster-onprem.yaml, checked offline the way `ray up` checks them, and the
exposure rules: no port open to the world but SSH, dashboards and MLflow on 127.0.0.1, and
checkpoints loaded with weights_only=True.

`ray up` runs prepare_config (merge the provider's defaults) and validate_config (Ray's JSON
schema, ray/autoscaler/ray-schema.json) before it talks to the cloud; both are local code. The
AWS steps after them (resource autodetection, security group, IAM, AMI) need boto3 and
credentials and are not run here. The test pins the Ray version whose schema and defaults it read.
"""

from __future__ import annotations

import ast
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import ray
import yaml
from conftest import free_port, wait_for
from ray.autoscaler._private.util import prepare_config, validate_config

from sweeps.provenance import VERSION_FILE

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["cluster.yaml", "cluster-onprem.yaml"]
WORLD = {"0.0.0.0/0", "::/0"}


def pin(package: str) -> str:
    text = (ROOT / "constraints.txt").read_text()
    return re.search(rf"^{package}==(\S+)$", text, re.M).group(1)


@pytest.fixture
def offline(monkeypatch):
    """No network: any connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access while validating: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)


def prepared(name: str) -> dict:
    with open(ROOT / name) as f:
        config = prepare_config(yaml.safe_load(f))
    validate_config(config)  # raises on any schema violation or unknown key
    return config


def commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    return [c for k in keys for c in config.get(k, [])]


def test_ray_is_the_version_whose_schema_and_defaults_these_tests_read():
    assert ray.__version__ == pin("ray")


@pytest.mark.parametrize("name", CONFIGS)
def test_config_passes_rays_own_validation_offline(name, offline):
    config = prepared(name)
    assert config["cluster_name"].startswith("sam-lab")
    for remote, local in config["file_mounts"].items():  # relative to the repo root
        written = Path(local).name == VERSION_FILE  # by `python -m sweeps.provenance --write`
        assert written or (ROOT / local).exists(), f"file_mounts {remote}: {local} does not exist"
    mounted = {Path(local).as_posix().lstrip("./") for local in config["file_mounts"].values()}
    assert {"pyproject.toml", "README.md", "constraints.txt", "sam_lab", "sweeps",
            "analysis"} <= mounted  # what `pip install -e .` needs


def test_validation_rejects_what_ray_up_would_reject(offline):
    with open(ROOT / "cluster.yaml") as f:
        raw = yaml.safe_load(f)
    raw["available_node_types"]["gpu"]["min_wokers"] = 0  # a typo
    with pytest.raises(Exception, match="min_wokers"):
        validate_config(prepare_config(raw))


def test_aws_cluster_has_a_cpu_head_and_gpu_spot_workers_from_zero():
    config = prepared("cluster.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["max_workers"] == 0  # the driver only
    (gpu,) = [t for name, t in types.items() if name != config["head_node_type"]]
    assert gpu["resources"]["GPU"] >= 1 and gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert gpu["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert config["provider"]["type"] == "aws"


def test_aws_nodes_run_the_pinned_ray_image_on_a_current_host_ami(offline):
    """The image is Ray's own at the pinned version and the Python the project supports; the
    host AMI is never Ray's `latest_dlami` (an Ubuntu 18.04 DLAMI: Python 3.6, CUDA 11.2)."""
    config = prepared("cluster.yaml")
    docker = config["docker"]
    assert docker["image"] == f"rayproject/ray:{pin('ray')}-py311-gpu"
    assert docker["head_image"] == f"rayproject/ray:{pin('ray')}-py311-cpu"
    requires = re.search(r'requires-python\s*=\s*">=3\.(\d+)"',
                         (ROOT / "pyproject.toml").read_text())
    assert requires and int(requires.group(1)) <= 11
    for node_type in config["available_node_types"].values():
        image = node_type["node_config"]["ImageId"]
        assert image != "latest_dlami"
        assert image.startswith("ami-") or image == ("resolve:ssm:/aws/service/deeplearning/ami/"
                                                     "x86_64/base-oss-nvidia-driver-gpu-ubuntu-"
                                                     "22.04/latest/ami-id")


@pytest.mark.parametrize("name", CONFIGS)
def test_setup_installs_pinned_torch_then_the_synced_project(name):
    setup = prepared(name)["setup_commands"]
    torch_at = [i for i, c in enumerate(setup) if f"pip install -q torch=={pin('torch')}" in c]
    project_at = [i for i, c in enumerate(setup)
                  if "-c ~/sam-lab/constraints.txt -e ~/sam-lab" in c]
    assert torch_at and project_at and torch_at[0] < project_at[0]


@pytest.mark.parametrize("name", CONFIGS)
def test_nodes_get_the_recorded_code_version_and_setup_prints_it(name, offline):
    """No .git is synced, so the version trials record comes from the mounted CODE_VERSION,
    read by the project's root (where provenance looks) and shown in the set-up log."""
    config = prepared(name)
    assert config["file_mounts"].get(f"~/sam-lab/{VERSION_FILE}") == f"./{VERSION_FILE}"
    assert not any(Path(local).name == ".git" for local in config["file_mounts"].values())
    setup = config["setup_commands"]
    project_at = [i for i, c in enumerate(setup) if "-e ~/sam-lab" in c][0]
    shown = [i for i, c in enumerate(setup)
             if c.startswith("cd ~/sam-lab && ") and "provenance import code_version" in c]
    assert shown and shown[0] > project_at  # after the install, from the synced root


@pytest.mark.parametrize("name", CONFIGS)
def test_every_command_is_valid_shell(name):
    for command in commands(prepared(name)):  # YAML folding can break a command silently
        done = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert done.returncode == 0, f"{command}\n{done.stderr}"


def _mlflow_server(config: dict) -> str:
    (command,) = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    return command


@pytest.mark.parametrize("name", CONFIGS)
def test_head_runs_mlflow_with_sqlite_and_ray_dashboard_on_loopback(name):
    config = prepared(name)
    server = _mlflow_server(config)
    assert "--backend-store-uri sqlite:///" in server and "--host 127.0.0.1 " in server
    (head,) = [c for c in config["head_start_ray_commands"] if "ray start --head" in c]
    assert "--dashboard-host=127.0.0.1" in head  # Ray's AWS default is 0.0.0.0


@pytest.mark.parametrize("name", CONFIGS)
def test_nothing_binds_to_all_interfaces_or_opens_a_port_to_the_world(name):
    config = prepared(name)
    for command in commands(config):
        assert "0.0.0.0" not in command and "::/0" not in command, command
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:  # added to Ray's default group: only SSH may face the world
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])} | {
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
        if cidrs & WORLD:
            assert (rule.get("FromPort"), rule.get("ToPort")) == (22, 22), rule
    for node_type in config["available_node_types"].values():
        # Own security groups would bring rules this test cannot see.
        assert "SecurityGroupIds" not in node_type["node_config"]


def test_rays_default_security_group_opens_only_ssh_to_the_world():
    """What `ray up` adds to the group, read from Ray's source (importing it needs boto3)."""
    source = (Path(ray.__file__).parent / "autoscaler/_private/aws/config.py").read_text()
    functions = {f.name: f for f in ast.parse(source).body if isinstance(f, ast.FunctionDef)}
    merged = ast.unparse(functions["_create_default_inbound_rules"])
    assert re.search(r"chain\(\s*intracluster_rules,\s*ssh_rules,\s*extended_rules,?\s*\)", merged)
    intracluster = ast.unparse(functions["_create_default_intracluster_inbound_rules"])
    assert "UserIdGroupPairs" in intracluster and "IpRanges" not in intracluster  # nodes only
    (ret,) = [n for n in ast.walk(functions["_create_default_ssh_inbound_rules"])
              if isinstance(n, ast.Return)]
    assert ast.literal_eval(ret.value) == [{"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp",
                                            "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]


def _listeners(port: int) -> set[str]:
    """Addresses with a TCP socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        path = Path("/proc/net") / table
        lines = path.read_text().splitlines()[1:] if path.exists() else []
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


@pytest.mark.slow
def test_sam_lab_ui_listens_on_loopback_only(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "mlflow.db").touch()  # mlflow creates the tables
    port = free_port()
    ui = subprocess.Popen([str(Path(sys.executable).with_name("sam-lab")), "ui", "--results",
                           "results", "--port", str(port)], cwd=tmp_path,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        wait_for(lambda: _listeners(port) or ui.poll() is not None, "the MLflow UI", timeout=180)
        assert ui.poll() is None, "sam-lab ui exited"
        assert _listeners(port) == {"127.0.0.1"}
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as reply:
            assert reply.status == 200
    finally:
        os.killpg(ui.pid, signal.SIGKILL)  # its own process group: mlflow and uvicorn
        ui.wait()


def test_checkpoints_load_with_weights_only():
    """Every torch.load in the code base refuses pickled code (weights_only=True)."""
    calls = []
    for folder in ("sam_lab", "sweeps", "analysis", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                    safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                               for k in node.keywords)
                    calls.append((f"{path.relative_to(ROOT)}:{node.lineno}", safe))
    assert calls, "no torch.load found: the connect trial loads endpoint checkpoints"
    assert all(safe for _, safe in calls), [where for where, safe in calls if not safe]
