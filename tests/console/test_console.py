"""The console end to end in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium with
no browser download): sign in, the models x regions matrix, live region status, the usage chart, and a
revoked key being signed out. Saves ``test-artifacts/console.png``; with REGIONGATE_DOCS_SCREENSHOT=1 it also
writes ``docs/console.png`` for the README."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from regiongate.config import load_config
from regiongate.control.ops import Operations
from regiongate.control.store import open_store
from regiongate.core import Grant
from regiongate.pipeline.usage import UsageRecord
from tests.support.control import ADMIN_KEY, admin, chat, control_config, poll

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parents[2]
GRANTS = (
    Grant("grok-4"),
    Grant("grok-4-fast"),
    Grant("grok-3-mini", "us-east-1"),
    Grant("grok-3-mini", "us-west-2"),
)


def require_chromium() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        msg = f"missing {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + "; .ci/run installs them")
        pytest.skip(msg)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    require_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,900",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def seed(db: Path) -> tuple[str, dict[str, int]]:
    """A team with grants and a tier allow-list, one flex key and two weeks of usage (grok-4's at flex),
    written before the gateway starts; the requests seeded per tier."""

    async def run() -> str:
        store = open_store(f"sqlite:///{db}")
        try:
            await store.migrate()
            ops = Operations(store, load_config(None))
            await ops.create_team("acme", GRANTS, service_tiers=["default", "flex"])
            _, secret = await ops.create_key("acme", "console", service_tier="flex")
            now = time.time()
            records = []
            for day in range(1, 14):
                for model, region, base in (
                    ("grok-4", "us-east-1", 40),
                    ("grok-4-fast", "eu-west-1", 25),
                    ("grok-3-mini", "us-west-2", 12),
                ):
                    for i in range(base + (day * 7 + len(model) * 3) % 23):
                        at = now - day * 86400 + i
                        rec = (f"r{day}-{model}-{i}", "acme", "key", model, "global", region, "nearest")
                        tier = "flex" if model == "grok-4" else "default"
                        records.append(UsageRecord(*rec, 200, 30, 120, 85.0, 900.0, at, tier=tier))
            await store.write_usage(records)
            tiers: dict[str, int] = {}
            for r in records:
                tiers[r.tier] = tiers.get(r.tier, 0) + 1
            return secret, tiers
        finally:
            await store.aclose()

    return asyncio.run(run())


def text_of(driver: Any, css: str) -> str:
    """Read in one script call: the page re-renders live parts every few seconds (no stale elements)."""
    return str(
        driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", css
        )
    )


def attrs(driver: Any, css: str, name: str) -> list[str]:
    script = "return [...document.querySelectorAll(arguments[0])].map(e => e.getAttribute(arguments[1]))"
    return [str(v) for v in driver.execute_script(script, css, name)]


def save_full_page(driver: Any, path: Path) -> None:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1},
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def test_console_in_headless_chromium(start_gateway: Any, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    key, seeded = seed(tmp_path / "data" / "control.db")  # the gateway's store (conftest sets its data dir)
    gw = start_gateway(control_config(refresh_s=0.5), env={"REGIONGATE_ADMIN_KEY": ADMIN_KEY})
    d = browser
    d.get(gw.url + "/console")  # redirects to /console/
    assert d.title == "regiongate console"

    # A wrong key is refused with a message; the right one opens the dashboard.
    d.find_element(By.ID, "api-key").send_keys("rg-not-a-key")
    d.find_element(By.ID, "signin-button").click()
    poll(lambda: d.find_element(By.ID, "signin-error").is_displayed(), timeout=40)
    assert "not valid" in text_of(d, "#signin-error")
    field = d.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    d.find_element(By.ID, "signin-button").click()
    poll(lambda: d.find_elements(By.CSS_SELECTOR, "#matrix tbody tr"), timeout=40)
    assert text_of(d, "#team-title") == "Team acme"
    assert text_of(d, "#who-team") == "acme"

    # The matrix: only granted models; grok-3-mini only in the two US regions; global reaches all three.
    assert attrs(d, "#matrix tbody tr", "data-model") == ["grok-3-mini", "grok-4", "grok-4-fast"]

    def offered(model: str) -> list[str]:
        return attrs(d, f'#matrix tr[data-model="{model}"] td[data-offered="yes"]', "data-region")

    assert offered("grok-3-mini") == ["us-east-1", "us-west-2", "global"]
    assert offered("grok-4") == [
        "us-east-1",
        "us-west-2",
        "eu-west-1",
        "eu-central-1",
        "ap-northeast-1",
        "global",
    ]
    assert "ap-southeast-2" in offered("grok-4-fast")
    assert text_of(d, "#stat-models") == "3"

    # Service tiers: the team's allow-list, the key's default, and the seeded usage split by tier.
    assert attrs(d, '#tiers .tier[data-allowed="yes"]', "data-tier") == ["default", "flex"]
    assert attrs(d, '#tiers .tier[data-allowed="no"]', "data-tier") == ["priority"]
    assert "this key's default" in text_of(d, '#tiers .tier[data-tier="flex"]')
    assert "default" not in text_of(d, '#tiers .tier[data-tier="default"] .tier-note')
    poll(lambda: attrs(d, "#tier-table tbody tr", "data-tier") == ["default", "flex"], timeout=40)
    for tier, n in seeded.items():
        assert text_of(d, f'#tier-table tr[data-tier="{tier}"] .requests') == f"{n:,}"

    # Live status: six region cards; Frankfurt has no TTFT yet, then traffic there shows up without a reload.
    assert len(attrs(d, "#regions .region", "data-region")) == 6
    assert text_of(d, '.region[data-region="eu-central-1"] .ttft') == "—"
    assert text_of(d, '.region[data-region="eu-central-1"] .capacity') == "0 / 16"
    d.execute_script("window.__notReloaded = true")
    for _ in range(3):
        assert chat(gw, key, "grok-4", host="eu-central-1.localhost", stream=True).status_code == 200
    poll(lambda: re.fullmatch(r"\d+ ms", text_of(d, '.region[data-region="eu-central-1"] .ttft')), timeout=40)
    assert d.execute_script("return window.__notReloaded") is True
    assert "Live" in text_of(d, "#live-text")

    # The usage chart draws the seeded fortnight, stacked by model.
    assert len(set(attrs(d, "#usage-chart rect", "data-day"))) == 13
    assert set(attrs(d, "#usage-chart rect", "data-model")) == {"grok-4", "grok-4-fast", "grok-3-mini"}
    assert int(text_of(d, "#stat-requests").replace(",", "")) > 1000

    # Every resource the page loaded came from the gateway itself (no CDN, no external font or script).
    urls = d.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(gw.url + "/") for u in urls), urls
    # No CSP violation, failed asset or script error (the wrong key's 401 above is expected).
    errors = [
        e for e in d.get_log("browser") if e["level"] == "SEVERE" and "status of 401" not in e["message"]
    ]
    assert errors == [], errors
    save_full_page(d, ROOT / "test-artifacts" / "console.png")
    if os.environ.get("REGIONGATE_DOCS_SCREENSHOT") == "1":
        save_full_page(d, ROOT / "docs" / "console.png")

    # Revoking the key signs the console out within seconds, with a message.
    key_id = admin(gw, "GET", "/admin/keys?team=acme").json()["data"][0]["id"]
    assert admin(gw, "DELETE", f"/admin/keys/{key_id}").status_code == 200
    poll(lambda: d.find_element(By.ID, "signin").is_displayed(), timeout=40)
    assert "no longer accepted" in text_of(d, "#signin-error")
