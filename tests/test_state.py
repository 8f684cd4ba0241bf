"""Trials that keep their state: resume bit-for-bit, keep weights, extend a finished trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import _processes, descendants, sam_lab, wait_for, write_spec

from analysis import load
from sam_lab import state as training_state
from sam_lab.trials import classify, grokking
from sweeps import cli, extend, weights
from sweeps import spec as specs
from sweeps.results import Results

GROK = {"modulus": 23, "train_fraction": 0.5, "width": 16, "depth": 1, "embed_dim": 8,
        "batch_size": 64, "eval_points": 20, "threads": 1}


def _drain(rows):
    out = []
    while True:
        try:
            out.append(next(rows))
        except StopIteration as stop:
            return out, stop.value


def _run(family, config, state=None, stop_at=None):
    """(rows, summary, final state); with stop_at, the state at the first safe point at or
    after that step, as saved to disk and read back (rows and summary are then None)."""
    taken = {}

    def checkpoint(get_state):
        taken["get"] = get_state
        if stop_at is not None and get_state()["step"] >= stop_at:
            raise KeyboardInterrupt

    try:
        rows, summary = _drain(family.run(config, state=state, checkpoint=checkpoint))
    except KeyboardInterrupt:
        return None, None, taken["get"]()
    return rows, summary, taken["get"]()


def _same_model(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family, config, stop_at", [
    (grokking, {**GROK, "steps": 240, "rho": 0.05, "grokfast": "ma", "grokfast_window": 5}, 97),
    (classify, {"dataset": "digits", "n_train": 200, "width": 16, "epochs": 5, "threads": 1,
                "optimizer": "adam", "grokfast": "ema"}, 6),
], ids=["grokking-sam-minibatch-ma", "classify-adam-ema"])
def test_a_run_resumed_from_a_saved_state_ends_bit_for_bit_where_an_uninterrupted_one_does(
        tmp_path, family, config, stop_at):
    rows, summary, final = _run(family, config)
    _, _, midway = _run(family, config, stop_at=stop_at)
    training_state.save(midway, tmp_path / "state.pt")  # through disk, weights_only on the way in
    resumed = training_state.load(tmp_path / "state.pt")
    assert 0 < resumed["step"] < final["step"]
    rest, resumed_summary, resumed_final = _run(family, config, state=resumed)
    assert rest == [r for r in rows if r["step"] > resumed["step"]]
    assert _same_model(resumed_final["model"], final["model"])
    drop = ("train_s",)  # wall time
    assert {k: v for k, v in resumed_summary.items() if k not in drop} == \
        {k: v for k, v in summary.items() if k not in drop}


def test_spec_checkpoint_s_and_keep_are_checked_and_change_no_trial_id(tmp_path):
    base = {"name": "k", "experiment": "grokking", "base": {"steps": 10}, "seeds": 2}
    path = write_spec(tmp_path, base)
    plain = specs.load(path)
    assert (plain.checkpoint_s, plain.keep) == (600, "final")
    tuned = specs.load(write_spec(tmp_path, {**base, "checkpoint_s": 0, "keep": "none"}, "t.yaml"))
    assert (tuned.checkpoint_s, tuned.keep) == (0, "none")
    assert [t.trial_id for t in tuned.trials] == [t.trial_id for t in plain.trials]
    for bad, message in (({"checkpoint_s": -1}, "checkpoint_s: got -1"),
                         ({"keep": "all"}, "keep: got 'all'; allowed: final, none")):
        with pytest.raises(specs.SpecError, match=message):
            specs.load(write_spec(tmp_path, {**base, **bad}, "bad.yaml"))


def _finished(tmp_path, spec, tid_state=True) -> Path:
    """A sweep folder where the spec's trials finished ok, with (optionally) their states."""
    sweep_dir = tmp_path / "results" / spec.name
    results = Results(sweep_dir, classify.Config)
    for t in spec.trials:
        results.record({"trial_id": t.trial_id, "sweep": spec.name, "experiment": "classify",
                        "status": "ok", "error": None, "seed": t.seed, **t.config,
                        "wall_s": 1.0}, [{"step": 1, "epoch": 1}])
        if tid_state:
            weights.state_path(sweep_dir, t.trial_id).parent.mkdir(parents=True, exist_ok=True)
            training_state.save({"step": 1}, weights.state_path(sweep_dir, t.trial_id))
    results.close()
    return sweep_dir


