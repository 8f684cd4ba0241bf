"""Bad input: malformed specs and CLI calls. Each must exit 2 with one line on stderr that names
the file (for a spec), the key or flag, and what is allowed; write nothing (no results folder, no
mlflow.db); and never import Ray, so no Ray can have started.

All cases run in one subprocess (`HARNESS`), each in a fresh working folder, through the same
`sweeps.cli.main` the `sam-lab` script calls. Importing `ray` there fails loudly, which turns
"Ray never started" into a check that cannot pass by accident. About 10 s.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import TINY, free_port

HARNESS = r"""
import contextlib, io, json, os, sys

class NoRay:  # bad input must be refused before Ray is even imported
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("ray imported while handling bad input")

sys.meta_path.insert(0, NoRay())
from sweeps import cli

def files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, subdirs, names in os.walk(root) for f in names + subdirs)

out = {}
for case in json.load(sys.stdin):
    os.chdir(case["cwd"])
    os.environ.update(case["env"])
    before, err = files("."), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(case["argv"])
        except SystemExit as e:  # argparse, as the console script would exit
            code = e.code
        except BaseException as e:
            code = f"crash: {type(e).__name__}: {e}"
    for name in case["env"]:
        del os.environ[name]
    out[case["id"]] = {"code": code, "stderr": err.getvalue(), "written": files(".") != before,
                       "ray": "ray" in sys.modules}
