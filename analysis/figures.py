"""The figures of a sweep, by its experiment, and a check that a figure is fit to read.

    figures.build(sweep_dir)          -> [(stem, matplotlib Figure)], nothing written
    figures.make(sweep_dir, out_dir)  -> [PNG path]: build, then save (PNG + SVG, 0644)
    figures.audit(fig, {"width": [4, 8]}) -> ["problem", ...]; [] when the figure is fine

The figure module is `analysis/<experiment>.py` with `build(trials, curves, spec)`. `trials` holds
every trial of the latest launch's spec, failed ones included (status, error), so a module marks
failures instead of dropping them.
"""

from __future__ import annotations

import importlib
import itertools
import re
from pathlib import Path

from matplotlib.axes import Axes

from analysis import common, load

MAX_WIDTH, MAX_HEIGHT, MAX_ASPECT = 7.5, 9.5, 3.0  # inches; width / height
MIN_FONT = 6.0  # points, at the size the figure is saved
SNAKE = re.compile(r"[A-Za-z]_[A-Za-z]")
MATH = re.compile(r"\$[^$]*\$")


def _module(spec: dict):
    try:
        return importlib.import_module(f"analysis.{spec['experiment']}")
    except ModuleNotFoundError as e:
        if e.name != f"analysis.{spec['experiment']}":
            raise
        raise LookupError(f"no figures for experiment {spec['experiment']!r} "
                          f"(analysis/{spec['experiment']}.py does not exist)") from None


def build(sweep_dir) -> list:
    spec = load.spec(sweep_dir)
    module = _module(spec)
    trials = load.trials(sweep_dir)
    curves = load.curves(sweep_dir, trials.trial_id)
    return module.build(trials, curves, spec)


def make(sweep_dir, out_dir) -> list[Path]:
    return common.save_all(build(sweep_dir), Path(out_dir))


def audit(fig, expected_ticks: dict | None = None) -> list[str]:
    """What keeps `fig` from reading well, from its matplotlib objects (no pixels).

    Checks: a title; every data axis labelled, in words (no snake_case) and every colour bar
    labelled; no 95% CI claimed over 1 seed; a size that fits a page; no text under 6 pt; no
    overlapping tick labels; and for each key of `expected_ticks` ({key: values run}) on an axis
    labelled for it, a tick (or tick label) at every value. A key with several values that is on
    no axis must name each value in a legend, title or tick label, unless the figure is one of a
    set split by that key (a title names "<key> <value>")."""
    common.thin_labels(fig)  # as `save` does, so the checks see the saved layout
    problems = []
    renderer = fig.canvas.get_renderer()
    width, height = fig.get_size_inches()
    if width > MAX_WIDTH or height > MAX_HEIGHT or width / height > MAX_ASPECT:
        problems.append(f"size {width:.1f}x{height:.1f} in: not a page figure "
                        f"(at most {MAX_WIDTH}x{MAX_HEIGHT} in, width/height <= {MAX_ASPECT})")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    bars = [ax for ax in axes if _is_colorbar(ax)]
    data = [ax for ax in axes if ax not in bars]
    suptitle = fig._suptitle.get_text() if fig._suptitle else ""
    if not suptitle and not all(ax.get_title() for ax in data):
        problems.append("no title (neither a figure title nor one on every panel)")
    for i, ax in enumerate(data):
        where = f"panel {i + 1} ({ax.get_title() or 'untitled'})"
        for axis in ("x", "y"):
            target = getattr(ax, f"{axis}axis")
            if not target.get_visible() or not any(t.get_text() for t in target.get_ticklabels()):
                continue  # a shared axis shows its ticks and label on the outer panels only
            if not target.get_label().get_text() and not _shared_label(ax, axis, data):
                problems.append(f"{where}: {axis} axis has no label")
            problems += [f"{where}: {axis} tick labels overlap: {a!r} and {b!r}"
                         for a, b in _overlaps(target, renderer)]
    titles = [(ax.title.get_text(), ax.title.get_window_extent(renderer)) for ax in data
              if ax.title.get_text()]
    problems += [f"panel titles overlap: {a!r} and {b!r}"
                 for (a, box_a), (b, box_b) in itertools.combinations(titles, 2)
                 if box_a.overlaps(box_b)]
    for ax in bars:
        target = ax.yaxis if ax.get_ylabel() or not ax.get_xlabel() else ax.xaxis
        if not target.get_label().get_text():
            problems.append("a colour bar has no label")
    texts = _texts(fig)
    for text in texts:
        plain = MATH.sub("", text.get_text())
        if SNAKE.search(plain):
            problems.append(f"snake_case in {text.get_text()!r}")
        if re.search(r"CI\b.*\b1 seed\b|\b1 seed\b.*\bCI\b", plain):
            problems.append(f"a CI over 1 seed: {text.get_text()!r}")
        if text.get_text().strip() and text.get_fontsize() < MIN_FONT:
            problems.append(f"{text.get_fontsize():.1f} pt text: {text.get_text()!r}")
    for key, values in (expected_ticks or {}).items():
        problems += _missing_values(data, texts, key, values)
    return list(dict.fromkeys(problems))


