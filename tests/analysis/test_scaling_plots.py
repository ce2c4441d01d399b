import numpy as np

from qkvlab.analysis.scaling_plots import loglog_interp


def test_loglog_interp_is_exact_on_a_power_law_inside_and_beyond_the_rungs():
    xs = [1e10, 1e11, 1e12]
    ys = [5.0 * x**-0.1 for x in xs]
    x = np.array([3e9, 4e10, 5e11, 1e13])
    assert np.allclose(loglog_interp(x, xs, ys), 5.0 * x**-0.1)
