"""``policystack detector``: score a success detector on held-out end-of-episode frames.

    policystack detector checkpoint=DIR data=DIR [threshold=0.5] [limit=N] [batch_size=32] [out=FILE]

``checkpoint``: a ``describer`` checkpoint (``perception/describe.py``); ``data``: a dataset written by
``policystack endframes`` on seeds the detector was not trained on. Every success example ("has the
robot done this: ...?" -> yes / no, the simulator's ``is_success`` of that frame) is judged from its
frames and instruction; the report (printed, and written as JSON to ``out``) holds agreement, precision
and recall with Wilson 95% intervals overall and per task (``eval.metrics.detector_summary``), the
agreement of always answering the majority label, the same for a label-free baseline per task (the
task's most frequent label), and the detector's probabilities' mean per label. ``policystack eval ...
detector=DIR`` judges live rollouts instead.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policystack.datasets.vqa import split_vl_task
from policystack.envs.vqa import SUCCESS_PREFIX, question_kind
from policystack.eval.metrics import detector_summary
from policystack.keyvalue import parse_key_values

USAGE = __doc__.split("\n\n")[1]


def task_of(instruction: str) -> str | None:
    """The suite task whose instruction wordings (templates, paraphrases) give ``instruction``; None if none."""
    from policystack.envs.scene import COLORS
    from policystack.envs.tasks import TASKS

    colours = "(" + "|".join(map(re.escape, COLORS)) + ")"
    for name, cls in TASKS.items():
        for template in (*getattr(cls, "templates", ()), *getattr(cls, "paraphrases", ())):
            if re.fullmatch(re.escape(template).replace(re.escape("{c}"), colours), instruction):
                return name
    return None


def success_examples(root: str | Path) -> tuple[Any, list[int]]:
    """The dataset (camera frames + task) and the indices of its success examples, in order."""
    from policystack.datasets.loader import WindowedDataset
    from policystack.datasets.meta import DatasetMeta, read_parquet

    meta = DatasetMeta.load(root)
    ds = WindowedDataset(root, keys=meta.camera_keys, cache_dir=False)
    order = []
    for path in meta.data_files():
        table = read_parquet(path, columns=["index", "task_index"])
        order += zip(table.column("index").to_pylist(), table.column("task_index").to_pylist())
    wanted = [i for i, t in sorted(order) if meta.tasks[t].startswith(SUCCESS_PREFIX)]
    if not wanted:
        raise ValueError(f"{root}: no success examples ('{SUCCESS_PREFIX}...?'); expected a dataset written by "
                         "`policystack endframes`")
    return ds, wanted


@torch.no_grad()
def evaluate_success(detector, root: str | Path, threshold: float = 0.5, limit: int | None = None,
                     batch_size: int = 32) -> dict[str, Any]:
    """Judge the success examples of ``root`` (``limit``: that many, spread over the dataset); see the
    module docstring for what the report holds."""
    ds, wanted = success_examples(root)
    if limit is not None:
        wanted = [wanted[i] for i in np.linspace(0, len(wanted) - 1, min(limit, len(wanted))).round().astype(int)]
    rows = []  # (task, instruction, truth, p)
    for s in range(0, len(wanted), batch_size):
        batch = ds.get_batch(wanted[s:s + batch_size])
        qa = [split_vl_task(t) for t in batch["task"]]
        if any(question_kind(q) != "success" for q, _ in qa):
            raise ValueError(f"{root}: frame indices and tasks disagree (a non-success example was read)")
        instructions = [q[len(SUCCESS_PREFIX):-1] for q, _ in qa]
        p = detector.success_probability({k: batch[k] for k in detector.camera_keys}, instructions)
        rows += [(task_of(t) or "other", t, a == "yes", float(x)) for t, (_, a), x in zip(instructions, qa, p)]

    def summary(mine: list[tuple]) -> dict[str, Any]:
        d = detector_summary([p >= threshold for *_, p in mine], [t for _, _, t, _ in mine])
        for label, name in ((True, "mean_p_successes"), (False, "mean_p_failures")):
            ps = [p for _, _, t, p in mine if t == label]
            d[name] = float(np.mean(ps)) if ps else None
        return d

    tasks = sorted({r[0] for r in rows})
    per_task = {t: summary([r for r in rows if r[0] == t]) for t in tasks}
    per_task_majority = sum(d["majority"] * d["episodes"] for d in per_task.values()) / len(rows)
    return {"root": str(root), "threshold": threshold, "overall": summary(rows), "per_task": per_task,
            "per_task_majority": per_task_majority}


@dataclass
class DetectorArgs:
    checkpoint: str
    data: str
    threshold: float = 0.5
    limit: int = 0  # 0: every success example
    batch_size: int = 32
    out: str = ""
    threads: int = 1

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold={self.threshold}: expected a probability in [0, 1]")
        for name in ("batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: expected >= 1")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + USAGE)
        return 0
    from policystack.eval.commands import detector_line, load_policy
    from policystack.io import atomic_write_json

    try:
        args = DetectorArgs(**parse_key_values(argv, DetectorArgs, required=("checkpoint", "data")))
        torch.set_num_threads(args.threads)
        detector = load_policy(args.checkpoint, "describer").eval()
        report = evaluate_success(detector, args.data, args.threshold, args.limit or None, args.batch_size)
    except (KeyError, ValueError, FileNotFoundError) as e:
        print(f"policystack detector: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    print(f"overall: {detector_line(report['overall'])}")
    for task, d in report["per_task"].items():
        print(f"{task}: {detector_line(d)}")
    print(f"per-task majority answer: {report['per_task_majority']:.1%}")
    if args.out:
        atomic_write_json(args.out, report)
        print(f"report: {args.out}")
    return 0
