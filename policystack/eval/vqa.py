"""Vision-language accuracy of a policy that answers in text (``RT2Policy.answer``) on a dataset written by
``policystack vqa``: held-out scenes (another seed range than the training examples).

    from policystack.eval.vqa import evaluate_vqa
    report = evaluate_vqa(policy, "data/vqa_heldout", limit=400)
    report["kinds"]["point"]["accuracy"], report["overall"]

Each example's kind comes from its question (``envs.vqa.question_kind``). An answer is right when it equals
the reference (whitespace and case aside), except pointing: the answer must parse as "(x, y)" and lie
within ``POINT_TOLERANCE`` (in image fractions; 0.05 = 5 px of a 96 px frame) of the object's centre; its
mean distance is reported too (an unparsable answer counts as wrong, distance 1). Captions ("a red ball,
an orange cube and a blue ball", left to right) also get object recall and precision: the objects named
right, of the reference's and of the answer's, order aside. ``majority_baseline``
gives, per kind, the accuracy of always answering the training set's most frequent answer to the same
question (pointing: the training set's mean point), the floor a model must beat.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from policystack.datasets.vqa import split_vl_task
from policystack.envs.vqa import question_kind

POINT_TOLERANCE = 0.05
_POINT = re.compile(r"\(\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\)")


def parse_point(text: str) -> tuple[float, float] | None:
    m = _POINT.search(text)
    if not m:
        return None
    try:
        return float(m.group(1)), float(m.group(2))
    except ValueError:
        return None


def score(question: str, reference: str, answer: str) -> tuple[bool, float | None]:
    """(right, pointing distance or None) of one answer."""
    if question_kind(question) == "point":
        ref, got = parse_point(reference), parse_point(answer)
        dist = 1.0 if got is None else float(np.hypot(got[0] - ref[0], got[1] - ref[1]))
        return dist <= POINT_TOLERANCE, dist
    return answer.strip().lower() == reference.strip().lower(), None


def caption_objects(text: str) -> Counter:
    """The objects a caption names (``envs.vqa`` captions: "a red ball, an orange cube and a blue ball"), as
    a multiset of "colour kind" strings."""
    items = re.split(r",\s*|\s+and\s+", text.strip().lower().rstrip("."))
    return Counter(re.sub(r"^(a|an)\s+", "", i).strip() for i in items if i.strip() and i.strip() != "nothing")


def _examples(root: str | Path, cameras: list[str], limit: int | None):
    from policystack.datasets.loader import WindowedDataset

    ds = WindowedDataset(root, keys=cameras, cache_dir=False)
    n = len(ds) if limit is None else min(limit, len(ds))
    return ds, np.linspace(0, len(ds) - 1, n).round().astype(int)  # spread over the scenes


def _summary(rows: list[tuple[str, bool, float | None]]) -> dict[str, Any]:
    kinds: dict[str, dict[str, Any]] = {}
    for kind in sorted({k for k, _, _ in rows}):
        mine = [(r, d) for k, r, d in rows if k == kind]
        kinds[kind] = {"n": len(mine), "correct": sum(r for r, _ in mine), "accuracy": float(np.mean([r for r, _ in mine]))}
        if kind == "point":
            kinds[kind]["mean_distance"] = float(np.mean([d for _, d in mine]))
    return {"kinds": kinds, "n": len(rows), "overall": float(np.mean([r for _, r, _ in rows])) if rows else 0.0}


@torch.no_grad()
def evaluate_vqa(policy, root: str | Path, limit: int | None = None, batch_size: int = 16) -> dict[str, Any]:
    """Ask ``policy`` (with ``answer(images, questions)``) every example of ``root`` (or ``limit`` of them,
    spread over the dataset); returns per-kind counts and accuracy, the overall accuracy and the answers."""
    cameras = list(policy.camera_keys)
    ds, idx = _examples(root, cameras, limit)
    rows, answers = [], []
    named = {"right": 0, "reference": 0, "answer": 0}  # caption objects
    for i in range(0, len(idx), batch_size):
        batch = ds.get_batch(idx[i:i + batch_size])
        qa = [split_vl_task(t) for t in batch["task"]]
        got = policy.answer({k: batch[k] for k in cameras}, [q for q, _ in qa])
        for (q, ref), a in zip(qa, got):
            right, dist = score(q, ref, a)
            rows.append((question_kind(q), right, dist))
            if rows[-1][0] == "caption":
                ref_objs, got_objs = caption_objects(ref), caption_objects(a)
                named["right"] += sum((ref_objs & got_objs).values())
                named["reference"] += sum(ref_objs.values())
                named["answer"] += sum(got_objs.values())
            answers.append({"question": q, "reference": ref, "answer": a, "right": right})
    summary = _summary(rows)
    if "caption" in summary["kinds"]:
        summary["kinds"]["caption"].update(object_recall=named["right"] / max(named["reference"], 1),
                                           object_precision=named["right"] / max(named["answer"], 1))
    return {**summary, "answers": answers}


def majority_baseline(train_root: str | Path, test_root: str | Path) -> dict[str, Any]:
    """Per kind, the accuracy on ``test_root`` of answering each question with the answer the training set
    gives it most often (a question never seen in training: the kind's most frequent answer; pointing:
    the mean point of the question's training answers)."""
    from policystack.datasets.meta import DatasetMeta

    def qa_of(root):
        meta = DatasetMeta.load(root)
        return [split_vl_task(t) for t in meta.tasks]

    train_meta = DatasetMeta.load(train_root)
    counts = _task_counts(train_meta)
    by_question: dict[str, Counter] = defaultdict(Counter)
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for task, n in counts.items():
        q, a = split_vl_task(task)
        by_question[q][a] += n
        by_kind[question_kind(q)][a] += n
    rows = []
    test_meta = DatasetMeta.load(test_root)
    for task, n in _task_counts(test_meta).items():
        q, ref = split_vl_task(task)
        kind = question_kind(q)
        if kind == "point":
            pts = [parse_point(a) for a, c in by_question.get(q, by_kind[kind]).items() for _ in range(c)]
            guess = "({:.2f}, {:.2f})".format(*np.mean([p for p in pts if p], axis=0))
        else:
            guess = (by_question.get(q) or by_kind[kind]).most_common(1)[0][0]
        right, dist = score(q, ref, guess)
        rows += [(kind, right, dist)] * n
    return _summary(rows)


def _task_counts(meta) -> Counter:
    """task text -> number of frames carrying it."""
    from policystack.datasets.meta import read_parquet

    counts: Counter = Counter()
    for path in meta.data_files():
        for t in read_parquet(path, columns=["task_index"]).column("task_index").to_pylist():
            counts[meta.tasks[t]] += 1
    return counts