def _is_colorbar(ax: Axes) -> bool:
    return hasattr(ax, "_colorbar") or ax.get_label() == "<colorbar>"


def _shared_label(ax, axis, data) -> bool:
    """Another panel of the same row (y) or column (x) carries the label (or the figure does)."""
    fig = ax.figure
    sup = fig.get_supxlabel() if axis == "x" else fig.get_supylabel()
    if sup:
        return True
    group = ax.get_shared_x_axes() if axis == "x" else ax.get_shared_y_axes()
    return any(getattr(other, f"get_{axis}label")() for other in group.get_siblings(ax)
               if other in data)


def _overlaps(target, renderer):
    target.get_ticklabels(which="both")  # updates the ticks' labels
    lo, hi = sorted(target.get_view_interval())
    ticks = target.get_major_ticks() + target.get_minor_ticks()
    labels = [t.label1 for t in ticks if lo <= t.get_loc() <= hi and t.label1.get_text()
              and t.label1.get_visible()]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in labels]
    for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2):
        if box_a.overlaps(box_b) and box_a.width and box_b.width:
            yield a, b


def _texts(fig):
    found = [t for t in fig.findobj(lambda o: hasattr(o, "get_text") and hasattr(o, "get_fontsize"))
             if t.get_visible() and t.get_text()]
    return list(dict.fromkeys(found))


def _missing_values(data, texts, key, values) -> list[str]:
    values = values if isinstance(values, (list, tuple)) else [values]
    words = common.label(key)
    on_axes = [(ax, target) for ax in data for target in (ax.xaxis, ax.yaxis)
               if target.get_label().get_text() == words or
               (target.get_label().get_text() == "" and _sibling_label(ax, target) == words)]
    if on_axes:
        problems = []
        for ax, target in on_axes:
            shown = {t.get_text() for t in target.get_ticklabels()}
            locs = target.get_majorticklocs()
            lo, hi = sorted(target.get_view_interval())
            for v in values:
                at_tick = (isinstance(v, (int, float)) and not isinstance(v, bool) and any(
                    abs(loc - v) <= 1e-9 * max(1, abs(v)) and lo <= loc <= hi for loc in locs))
                if common.fmt(v) not in shown and not at_tick:
                    problems.append(f"{words} {common.fmt(v)}: no tick on the "
                                    f"{'x' if target is ax.xaxis else 'y'} axis of "
                                    f"{ax.get_title() or 'a panel'!r}")
        return problems
    if len(values) < 2:
        return []
    joined = "\n".join(t.get_text() for t in texts)
    slice_of = [f"{common.name(key)} {common.fmt(v)}" for v in values]
    if any(s in text for s in slice_of for text in _titles(data)):
        return []  # one figure per value of this key: its title names the value
    return [f"{words} {common.fmt(v)}: on no axis and named nowhere in the figure"
            for v in values
            if not re.search(rf"(?<![\w.]){re.escape(common.fmt(v))}(?![\w.]|\.\d)", joined)]


def _titles(data) -> list[str]:
    """The figure's own title: its suptitle, or the title of its only panel."""
    fig = data[0].figure if data else None
    sup = [fig._suptitle.get_text()] if fig is not None and fig._suptitle else []
    return sup + ([data[0].get_title()] if len(data) == 1 else [])


def _sibling_label(ax, target) -> str:
    axis = "x" if target is ax.xaxis else "y"
    group = ax.get_shared_x_axes() if axis == "x" else ax.get_shared_y_axes()
    for other in group.get_siblings(ax):
        text = getattr(other, f"get_{axis}label")()
        if text:
            return text
    return ""
