"""Outlier ejection with half-open recovery (``regiongate.state.outlier``), on a fake clock."""

from __future__ import annotations

from regiongate.state.outlier import Outlier


def test_half_open_after_ejection_one_trial() -> None:
    o = Outlier(consecutive=2, base_s=5.0)
    assert not o.failure(0.0) and o.failure(0.1)  # ejected until 5.1
    assert o.ejected(5.0) and not o.ejected(5.2)
    o.begin(5.2)  # the trial request
    assert o.ejected(5.3)  # others keep away while it runs
    assert o.failure(5.4)  # the trial failed: ejected again at once, for twice as long
    assert o.ejected(15.3) and not o.ejected(15.5)
    o.begin(15.5)
    o.success()
    assert not o.ejected(15.6) and o.ejections == 0
