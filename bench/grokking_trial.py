"""Time the grokking reference case R4 as one trial, run the way the launcher runs it.

R4: embedding-MLP (32-dim shared embeddings of a and b, concatenated; 2 ReLU layers of 256),
x+y mod 97, 40% of pairs, AdamW lr 1e-3, betas (0.9, 0.98), weight decay 1, full batch, 20k steps
at most, stopping 500 steps after test accuracy holds at 99%. Goal: <= 3 minutes on 2 CPU cores.

    .venv/bin/python bench/grokking_trial.py [--threads 1] [--seed 0] [--steps 20000]

--steps 500 times the per-step cost alone (it stops long before grokking).
"""

from __future__ import annotations

import argparse
import time

from sam_lab.trials import grokking

R4 = dict(operation="x+y", modulus=97, train_fraction=0.4, model="mlp", width=256, depth=2,
          embed_dim=32, lr=1e-3, weight_decay=1.0, batch_size=0, steps=20000, early_stop=500)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=R4["steps"])
    args = parser.parse_args()

    start, cpu_start = time.perf_counter(), time.process_time()
    trial = grokking.run({**R4, "threads": args.threads, "seed": args.seed, "steps": args.steps})
    try:
        while True:
            row = next(trial)
    except StopIteration as stop:
        summary = stop.value
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    steps = summary["steps_run"]
    # CPU time next to wall time: on a shared machine the gap is time spent waiting for a core.
    print(f"R4 seed {args.seed}, {args.threads} thread(s): {steps} steps in {wall:.0f} s wall "
          f"({1000 * wall / steps:.1f} ms/step, evaluations included), {cpu:.0f} s CPU "
          f"({1000 * cpu / steps:.1f} ms/step)")
    print(f"train 99% at step {summary['step_train_99']}, test 99% at step "
          f"{summary['step_test_99']}, grok delay {summary['grok_delay']}, "
          f"phase {summary['phase']}, final test acc {row['test_acc']:.4f}")


if __name__ == "__main__":
    main()