@pytest.mark.parametrize("schedule, extended", [("constant", True), ("cosine", False)])
def test_a_longer_classify_trial_extends_a_finished_one_only_with_a_constant_schedule(
        tmp_path, schedule, extended):
    path = write_spec(tmp_path, {"name": "e", "experiment": "classify", "seeds": 1,
                                 "base": {"dataset": "digits", "epochs": 2,
                                          "schedule": schedule}})
    sweep_dir = _finished(tmp_path, specs.load(path))
    longer = specs.load(path, ["epochs=4"])
    extends, notes = extend.plan(longer, sweep_dir, longer.trials)
    parent = specs.load(path).trials[0].trial_id
    if extended:
        assert extends == {longer.trials[0].trial_id: parent}
        assert notes == ["1 trial extends a shorter finished trial (epochs), going on from "
                         "its final state"]
    else:
        assert extends == {}
        assert notes == ["1 trial trains from scratch, not extended from a shorter finished "
                         "trial: schedule cosine depends on the total epochs"]
    shorter = specs.load(path, ["epochs=1"])  # shorter or equal: nothing to go on from
    assert extend.plan(shorter, sweep_dir, shorter.trials) == ({}, [])


def test_no_kept_state_means_training_from_scratch_with_a_reason(tmp_path):
    path = write_spec(tmp_path, {"name": "n", "experiment": "classify", "seeds": 1,
                                 "base": {"dataset": "digits", "epochs": 2}})
    sweep_dir = _finished(tmp_path, specs.load(path), tid_state=False)
    longer = specs.load(path, ["epochs=3"])
    assert extend.plan(longer, sweep_dir, longer.trials) == ({}, [
        "1 trial trains from scratch, not extended from a shorter finished trial: the shorter "
        "trial's state was not kept (keep: none)"])


def _checkpointed_step(storage: Path) -> int:
    """The step of the newest complete checkpoint in Tune's storage (0: none yet)."""
    best = 0
    for path in storage.glob("*/*/checkpoint_*/state-0.pt"):
        try:
            best = max(best, training_state.load(path)["step"])
        except Exception:  # noqa: BLE001 - still being copied
            pass
    return best


@pytest.mark.slow
def test_killed_worker_resumes_from_its_checkpoint_then_a_longer_run_extends_it(tmp_path):
    """One trial: its worker is SIGKILLed past a quarter of its steps; Tune restarts it from its last
    checkpoint, and it ends bit-for-bit where an uninterrupted run ends. Then the same spec
    with twice the steps goes on from the kept final state and ends where a fresh run ends."""
    steps = 1000
    spec = {"name": "keep", "experiment": "grokking", "base": {**GROK, "steps": steps},
            "seeds": [0], "checkpoint_s": 0.3, "resources": {"cpu": 1}}
    spec["base"].pop("threads")
    write_spec(tmp_path, spec, "keep.yaml")
    storage = tmp_path / "storage"
    script = Path(sys.executable).with_name("sam-lab")
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen([str(script), "sweep", "keep.yaml", "--storage", str(storage)],
                                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                start_new_session=True)
    try:
        def training():  # a checkpoint past a quarter of the steps, and the worker still alive
            step, table = _checkpointed_step(storage), _processes()
            # an actor's title is "ray::ImplicitFunc.train" inside train(), "ray::ImplicitFunc"
            # between calls: match both, or a kill between two reports finds nothing
            actors = [p for p in descendants(proc.pid, table) if "ray::ImplicitFunc" in table[p][1]]
            return step > steps // 4 and actors and (step, actors)

        seen, actors = wait_for(training, "a checkpoint past a quarter of the steps", every=0.05)
        for pid in actors:
            os.kill(pid, signal.SIGKILL)
        assert proc.wait(300) == 0, (tmp_path / "out.txt").read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = (tmp_path / "out.txt").read_text()
    assert "retry" in output, output

    sweep_dir = tmp_path / "results" / "keep"
    row = load.trials(sweep_dir).iloc[0]
    assert row.status == "ok"
    # it went on from a checkpoint at least as late as the one seen before the kill
    assert seen <= row.resumed_step < steps
    config = {**GROK, "steps": steps, "seed": 0}
    rows, _, final = _run(grokking, config)
    curve = load.curves(sweep_dir).drop(columns="trial_id")
    assert curve.to_dict("records") == rows  # no row lost or repeated
    kept = training_state.load(weights.weights_path(sweep_dir, row.trial_id))
    assert _same_model(kept, final["model"])

    longer = sam_lab("sweep", "keep.yaml", "--set", f"steps={2 * steps}", cwd=tmp_path)
    assert longer.returncode == 0, longer.stdout + longer.stderr
    assert "1 trial extends a shorter finished trial (steps)" in longer.stdout
    trials = load.trials(sweep_dir).set_index("trial_id")
    child = trials[trials.steps == 2 * steps].iloc[0]
    assert child.extended_from == row.trial_id
    fresh_rows, _, fresh_final = _run(grokking, {**config, "steps": 2 * steps})
    child_curve = load.curves(sweep_dir, [child.name]).drop(columns="trial_id")
    assert child_curve.step.tolist() == [r["step"] for r in rows] + [
        r["step"] for r in fresh_rows if r["step"] > steps]  # the whole history
    assert child_curve.to_dict("records")[-1] == fresh_rows[-1]
    extended = training_state.load(weights.weights_path(sweep_dir, child.name))
    assert _same_model(extended, fresh_final["model"])


