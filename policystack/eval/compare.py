"""``policystack compare``: several evaluations side by side.

    policystack compare RUN [RUN ...] [out=table.md] [plot=compare.png]

Each RUN is an eval_info.json, a directory holding one, or a run directory (the newest
eval_info.json below it is used, see ``report.find_eval_info``). Prints a markdown table -- one
row per task plus "overall", one column per run, cells "success% [Wilson 95% low, high] (k/n)" --
and a details table (policy, checkpoint, mean episode length and reward), and writes a grouped bar
plot with Wilson error bars.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policystack.eval.report import _figure_png, find_eval_info, load_eval_info, success_bars
from policystack.eval.runner import EvalResult
from policystack.io import atomic_write_bytes

USAGE = __doc__.split("\n\n")[1]


@dataclass
class Run:
    label: str
    path: Path  # the eval_info.json
    info: dict[str, Any]  # load_eval_info output

    @property
    def by_task(self) -> dict[str, EvalResult]:
        return {r.task: r for r in self.info["per_task"]}


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Load each RUN; labels are the run directories' names, made unique with their parents."""
    if not paths:
        raise ValueError("compare needs at least one RUN (an eval_info.json or a directory holding one)")
    files = [find_eval_info(p) for p in paths]
    dirs = [Path(p).resolve().parent if Path(p).is_file() else Path(p).resolve() for p in paths]
    labels = [d.name for d in dirs]
    depth = 2
    while len(set(labels)) < len(labels) and depth < 8:  # disambiguate with parent directories
        labels = ["/".join(d.parts[-depth:]) for d in dirs]
        depth += 1
    return [Run(label, f, load_eval_info(f)) for label, f in zip(labels, files)]


def _cell(r: EvalResult | dict | None) -> str:
    if r is None:
        return "-"
    if isinstance(r, dict):
        rate, lo, hi, k, n = r["success_rate"], r["ci_low"], r["ci_high"], r["successes"], r["episodes"]
    else:
        rate, lo, hi, k, n = r.success_rate, r.ci_low, r.ci_high, r.successes, r.n_episodes
    return f"{rate:.1%} [{lo:.1%}, {hi:.1%}] ({k}/{n})"


def tasks_of(runs: list[Run]) -> list[str]:
    tasks: list[str] = []
    for run in runs:
        tasks += [t for t in run.by_task if t not in tasks]
    return tasks


def markdown_table(runs: list[Run]) -> str:
    """Success per task (rows) and run (columns), then per-run details."""
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|")

    head = "| task | " + " | ".join(esc(r.label) for r in runs) + " |"
    rule = "|---|" + "---|" * len(runs)
    rows = [f"| {esc(t)} | " + " | ".join(_cell(r.by_task.get(t)) for r in runs) + " |" for t in tasks_of(runs)]
    rows.append("| **overall** | " + " | ".join(_cell(r.info["overall"]) for r in runs) + " |")
    details = ["| run | policy | checkpoint | episodes | mean length | mean reward | eval_info |", "|---|---|---|---|---|---|---|"]
    for r in runs:
        o = r.info["overall"]
        details.append(f"| {esc(r.label)} | {esc(r.info.get('policy', '?'))} | {esc(r.info.get('checkpoint', '?'))} | "
                       f"{o['episodes']} | {o['mean_length']:.1f} | {o['mean_reward']:.2f} | {esc(r.path)} |")
    note = "Success rate [Wilson 95% interval] (successes/episodes)."
    return "\n".join([head, rule, *rows, "", note, "", *details]) + "\n"


def plot_compare(path: str | Path, runs: list[Run]) -> Path:
    """Grouped bars: one group per task (+ overall), one bar per run, Wilson 95% error bars."""
    from matplotlib.figure import Figure

    tasks = tasks_of(runs)
    labels = tasks + (["overall"] if len(tasks) > 1 else [])
    series = []
    for run in runs:
        results: list[EvalResult | None] = [run.by_task.get(t) for t in tasks]
        if len(tasks) > 1:
            o = run.info["overall"]
            results.append(EvalResult(task="overall", policy="", seed=0, success_rate=o["success_rate"],
                                      ci_low=o["ci_low"], ci_high=o["ci_high"], mean_length=o["mean_length"],
                                      mean_reward=o["mean_reward"], episodes=[]))
        series.append((run.label, results))
    fig = Figure(figsize=(max(5.0, 1.2 * len(labels) * max(1, len(runs)) ** 0.5 + 2), 3.8))
    ax = fig.subplots()
    success_bars(ax, labels, series)
    ax.set_title("success rate per task")
    atomic_write_bytes(path, _figure_png(fig))
    return Path(path)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + USAGE)
        return 0
    paths, opts = [], {"out": None, "plot": None}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in opts:
            opts[key] = value
        elif sep and not Path(arg).exists():
            print(f"policystack compare: unknown option {key!r}; valid: {', '.join(opts)} (and RUN paths)",
                  file=sys.stderr)
            return 2
        else:
            paths.append(arg)
    try:
        runs = load_runs(paths)
    except (FileNotFoundError, ValueError) as e:
        print(f"policystack compare: {e}", file=sys.stderr)
        return 2
    table = markdown_table(runs)
    print(table)
    if opts["out"]:
        atomic_write_bytes(opts["out"], table.encode())
        print(f"table: {opts['out']}")
    plot = Path(opts["plot"] or (Path(opts["out"]).with_suffix(".png") if opts["out"] else "compare.png"))
    plot_compare(plot, runs)
    print(f"plot:  {plot}")
    return 0
