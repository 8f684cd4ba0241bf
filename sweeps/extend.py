"""Extend instead of rerun: a trial that is a longer version of a finished one goes on from it.

    extends, notes = plan(spec, sweep_dir, todo)   # {trial_id: parent trial_id}, lines to show

A trial extends a finished `ok` trial of the same sweep folder when its config differs from the
parent's only in the family's DURATION_KEY (grokking `steps`, classify `epochs`) and is longer,
the parent's final training state is in RESULTS/NAME/weights (`keep: final`), and the family's
`extendable(config)` allows it: the duration must not shape the trajectory so far (a constant lr
after warmup, no schedule tied to the total). The longest such parent is taken. Otherwise the
trial trains from scratch, and `notes` says why in one line per reason.

The extended trial is a normal new trial (its own trial_id, row, curve and MLflow run); its
curve starts with the parent's whole curve and its `extended_from` column names the parent.
"""

from __future__ import annotations

from collections import Counter

from analysis.load import read_trials
from sam_lab import trials as families
from sweeps import weights
from sweeps.spec import trial_id


def plan(spec, sweep_dir, todo) -> tuple[dict, list[str]]:
    family = families.get(spec.experiment)
    key = getattr(family, "DURATION_KEY", None)
    table = read_trials(sweep_dir, ["trial_id", "status", key, "early_stopped"]) if key else None
    if table is None or not todo:
        return {}, []
    done = {r["trial_id"]: r for r in table.to_pylist() if r["status"] == "ok"}
    durations = sorted({r[key] for r in done.values() if r.get(key) is not None}, reverse=True)
    extends, why_not = {}, Counter()
    for trial in todo:
        for duration in (d for d in durations if d < trial.config[key]):
            parent = trial_id(spec.experiment, {**trial.config, key: duration})
            if parent not in done:
                continue
            reason = family.extendable(trial.config)
            if reason is None and spec.pack:
                reason = "packed trials (pack) keep no training state to go on from"
            if reason is None and done[parent].get("early_stopped"):
                reason = "the shorter trial stopped early"
            if reason is None and not weights.state_path(sweep_dir, parent).exists():
                reason = "the shorter trial's state was not kept (keep: none)"
            if reason is None:
                extends[trial.trial_id] = parent
            else:
                why_not[reason] += 1
            break
    notes = [f"{n} trial{'s' if n > 1 else ''} train{'' if n > 1 else 's'} from scratch, not "
             f"extended from a shorter finished trial: {reason}" for reason, n in why_not.items()]
    if extends:
        n = len(extends)
        notes.insert(0, f"{n} trial{'s' if n > 1 else ''} extend{'' if n > 1 else 's'} a "
                        f"shorter finished trial ({key}), going on from its final state")
    return extends, notes