@pytest.mark.slow
def test_measure_from_kept_weights_matches_the_trials_own_measure_and_guards_bad_files(
        tmp_path, one_thread, capsys):
    """Two finished trials (with their in-trial sharpness) written as a sweep would; `measure`
    gives the same numbers from the kept weights, is idempotent, and refuses a corrupt file."""
    spec = specs.load(write_spec(tmp_path, {
        "name": "m", "experiment": "grokking", "seeds": 2,
        "base": {**{k: v for k, v in GROK.items() if k != "threads"}, "steps": 60,
                 "measure_sharpness": True}}))
    sweep_dir = tmp_path / "results" / "m"
    results = Results(sweep_dir, grokking.Config)
    results.write_spec(spec.resolved())
    for t in spec.trials:
        rows, summary, final = _run(grokking, t.config)
        results.record({"trial_id": t.trial_id, "sweep": "m", "experiment": "grokking",
                        "status": "ok", "error": None, "seed": t.seed, **t.config, **rows[-1],
                        **summary, "wall_s": 1.0}, rows)
        path = weights.weights_path(sweep_dir, t.trial_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        training_state.save(final["model"], path)
    results.close()
    trials = load.trials(sweep_dir).set_index("seed")

    first = sam_lab("measure", "results/m", "--where", "seed=0", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "1 trials measured, 0 already" in first.stdout
    measures = tmp_path / "results" / "m" / "measures.parquet"
    row = load.pd.read_parquet(measures).iloc[0]
    assert row.trial_id == trials.loc[0, "trial_id"]
    for key in ("lambda_max", "hessian_trace", "eps_sharpness"):
        assert row[key] == trials.loc[0, key]  # bit-for-bit the trial's own measure
    before = measures.read_bytes()

    def measure(*flags):  # in process: these never start Ray
        code = cli.main(["measure", str(sweep_dir), *flags])
        out = capsys.readouterr()
        return code, out.out, out.err

    weights.weights_path(sweep_dir, trials.loc[1, "trial_id"]).write_bytes(b"not a torch file")
    code, _, err = measure()
    assert code == 3 and len(err.strip().splitlines()) == 1, err
    assert "cannot be read" in err and "nothing measured" in err
    weights.weights_path(sweep_dir, trials.loc[1, "trial_id"]).unlink()
    code, _, err = measure()
    assert code == 3 and "missing" in err, err
    code, out, _ = measure("--where", "seed=0")
    assert code == 0 and "0 trials measured, 1 already" in out
    assert measures.read_bytes() == before  # nothing lost, nothing rewritten
    for flags, message in ((["--what", "beauty"], "--what beauty: unknown"),
                           (["--where", "width"], "expected KEY=VALUE")):
        code, _, err = measure(*flags)
        assert code == 2 and message in err, err


def test_connect_endpoints_may_name_kept_weights_as_sweep_dir_hash_trial_id(tmp_path):
    from sam_lab.config import ConfigError, parse
    from sam_lab.trials import connect

    sweep_dir = tmp_path / "results" / "dd"
    ref = f"{sweep_dir}#abc123"
    assert connect.endpoint_path(ref) == str(sweep_dir / "weights" / "abc123.pt")
    with pytest.raises(ConfigError, match="was that sweep run with keep: final"):
        parse(connect.Config, {"dataset": "digits", "endpoint_a": ref})
    (sweep_dir / "weights").mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, sweep_dir / "weights" / "abc123.pt")
    cfg = parse(connect.Config, {"dataset": "digits", "endpoint_a": ref, "width": 8})
    from sam_lab.train import setup

    data, model = setup(cfg)
    with pytest.raises(ValueError, match="do not fit this trial's model"):
        connect._endpoint(cfg, model, data, 0, ref)



def test_a_packs_members_hand_out_their_own_final_weights(one_thread):
    from sam_lab.train import evaluate, setup

    configs = [{"dataset": "digits", "n_train": 200, "width": 8, "epochs": 2, "seed": s,
                "threads": 1} for s in (0, 1)]
    taken = {}
    rows, _ = _drain(classify.run_packed(configs, checkpoint=lambda get: taken.update(get=get)))
    states = taken["get"]()
    assert len(states) == 2 and not _same_model(states[0]["model"], states[1]["model"])
    for k, config in enumerate(configs):
        data, model = setup(classify.Config(**config))
        model.load_state_dict(states[k]["model"])
        last = [row for j, row in rows if j == k][-1]
        loss, acc = evaluate(model, data.x_test, data.y_test)  # one model, not vmapped:
        assert (loss, acc) == (pytest.approx(last["test_loss"], rel=1e-5), last["test_acc"])
