"""stats.py on inputs whose answers are known by hand."""

from __future__ import annotations

import logging
import math

import pytest

from mlenergy.diffusion.output import analysis
from mlenergy.diffusion.results import stats


def test_summary_of_one_to_ten():
    s = stats.summarize(range(1, 11))
    assert s["n"] == 10 and s["mean"] == 5.5 and s["median"] == 5.5
    # Linear interpolation between closest ranks: position 0.9 * 9 = 8.1 -> 9 + 0.1.
    assert s["p90"] == pytest.approx(9.1) and s["p99"] == pytest.approx(9.91)
    assert (s["min"], s["max"]) == (1, 10)
    assert s["stdev"] == pytest.approx(math.sqrt(55 / 6))
    half = 2.2622 * math.sqrt(55 / 6) / math.sqrt(10)
    assert s["ci95"] == pytest.approx([5.5 - half, 5.5 + half], abs=1e-4)
    assert s["cv"] == pytest.approx(math.sqrt(55 / 6) / 5.5)


def test_one_value_has_no_spread():
    s = stats.summarize([4.0])
    assert s["mean"] == s["median"] == s["p90"] == s["p99"] == 4.0
    assert s["stdev"] is None and s["ci95"] is None and s["cv"] is None
    assert stats.is_steady([4.0]) is None
    with pytest.raises(ValueError):
        stats.summarize([])


@pytest.mark.parametrize("df,t", [(1, 12.7062), (2, 4.3027), (9, 2.2622), (30, 2.0423),
                                  (40, 2.0211), (100, 1.9840), (1000, 1.9623)])
def test_student_t_quantiles(df, t):
    assert stats.t_quantile_975(df) == pytest.approx(t, abs=2e-4)


def test_percentile_matches_closest_rank_interpolation():
    values = [15, 20, 35, 40, 50]
    assert stats.percentile(values, 0) == 15 and stats.percentile(values, 100) == 50
    assert stats.percentile(values, 40) == pytest.approx(29.0)  # position 1.6: 20 + 0.6 * 15
    assert stats.percentile([3, 1, 2], 50) == 2  # unsorted input


def test_steadiness_flag_and_warning(caplog):
    steady = [10.0, 10.1, 9.9, 10.0]
    unsteady = [10.0, 10.0, 10.0, 13.0]
    assert stats.is_steady(steady) is True and stats.is_steady(unsteady) is False
    with caplog.at_level(logging.WARNING, logger="mlenergy.diffusion"):
        latency, energy, steadiness = analysis.per_image_statistics(
            unsteady, [100.0, 101.0, 99.0, 100.0], batch_size=2)
    assert steadiness.steady is False
    assert steadiness.latency_cv > 0.05 and steadiness.energy_cv < 0.05
    assert latency.mean == pytest.approx(10.75 / 2)
    assert energy.mean == pytest.approx(50.0)
    assert "not steady" in caplog.text and "latency" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mlenergy.diffusion"):
        _, energy, steadiness = analysis.per_image_statistics(steady, [None] * 4, batch_size=1)
    assert steadiness.steady is True and energy is None
    assert "not steady" not in caplog.text


def test_held_integral():
    constant = [(t / 10, 100.0) for t in range(101)]  # 100 W for 10 s, sampled at 10 Hz
    assert stats.held_integral(constant) == pytest.approx(1000.0)
    assert stats.held_integral(constant, 2.05, 3.05) == pytest.approx(100.0)
    # Deduplicated samples: 100 W until t=2, then 300 W; the value holds past the last sample.
    steps = [(0.0, 100.0), (2.0, 300.0)]
    assert stats.held_integral(steps, 1.0, 3.0) == pytest.approx(100.0 + 300.0)
    assert stats.held_integral(steps, 2.5, 4.0) == pytest.approx(450.0)
    assert stats.held_integral(steps, -1.0, 1.0) is None  # power before the first sample unknown
    assert stats.held_integral([]) is None
