"""Success-rate statistics: the Wilson score interval and summaries of episode records.

The Wilson interval (Wilson 1927) for k successes in n Bernoulli trials at normal quantile z:

    p = k / n
    centre    = (p + z^2 / (2n)) / (1 + z^2 / n)
    half      = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))
    interval  = [centre - half, centre + half]

Unlike the normal ("Wald") interval it stays inside [0, 1] and is not degenerate at k = 0 or
k = n, which matters for the small episode counts of robot evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Z_95 = 1.959963984540054  # the 97.5% quantile of the standard normal (two-sided 95%)


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """(low, high) Wilson score interval of the success probability; (0, 1) when n == 0."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # clamp rounding noise (the exact interval always lies in [0, 1] and contains p)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def summarize(successes: Sequence[bool], lengths: Sequence[int], rewards: Sequence[float]) -> dict[str, Any]:
    """Aggregate episode outcomes: episodes, successes, success_rate, ci_low, ci_high (Wilson 95%),
    mean_length, mean_reward (mean over episodes of the summed reward)."""
    n, k = len(successes), int(sum(bool(s) for s in successes))
    low, high = wilson_interval(k, n)
    return {
        "episodes": n,
        "successes": k,
        "success_rate": k / n if n else 0.0,
        "ci_low": low,
        "ci_high": high,
        "mean_length": float(sum(lengths) / n) if n else 0.0,
        "mean_reward": float(sum(rewards) / n) if n else 0.0,
    }


def detector_summary(verdicts: Sequence[bool], truths: Sequence[bool]) -> dict[str, Any]:
    """A success detector's verdicts against the simulator's ``is_success``, episode by episode:
    counts (tp, fp, tn, fn) and agreement, precision (of the "done" verdicts, how many were successes)
    and recall (of the successes, how many it called done), each with its Wilson 95% interval
    (``<name>_ci``); a rate with no denominator (no "done" verdict, no success) is None, interval (0, 1).
    ``majority`` is the agreement of always answering the more frequent truth (the floor to beat)."""
    if len(verdicts) != len(truths):
        raise ValueError(f"detector_summary: {len(verdicts)} verdicts but {len(truths)} truths; expected one each")
    pairs = [(bool(v), bool(t)) for v, t in zip(verdicts, truths)]
    tp = sum(v and t for v, t in pairs)
    fp = sum(v and not t for v, t in pairs)
    tn = sum(not v and not t for v, t in pairs)
    fn = sum(not v and t for v, t in pairs)
    out: dict[str, Any] = {"episodes": len(pairs), "tp": tp, "fp": fp, "tn": tn, "fn": fn}
    for name, k, n in (("agreement", tp + tn, len(pairs)), ("precision", tp, tp + fp), ("recall", tp, tp + fn)):
        out[name] = k / n if n else None
        out[f"{name}_ci"] = list(wilson_interval(k, n))
    positives = tp + fn
    out["majority"] = max(positives, len(pairs) - positives) / len(pairs) if pairs else None
    return out
