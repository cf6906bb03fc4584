"""``tests.support.procs``: a run of ports handed to one server (``serve --region-ports``) is never handed
out again by the draws that follow, wherever the worker's counter stands in its block (a collision made
the quickstart tests' gateway fail to bind a region port it had been given)."""

from __future__ import annotations

import itertools

import pytest

from tests.support import procs


@pytest.mark.parametrize("start", [0, 700, 1490, 1495, 1499, 1527, 2990])
def test_a_run_of_ports_is_not_drawn_again(start: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(procs, "_next_port", itertools.count(start))
    monkeypatch.setattr(procs, "_free", lambda port: True)
    first = procs.free_ports(9)
    later = [procs.free_port() for _ in range(procs._BLOCK - 9)]
    assert not [p for p in later if first <= p < first + 9]
    assert len(set(later)) == len(later)
