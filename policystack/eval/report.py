"""What an evaluation leaves on disk: ``eval_info.json`` and a PNG plot (episode MP4s are written by
the runner with ``policystack.io.write_video``).

``eval_info.json`` (format_version 1)::

    {"format_version": 1, "policy": "bc", "checkpoint": "runs/x/checkpoints/002000/pretrained",
     "created": "2025-01-01T12:00:00+00:00",
     "overall": {"episodes", "successes", "success_rate", "ci_low", "ci_high", "mean_length", "mean_reward"},
     "per_task": [EvalResult.to_dict(), ...],     # one entry per task, with its episode records
     "detector": {...}}   # with eval detector=DIR only: eval.metrics.detector_summary over every episode

Every file is written atomically (temp file, fsync, rename). Plots use matplotlib's object API
(``matplotlib.figure.Figure``, no pyplot global state, no display needed).
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from policystack.eval.metrics import detector_summary, summarize
from policystack.eval.runner import EvalResult
from policystack.io import atomic_write_bytes, atomic_write_json

EVAL_INFO = "eval_info.json"
PLOT_NAME = "eval.png"
FORMAT_VERSION = 1


# --- eval_info.json ------------------------------------------------------------------------------
def overall(results: Sequence[EvalResult]) -> dict[str, Any]:
    """Summary over every episode of every task (Wilson interval on the pooled episodes)."""
    eps = [e for r in results for e in r.episodes]
    return summarize([e.success for e in eps], [e.length for e in eps], [e.reward for e in eps])


def eval_info(results: Sequence[EvalResult], checkpoint: str) -> dict[str, Any]:
    if not results:
        raise ValueError("eval_info needs at least one EvalResult")
    eps = [e for r in results for e in r.episodes]
    return {
        "format_version": FORMAT_VERSION,
        "policy": results[0].policy,
        "checkpoint": checkpoint,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "overall": overall(results),
        **({"detector": detector_summary([e.detector_done for e in eps], [e.success for e in eps])}
           if all(r.detector is not None for r in results) else {}),
        "per_task": [r.to_dict() for r in results],
    }


def write_eval_info(out_dir: str | Path, results: Sequence[EvalResult], checkpoint: str) -> Path:
    """Write ``<out_dir>/eval_info.json`` atomically; returns its path."""
    path = Path(out_dir) / EVAL_INFO
    atomic_write_json(path, eval_info(results, checkpoint))
    return path


def load_eval_info(path: str | Path) -> dict[str, Any]:
    """Read an eval_info.json, checking its shape; ``per_task`` entries become EvalResults."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such eval_info.json")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(info, dict) or "per_task" not in info or not isinstance(info["per_task"], list):
        raise ValueError(f"{path}: not an eval_info.json (expected an object with a 'per_task' list)")
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {info.get('format_version')!r}, expected {FORMAT_VERSION}")
    info["per_task"] = [EvalResult.from_dict(r, f"{path}: per_task[{i}]") for i, r in enumerate(info["per_task"])]
    return info


def find_eval_info(path: str | Path) -> Path:
    """The eval_info.json that ``path`` names: the file itself, ``<dir>/eval_info.json``, or the
    newest one below a run directory (the last in natural path order, so ``eval/step_002000``
    comes after ``eval/step_500``)."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / EVAL_INFO).is_file():
        return path / EVAL_INFO
    if path.is_dir():
        found = sorted(path.rglob(EVAL_INFO), key=_natural_key)
        if found:
            return found[-1]
        raise FileNotFoundError(f"{path}: no {EVAL_INFO} in this directory or below it "
                                f"(run `policystack eval checkpoint=... out=...` first)")
    raise FileNotFoundError(f"{path}: no such file or directory")


def _natural_key(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


# --- plots -------------------------------------------------------------------------------------
def _figure_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def success_bars(ax, labels: Sequence[str], series: Sequence[tuple[str, Sequence[EvalResult | None]]]) -> None:
    """Grouped bars of success rate (%) with Wilson 95% error bars on ``ax``: one group per label,
    one bar per series (name, one result or None per label)."""
    n = max(len(series), 1)
    width = 0.8 / n
    x = np.arange(len(labels))
    for j, (name, results) in enumerate(series):
        rate = np.array([r.success_rate if r else np.nan for r in results]) * 100
        low = np.array([r.success_rate - r.ci_low if r else 0.0 for r in results]) * 100
        high = np.array([r.ci_high - r.success_rate if r else 0.0 for r in results]) * 100
        with warnings.catch_warnings():  # matplotlib 3.11 + numpy 2: a DeprecationWarning inside errorbar
            warnings.simplefilter("ignore", DeprecationWarning)
            ax.bar(x + (j - (n - 1) / 2) * width, rate, width, yerr=np.vstack([low, high]), capsize=3,
                   label=name or None)
    ax.set_xticks(x, labels, rotation=20 if len(labels) > 3 else 0)
    ax.set_ylim(0, 105)
    ax.set_ylabel("success rate (%)  [Wilson 95%]")
    if len(series) > 1:
        ax.legend(fontsize="small")


def plot_eval(path: str | Path, results: Sequence[EvalResult], title: str = "") -> Path:
    """PNG with (left) success rate per task with Wilson 95% error bars and (right) every episode's
    length, green for successes, red for failures."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
    success_bars(ax1, [r.task for r in results], [("", list(results))])
    for r in results:
        ax1.annotate(f"{r.successes}/{r.n_episodes}", (results.index(r), r.ci_high * 100 + 1), ha="center",
                     fontsize="small")
    offset = 0
    for r in results:
        idx = np.arange(r.n_episodes) + offset
        ok = np.array([e.success for e in r.episodes], bool)
        lengths = np.array([e.length for e in r.episodes])
        ax2.scatter(idx[ok], lengths[ok], c="tab:green", s=14, label="success" if offset == 0 else None)
        ax2.scatter(idx[~ok], lengths[~ok], c="tab:red", s=14, marker="x", label="failure" if offset == 0 else None)
        if len(results) > 1:
            ax2.axvline(offset - 0.5, color="grey", lw=0.5)
            ax2.text(offset, ax2.get_ylim()[1], r.task, fontsize="x-small", va="top")
        offset += r.n_episodes
    ax2.set_xlabel("episode")
    ax2.set_ylabel("length (steps)")
    ax2.legend(fontsize="small")
    fig.suptitle(title or f"{results[0].policy}: success {overall(results)['success_rate']:.0%}")
    atomic_write_bytes(path, _figure_png(fig))
    return Path(path)


def write_report(out_dir: str | Path, results: Sequence[EvalResult], checkpoint: str) -> dict[str, Path]:
    """eval_info.json + eval.png in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    info = write_eval_info(out_dir, results, checkpoint)
    plot = plot_eval(out_dir / PLOT_NAME, results, title=f"{results[0].policy} ({checkpoint})")
    return {"eval_info": info, "plot": plot}
