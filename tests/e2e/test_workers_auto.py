"""``serve --workers auto`` (the production default in deploy/): one worker per CPU this process may use,
each enforcing its share of every limit as with an explicit ``--workers N``."""

from __future__ import annotations

import os
from collections.abc import Callable

import httpx
import pytest

from regiongate.app.cli import available_cpus, workers_arg
from tests.support.procs import Proc
from tests.support.scale import FAST_SIM, world


def test_auto_is_the_cpus_this_process_may_use() -> None:
    assert workers_arg("auto") == available_cpus() >= 1
    assert available_cpus() <= len(os.sched_getaffinity(0))
    assert workers_arg("3") == 3
    for bad in ("0", "-1", "many"):
        with pytest.raises(Exception, match="worker"):
            workers_arg(bad)


def test_serve_workers_auto_starts_one_worker_per_cpu(start_gateway: Callable[..., Proc]) -> None:
    n = available_cpus()
    limit = 6 * n
    gw = start_gateway(world({"us-east-1": [FAST_SIM]}, limit=limit), args=["--workers", "auto"])
    seen = set()
    for _ in range(8 * n):  # each new connection lands on some worker; every one reports its share
        with httpx.Client() as h:
            text = h.get(gw.url + "/metrics").text
        seen |= {
            line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith("regiongate_capacity_limit{")
        }
    assert seen == {f"{limit // n:.1f}"}  # the limit split over n workers: n of them are serving
