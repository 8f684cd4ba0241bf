"""Run the benchmarks in sequence, each in its own process (so threads and peak memory are its
own), and write their combined output, with the machine they ran on, to bench/out/all.txt.
Each benchmark also writes bench/out/<name>.txt.

    .venv/bin/python bench/run_all.py        (or: make bench)
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
BENCHES = ["sam_step.py", "vmap_seeds.py", "platform_overhead.py", "end_to_end.py",
           "analysis_scale.py", "large_sweeps.py", "state_costs.py"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, "
            f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} at start")


def main():
    lines = [f"# {time.strftime('%Y-%m-%d %H:%M')} on {machine()}"]
    print(lines[0], flush=True)
    failed = []
    for name in BENCHES:
        print(f"\n## {name}", flush=True)
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(HERE / name)], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        out = []
        for line in proc.stdout:
            print(line, end="", flush=True)
            out.append(line.rstrip("\n"))
        if proc.wait() != 0:
            failed.append(name)
        lines += ["", f"## {name} ({time.perf_counter() - start:.0f} s)", *out]
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "all.txt").write_text("\n".join(lines) + "\n")
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
