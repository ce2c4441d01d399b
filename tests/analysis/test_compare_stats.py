import math

import pytest
from scipy import stats

from qkvlab.analysis.stats import Agg, delta_pct, welch_p


def test_agg_mean_sample_std_and_single_seed():
    a = Agg.of([1.0, 2.0, 3.0, None, float("nan")])
    assert (a.mean, a.std, a.n) == (2.0, 1.0, 3)
    one = Agg.of([5.0])
    assert one.mean == 5.0 and math.isnan(one.std) and one.n == 1
    assert Agg.of([]).n == 0


def test_delta_pct():
    assert delta_pct(103.0, 100.0) == pytest.approx(3.0)
    assert math.isnan(delta_pct(1.0, float("nan")))


def test_welch_matches_scipy_and_needs_two_seeds():
    a, b = [1.0, 1.1, 0.9, 1.05], [1.3, 1.2, 1.5]
    assert welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert math.isnan(welch_p([1.0], b))
    assert welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0
