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
