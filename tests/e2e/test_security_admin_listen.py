"""``serve --admin-listen``: the admin API and /metrics on their own address (issue 12, item 8)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.support.procs import DEMO_KEY, Proc, free_port
from tests.support.worlds import world

ADMIN_KEY = "rg-admin-listen-key-0123456789"


def test_admin_and_metrics_only_on_the_admin_listener(start_gateway: Callable[..., Proc]) -> None:
    admin_port = free_port()
    gw = start_gateway(
        world({"us-east-1": ['{ kind = "simulated", ttft_ms = 1 }']}),
        args=["--admin-listen", f"127.0.0.1:{admin_port}"],
        env={"REGIONGATE_ADMIN_KEY": ADMIN_KEY},
    )
    admin_url = f"http://127.0.0.1:{admin_port}"
    auth = {"authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(timeout=30) as c:
        chat = {"model": "grok-4", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        r = c.post(
            gw.url + "/v1/chat/completions", json=chat, headers={"authorization": f"Bearer {DEMO_KEY}"}
        )
        assert r.status_code == 200, r.text
        assert c.get(gw.url + "/metrics").status_code == 404
        assert c.get(gw.url + "/admin/teams", headers=auth).status_code == 404
        assert c.get(gw.url + "/.well-known/regiongate-keys.json").status_code == 200  # public by design
        m = c.get(admin_url + "/metrics")
        assert m.status_code == 200 and "regiongate_" in m.text
        assert c.get(admin_url + "/admin/teams", headers=auth).status_code == 200
        assert c.get(admin_url + "/admin/teams").status_code == 401
        assert c.post(admin_url + "/v1/chat/completions", json=chat).status_code == 404
