import math

import numpy as np
import pytest

from qkvlab.analysis.powerlaw import (
    FitError,
    PowerLaw,
    Rung,
    bootstrap,
    bootstrap_method,
    fit_power_law,
    interval,
    multiplier,
)


@pytest.mark.parametrize("E, A, alpha", [(1.5, 2e3, 0.25), (2.1, 40.0, 0.1), (0.8, 1e5, 0.4)])
def test_fit_recovers_constants_from_noisy_points(E, A, alpha):
    rng = np.random.default_rng(0)
    compute = np.logspace(11, 17, 7)
    loss = (E + A * compute**-alpha) * np.exp(rng.normal(0, 0.003, compute.size))
    law = fit_power_law(compute, loss)
    assert law.E == pytest.approx(E, abs=0.05)
    assert law.alpha == pytest.approx(alpha, rel=0.2)
    assert np.allclose(law.loss(compute), E + A * compute**-alpha, rtol=0.01)


def test_fit_needs_three_distinct_computes():
    with pytest.raises(FitError, match="3 distinct"):
        fit_power_law([1e12, 1e12, 1e13], [3.0, 3.1, 2.9])


def test_compute_for_inverts_loss_and_is_infinite_below_the_floor():
    law = PowerLaw(E=1.5, log_A=math.log(300.0), alpha=0.2)
    assert law.compute_for(float(law.loss(1e15))) == pytest.approx(1e15, rel=1e-9)
    assert law.compute_for(1.5) == math.inf


def test_multiplier_of_an_equal_law_is_one_and_of_a_shifted_law_is_the_shift():
    base = PowerLaw(E=1.5, log_A=math.log(300.0), alpha=0.2)
    assert multiplier(base, base, 1e14) == pytest.approx(1.0)
    # A law that needs twice the compute everywhere: L(C) = base(C / 2).
    slower = PowerLaw(E=1.5, log_A=math.log(300.0) + 0.2 * math.log(2), alpha=0.2)
    assert multiplier(slower, base, 1e14) == pytest.approx(2.0)


def test_bootstrap_method_says_when_no_interval_is_possible():
    one_seed = [Rung(f"r{i}", 10.0 ** (12 + i), (3.0 - 0.3 * i,)) for i in range(3)]
    assert bootstrap_method(one_seed) is None
    assert bootstrap(one_seed, 50, np.random.default_rng(0)) == (None, [])
    assert bootstrap_method(one_seed + [Rung("r3", 1e15, (2.0,))]) == "rungs"
    assert bootstrap_method([Rung(r.name, r.compute, (r.loss, r.loss * 1.01)) for r in one_seed]) == "seeds"


def test_interval_keeps_infinite_draws_infinite():
    lo, hi = interval([1.0, 1.1, 1.2, math.inf] * 10)
    assert lo == 1.0 and hi == math.inf
