"""Time the grokking reference case R4 as one trial, run the way the launcher runs it.

R4: embedding-MLP (32-dim shared embeddings of a and b, concatenated; 2 ReLU layers of 256),
x+y mod 97, 40% of pairs, AdamW lr 1e-3, betas (0.9, 0.98), weight decay 1, full batch, 20k steps
at most, stopping 500 steps after test accuracy holds at 99%. Goal: <= 3 minutes on 2 CPU cores.

    .venv/bin/python bench/grokking_trial.py [--threads 1] [--seed 0] [--steps 20000]

Reports the whole trial's wall time and, separately, the cost of one training step and of one
evaluation (a no-grad forward over all p^2 pairs). The evaluations are log-spaced, so a short
run is mostly evaluations (about 100 of the 200 fall in the first 300 steps) while a full run is
mostly training steps; the per-step number is what --steps 300 is good for.

Measured here (AMD EPYC, AVX2, other jobs running): a training step is 42 ms on 1 thread and
22 ms on 2 (48 and 27 before the first layer was folded into the embedding lookup); seed 0 with
--threads 2 groks at step 16,390 and stops at 17,226 after 559 s (31.5 ms per step under load,
16 s of evaluations), 3x the goal.
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

    # The trial looks `evaluate` up in its module on every call, so wrapping it there times the
    # evaluations without touching the training loop.
    evaluate, eval_wall, eval_cpu = grokking.evaluate, [], []

    def timed_evaluate(*a):
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            return evaluate(*a)
        finally:
            eval_wall.append(time.perf_counter() - start)
            eval_cpu.append(time.process_time() - cpu_start)

    grokking.evaluate = timed_evaluate
    start, cpu_start = time.perf_counter(), time.process_time()
    trial = grokking.run({**R4, "threads": args.threads, "seed": args.seed, "steps": args.steps})
    try:
        while True:
            row = next(trial)
    except StopIteration as stop:
        summary = stop.value
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    steps, evals, n = summary["steps_run"], sum(eval_wall), len(eval_wall)
    train, train_cpu, evals_cpu = wall - evals, cpu - sum(eval_cpu), sum(eval_cpu)
    # CPU time next to wall time: on a shared machine the gap is time spent waiting for a core
    # (with 2 threads CPU time counts both cores, so it exceeds wall time on an idle machine).
    print(f"R4 seed {args.seed}, {args.threads} thread(s): {steps} steps in {wall:.1f} s wall, "
          f"{cpu:.1f} s CPU")
    print(f"  training:   {1000 * train / steps:.1f} ms/step wall, "
          f"{1000 * train_cpu / steps:.1f} ms CPU ({train:.1f} s wall)")
    print(f"  evaluation: {1000 * evals / n:.1f} ms each wall, {1000 * evals_cpu / n:.1f} ms CPU, "
          f"x {n} ({evals:.1f} s wall)")
    print(f"train 99% at step {summary['step_train_99']}, test 99% at step "
          f"{summary['step_test_99']}, grok delay {summary['grok_delay']}, "
          f"phase {summary['phase']}, final test acc {row['test_acc']:.4f}")


if __name__ == "__main__":
    main()