print(json.dumps(out))
"""

DIGITS = {"dataset": "digits", "model": "mlp", "n_train": 300, "epochs": 1}


def tiny(**changes) -> dict:
    return {**TINY, **changes}


def base(**changes) -> dict:
    return tiny(base={**DIGITS, **changes})


CLOSED = free_port()  # nothing listens here: an unreachable Ray head or MLflow server

# id: (spec file content: dict, str or None for no file, extra argv, fragments of the message).
# Every message must also start with the spec file "bad.yaml", except those in FLAG_ONLY.
CASES = {
    "unknown top-level key": (tiny(gird={"width": [4]}), [],
                              ["gird: unknown spec key", "allowed: name, experiment"]),
    "missing required key": ({k: v for k, v in TINY.items() if k != "seeds"}, [],
                             ["seeds: missing", "a spec needs name, experiment, seeds"]),
    "unknown config key": (base(widht=4), [],
                           ["widht: unknown key for experiment classify", "allowed:", "width"]),
    "wrong type": (base(epochs="many"), [], ["epochs: expected int, got str 'many'"]),
    "negative rho": (base(rho=-0.1), [], ["rho: got -0.1; allowed: >= 0"]),
    "width 0 in the grid": (tiny(grid={"width": [0, 8]}), [],
                            ["width: got 0; allowed: >= 1", "(grid point width=0)"]),
    "grid not a mapping": (tiny(grid=[4, 8]), [],
                           ["grid: expected a mapping of config keys to lists"]),
    "empty grid axis": (tiny(grid={"width": []}), [],
                        ["grid.width: expected a non-empty list of values"]),
    "duplicate grid keys": ("name: tiny\nexperiment: classify\nseeds: 1\n"
                            "grid:\n  width: [4]\n  width: [8]\n", [],
                            ["line 6: width: duplicate key; allowed: each key once"]),
    "duplicate grid values": (tiny(grid={"width": [4, 4]}), [],
                              ["grid.width: duplicate values in [4, 4]"]),
    "key in base and grid": (tiny(base={**DIGITS, "width": 4}), [],
                             ["width: in both base and grid; keep one"]),
    "unknown experiment": (tiny(experiment="regress"), [],
                           ["experiment: unknown 'regress'", "allowed: classify"]),
    "unknown dataset": (base(dataset="imagenet"), [],
                        ["dataset: got 'imagenet'", "allowed: one of mnist1d, digits"]),
    "unknown model": (base(model="vit"), [], ["model: got 'vit'", "allowed: one of mlp, cnn5"]),
    "label_noise 1.5": (base(label_noise=1.5), [],
                        ["label_noise: got 1.5; allowed: >= 0.0 and < 1.0"]),
    "missing data_dir": (base(dataset="cifar10", model="cnn5", data_dir="no/such/dir"), [],
                         ["data_dir: no/such/dir/cifar-10-batches-py not found",
                          "or set download: true"]),
    "bad seeds": (tiny(seeds=0), [], ["seeds: got 0; allowed: an int >= 1"]),
    "bad resources": (tiny(resources={"cpu": 1, "tpu": 1}), [],
                      ["resources.tpu: unknown; allowed: cpu, gpu"]),
    "name escapes the results folder": (tiny(name="../elsewhere"), [],
                                        ["name: got '../elsewhere'", "allowed: letters, digits"]),
    "non-YAML file": ("name: [unclosed\n", [], ["not valid YAML: line"]),
    "YAML but not a mapping": ("- 1\n- 2\n", [],
                               ["expected a mapping with keys name, experiment, seeds"]),
    "spec not found": (None, [], ["spec file not found; allowed: the path of a YAML spec"]),
    "--set without =": (TINY, ["--set", "lr"], ["--set lr: expected key=value"]),
    "--set unknown key": (TINY, ["--set", "colour=red"],
                          ["--set colour: unknown key for experiment classify", "allowed:"]),
    "--set out of range": (TINY, ["--set", "epochs=0"], ["--set epochs: got 0; allowed: >= 1"]),
    "--set value not YAML": (TINY, ["--set", "width=[4,"],
                             ["--set width=[4,: value is not valid YAML; allowed: a YAML value"]),
    "unreachable --address": (TINY, ["--address", f"127.0.0.1:{CLOSED}"],
                              [f"--address 127.0.0.1:{CLOSED}: cannot reach a Ray head there",
                               "allowed: auto, or host:port"]),
    "malformed --address": (TINY, ["--address", "head-node"],
                            ["--address head-node: allowed: auto, or host:port"]),
    "ray:// --address": (TINY, ["--address", "ray://10.0.0.1:10001"],
                         ["--address ray://10.0.0.1:10001: Ray Client would run the Tune driver",
                          "allowed: auto or host:port"]),
    "tracking server down": (TINY, ["--tracking-uri", f"http://127.0.0.1:{CLOSED}"],
                             [f"--tracking-uri http://127.0.0.1:{CLOSED}: tracking server "
                              "unreachable"]),
    "--max-concurrent 0": (TINY, ["--max-concurrent", "0"],
                           ["--max-concurrent: got 0; allowed: an int >= 1"]),
    "--max-concurrent not an int": (TINY, ["--max-concurrent", "two"],
                                    ["argument --max-concurrent: invalid int value: 'two'"]),
    "--results is a file": (TINY, ["--results", "bad.yaml"],
                            ["--results bad.yaml: exists and is not a folder; allowed: a "
                             "folder"]),
    "unknown flag": (TINY, ["--gpus", "2"], ["unrecognized arguments: --gpus 2"]),
    "pack over a key that changes the model": (tiny(pack=["seed", "width"]), [],
                                               ["pack: got ['seed', 'width']",
                                                "allowed: seeds, or a list of keys from seed, rho"]),
    "pack a model with BatchNorm": (tiny(base={**DIGITS, "model": "cnn5"}, pack="seeds"), [],
                                    ["pack: model: packing needs a model without BatchNorm"]),
    "pack_size 0": (tiny(pack="seeds", pack_size=0), [], ["pack_size: got 0; allowed: an int >= 1"]),
    "gpu auto without a memory estimate": (
        tiny(experiment="grokking", base={}, grid={"lr": [1e-3]}, resources={"gpu": "auto"}), [],
        ["resources.gpu: auto needs an estimate of a trial's memory", "allowed: a number"]),
    "gpu_memory_gb without gpu auto": (tiny(resources={"gpu": 1, "gpu_memory_gb": 80}), [],
                                       ["resources.gpu_memory_gb: only used with gpu: auto"]),
    "SAM_LAB_UNITS_PER_FIT 0": (TINY, [], ["SAM_LAB_UNITS_PER_FIT: got '0'; allowed: an int >= 1"]),
    # other commands: (spec, flags, fragments, argv)
    "sync of a folder with no sweep": (None, [], ["nowhere: no sweep here (no spec.yaml)"],
                                       ["sync", "nowhere"]),
    "status of a folder with no sweep": (None, [], ["nowhere: no sweep here (no spec.yaml)"],
                                         ["status", "nowhere"]),
}
ENV = {"SAM_LAB_UNITS_PER_FIT 0": {"SAM_LAB_UNITS_PER_FIT": "0"}}  # case: environment set for it
# Flag errors that are not about the spec's content need not name the spec file.
FLAG_ONLY = {"SAM_LAB_UNITS_PER_FIT 0", "unreachable --address", "malformed --address", "ray:// --address",
             "tracking server down", "--max-concurrent 0", "--max-concurrent not an int",
             "--results is a file", "unknown flag", "sync of a folder with no sweep",
             "status of a folder with no sweep"}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    cases = []
    for case, (spec, flags, _, *argv) in CASES.items():
        cwd = tmp_path_factory.mktemp("bad")
        if spec is not None:
            text = spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False)
            (cwd / "bad.yaml").write_text(text)
        argv = argv[0] if argv else ["sweep", "bad.yaml", *flags]
        cases.append({"id": case, "cwd": str(cwd), "argv": argv, "env": ENV.get(case, {})})
    done = subprocess.run([sys.executable, "-c", HARNESS], input=json.dumps(cases),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_writes_nothing_starts_no_ray(outcomes, case):
    got = outcomes[case]
    assert got["code"] == 2, got
    lines = got["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].startswith("sam-lab: error: "), got["stderr"]
    for fragment in CASES[case][2]:
        assert fragment in lines[0], lines[0]
    if case not in FLAG_ONLY:
        assert lines[0].startswith("sam-lab: error: bad.yaml: ")
    assert not got["written"], "bad input wrote files"
    assert not got["ray"], "bad input imported Ray"
