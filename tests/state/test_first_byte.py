"""The adaptive first-byte budget on its own (``regiongate.state.first_byte``)."""

from __future__ import annotations

import pytest

from regiongate.state.first_byte import MIN_SAMPLES, FirstByteBudget, parse_budget_ms


def test_budget_is_a_clamped_quantile_of_observed_ttfts() -> None:
    b = FirstByteBudget()
    for _ in range(MIN_SAMPLES - 1):
        b.add(100.0)
    assert b.budget_s(30.0, 5.0, 4.0) == 30.0  # too few samples: the ceiling
    b.add(100.0)
    assert b.budget_s(30.0, 5.0, 4.0) == 5.0  # 4 x 0.1 s is below the floor
    assert b.budget_s(30.0, 0.2, 4.0) == pytest.approx(0.4)
    for _ in range(200):
        b.add(20_000.0)  # the deployment got slow for good: the budget follows, up to the ceiling
    assert b.budget_s(30.0, 5.0, 4.0) == 30.0


def test_the_callers_budget_is_a_positive_number_of_ms() -> None:
    assert parse_budget_ms(None) is None and parse_budget_ms("250") == 250.0
    for bad in ("0", "-1", "nan", "x", "600001"):
        with pytest.raises(ValueError):
            parse_budget_ms(bad)
