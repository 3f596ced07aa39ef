"""caprobe.stats against hand-computed values (no wall clock anywhere)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caprobe.errors import CaprobeError
from caprobe.stats import (
    PairedDelta,
    mean_ci,
    median_ci_indices,
    paired_delta,
    ratio_ci,
    summarize,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [  # printed Student-t tables
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 4, 2.7764),
        (0.975, 9, 2.2622),
        (0.975, 30, 2.0423),
        (0.995, 5, 4.0321),
        (0.95, 10, 1.8125),
        (0.975, 1000, 1.9623),
    ],
)
def test_t_quantile_matches_tables(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=5e-5)
    assert t_quantile(1 - p, df) == pytest.approx(-expected, abs=5e-5)
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)


def test_t_quantile_cauchy_closed_form():
    # df = 1 is the Cauchy distribution: quantile = tan(pi (p - 1/2))
    for p in (0.6, 0.9, 0.99, 0.999):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)


def test_summarize_hand_computed():
    s = summarize([1, 2, 3, 4, 5])
    assert s.n == 5
    assert s.mean == 3.0
    assert s.std == pytest.approx(math.sqrt(2.5))
    assert (s.q1, s.median, s.q3, s.iqr) == (2.0, 3.0, 4.0, 2.0)
    assert s.p90 == pytest.approx(4.6)  # linear interpolation: 4 + 0.6 * (5 - 4)
    assert s.cv == pytest.approx(math.sqrt(2.5) / 3)
    assert (s.min, s.max) == (1.0, 5.0)


def test_summarize_even_count_and_unsorted():
    s = summarize([10, 1, 4, 7])  # sorted 1 4 7 10
    assert s.median == 5.5
    assert s.q1 == pytest.approx(3.25)  # 1 + 0.75 * 3
    assert s.q3 == pytest.approx(7.75)  # 7 + 0.25 * 3
    assert s.p90 == pytest.approx(9.1)  # 7 + 0.7 * 3


def test_summarize_single_sample_has_no_spread():
    s = summarize([2.5])
    assert s.n == 1 and s.median == 2.5 and s.iqr == 0.0
    assert math.isnan(s.std) and math.isnan(s.cv)


def test_mean_ci_known_sample():
    # mean 3, s = sqrt(2.5), n = 5, t_{0.975,4} = 2.776445 -> half width 1.963243
    lo, hi = mean_ci([1, 2, 3, 4, 5])
    assert lo == pytest.approx(3 - 1.963243, abs=1e-6)
    assert hi == pytest.approx(3 + 1.963243, abs=1e-6)
    # 90%: t_{0.95,4} = 2.131847 -> half width 1.507443
    lo, hi = mean_ci([1, 2, 3, 4, 5], confidence=0.90)
    assert hi - 3 == pytest.approx(1.507443, abs=1e-6)


def test_mean_ci_needs_two_values():
    assert mean_ci([3.0]) is None
    assert mean_ci([3.0, 3.0]) == (3.0, 3.0)


def test_paired_delta_hand_computed():
    a = [10.0, 12.0, 11.0, 13.0]
    b = [11.0, 14.0, 12.0, 15.0]  # differences 1 2 1 2: mean 1.5, s = sqrt(1/3)
    d = paired_delta(a, b)
    assert isinstance(d, PairedDelta)
    assert d.n == 4 and d.mean == pytest.approx(1.5)
    assert d.std == pytest.approx(math.sqrt(1 / 3))
    half = 3.182446 * math.sqrt(1 / 3) / 2  # t_{0.975,3}
    assert d.ci_low == pytest.approx(1.5 - half, abs=1e-5)
    assert d.ci_high == pytest.approx(1.5 + half, abs=1e-5)


def test_paired_delta_single_pair_has_no_interval():
    d = paired_delta([1.0], [1.5])
    assert d.n == 1 and d.mean == 0.5
    assert d.ci_low is None and d.ci_high is None and math.isnan(d.std)


def test_paired_delta_cancels_shared_drift():
    # a drifting machine: both variants slow down alike; pairing removes the drift
    drift = np.linspace(0, 5, 20)
    a = 10 + drift
    b = 11 + drift
    d = paired_delta(a, b)
    assert d.mean == pytest.approx(1.0) and d.ci_low == pytest.approx(1.0)


@pytest.mark.parametrize(("n", "expected"), [(5, None), (6, (0, 5)), (10, (1, 8)),
                                             (20, (5, 14)), (100, (39, 60))])
def test_median_ci_indices_binomial_table(n, expected):
    assert median_ci_indices(n, 0.95) == expected


def test_ratio_ci_median_of_pairwise_ratios():
    base = [10.0, 20.0, 10.0, 20.0, 10.0, 20.0, 10.0, 20.0, 10.0, 20.0]
    var = [11.0, 22.0, 12.0, 24.0, 10.5, 21.0, 13.0, 26.0, 11.5, 23.0]
    # ratios: 1.1 1.1 1.2 1.2 1.05 1.05 1.3 1.3 1.15 1.15 -> sorted, median 1.15
    point, lo, hi = ratio_ci(base, var)
    assert point == pytest.approx(1.15)
    assert (lo, hi) == (pytest.approx(1.05), pytest.approx(1.3))  # sorted[1], sorted[8]


def test_ratio_ci_too_few_pairs_gives_nan_bounds():
    point, lo, hi = ratio_ci([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert point == 2.0 and math.isnan(lo) and math.isnan(hi)


def test_ratio_ci_is_pairwise_not_pooled():
    # shared drift: per-pair ratio is exactly 1.5 whatever the drift
    base = list(np.linspace(1, 10, 12))
    var = [1.5 * b for b in base]
    assert ratio_ci(base, var) == (pytest.approx(1.5), pytest.approx(1.5), pytest.approx(1.5))


@pytest.mark.parametrize(
    "call",
    [
        lambda: summarize([]),
        lambda: summarize([1.0, float("nan")]),
        lambda: summarize(["x"]),
        lambda: mean_ci([1, 2], confidence=1.5),
        lambda: paired_delta([1, 2], [1]),
        lambda: ratio_ci([1, 0], [1, 1]),
        lambda: t_quantile(1.0, 3),
    ],
)
def test_bad_input_raises_caprobe_error(call):
    with pytest.raises(CaprobeError):
        call()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.1, 100.0), min_size=2, max_size=40),
       st.floats(0.5, 0.99))
def test_mean_ci_contains_mean_and_widens_with_confidence(xs, conf):
    lo, hi = mean_ci(xs, conf)
    m = float(np.mean(xs))
    assert lo <= m + 1e-9 and m - 1e-9 <= hi
    lo2, hi2 = mean_ci(xs, min(0.999, conf + 0.005))
    assert hi2 - lo2 >= hi - lo - 1e-9


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.1, 100.0), min_size=6, max_size=60))
def test_ratio_ci_brackets_point(xs):
    var = [x * 1.3 for x in reversed(xs)]
    point, lo, hi = ratio_ci(xs, var)
    assert lo <= point <= hi
