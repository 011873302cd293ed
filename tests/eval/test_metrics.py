import math

import pytest

from policystack.eval.metrics import summarize, wilson_interval

# Reference values from scipy.stats.binomtest(k, n).proportion_ci(method="wilson") (z = 1.959964),
# which match statsmodels' proportion_confint(k, n, method="wilson").
KNOWN = [
    (0, 10, 0.0, 0.277533),
    (1, 10, 0.017876, 0.404150),
    (5, 10, 0.236593, 0.763407),
    (10, 10, 0.722467, 1.0),
    (18, 20, 0.698966, 0.972134),
    (81, 263, 0.255289, 0.366210),
]


@pytest.mark.parametrize("k,n,low,high", KNOWN)
def test_wilson_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=2e-6)
    assert hi == pytest.approx(high, abs=2e-6)


def test_wilson_properties():
    for n in (1, 3, 20, 100):
        for k in range(n + 1):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
    # symmetric: k successes <-> n - k failures
    lo, hi = wilson_interval(3, 17)
    lo2, hi2 = wilson_interval(14, 17)
    assert lo == pytest.approx(1 - hi2) and hi == pytest.approx(1 - lo2)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # wider at 99% than at 95%
    assert wilson_interval(5, 10, z=2.5758)[0] < wilson_interval(5, 10)[0]


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError, match="successes=11, n=10"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError):
        wilson_interval(-1, 10)


def test_summarize():
    s = summarize([True, False, True, True], [10, 50, 12, 8], [1.0, -2.0, 0.5, 0.5])
    assert s["episodes"] == 4 and s["successes"] == 3 and s["success_rate"] == 0.75
    assert (s["ci_low"], s["ci_high"]) == wilson_interval(3, 4)
    assert s["mean_length"] == 20.0 and math.isclose(s["mean_reward"], 0.0)


def test_detector_summary_counts_and_rates():
    from policystack.eval.metrics import detector_summary

    # 10 episodes: 4 successes; the detector says done on 3 of them and on 2 failures
    truths = [True] * 4 + [False] * 6
    verdicts = [True, True, True, False] + [True, True, False, False, False, False]
    d = detector_summary(verdicts, truths)
    assert (d["tp"], d["fp"], d["tn"], d["fn"]) == (3, 2, 4, 1)
    assert d["agreement"] == pytest.approx(7 / 10) and d["agreement_ci"] == list(wilson_interval(7, 10))
    assert d["precision"] == pytest.approx(3 / 5) and d["precision_ci"] == list(wilson_interval(3, 5))
    assert d["recall"] == pytest.approx(3 / 4) and d["recall_ci"] == list(wilson_interval(3, 4))
    assert d["majority"] == pytest.approx(6 / 10) and d["episodes"] == 10


def test_detector_summary_without_a_denominator_and_bad_input():
    from policystack.eval.metrics import detector_summary

    d = detector_summary([False, False], [False, False])  # never done, never a success
    assert d["agreement"] == 1.0 and d["precision"] is None and d["recall"] is None
    assert d["precision_ci"] == [0.0, 1.0] and d["majority"] == 1.0
    with pytest.raises(ValueError, match="3 verdicts but 2 truths"):
        detector_summary([True] * 3, [True] * 2)
