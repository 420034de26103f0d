"""The console end to end in a real headless browser (Debian's chromium
and chromedriver, driven by Selenium): ``forescale console`` serves a state
file in which a real approve-mode cycle (dry-run actuator) left a pending
plan; a person logs in, sees the plan, approves it; the next cycle applies
it and the page shows it applied. Run once with JavaScript on and once with
JavaScript off (a Chrome preference): the approve path needs no script.

Screenshots go to the test's tmp_path; with FORESCALE_UPDATE_SCREENSHOT=1
the first one also replaces docs/img/console.png.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from engine.core.clock import SystemClock
from tests.support import ROOT
from tests.support.console import ALICE_TOKEN, BOB_TOKEN, make_console_state, run_cycle
from tests.support.live import STEP, target_dict, write_config, write_trace
from tests.support.prom import free_port

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module", autouse=True)
def _need_browser():
    pytest.importorskip("selenium")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")


def browser(javascript: bool):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1180,1000", "--hide-scrollbars"):
        opts.add_argument(arg)
    if not javascript:
        opts.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    return drv


class ConsoleProcess:
    """``python -m engine.cli console --config FILE --listen 127.0.0.1:PORT``."""

    def __init__(self, cfg_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "console", "--config", str(cfg_path),
             "--listen", f"127.0.0.1:{self.port}", "--log-level", "WARNING"],
            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith(f"forescale console on {self.url}/"):
            self.close()
            raise AssertionError(f"forescale console did not start: {line}")
        import httpx

        for _ in range(200):  # uvicorn accepts once it has started
            try:
                httpx.get(self.url + "/login", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)

    def close(self) -> str:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out


def on_grid() -> datetime:
    """The latest 5-minute boundary (samples and cycles on the resampling grid)."""
    now = SystemClock().now()
    return now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 5)


def a_day_of_history(tmp_path: Path) -> tuple[Path, object]:
    """A day of daily-shaped load run through real cycles in auto mode (so
    the chart has a forecast band, scale events and capacity), then one
    cycle in approve mode on a rising edge, which leaves a pending plan."""
    from engine.build import build_targets
    from engine.config import load_config
    from engine.store import Store

    now = on_grid()
    n = 24 * 12 + 1
    start = now - (n - 1) * STEP
    values = [120 + 80 * math.sin(2 * math.pi * (i / 288 - 0.3)) + 6 * math.sin(i * 1.7) for i in range(n)]
    values[-3:] = [v * 1.9 for v in values[-3:]]  # a rising edge now: the last cycle plans a scale-up
    trace = write_trace(tmp_path / "load.csv", values, start=start)
    over = {"plan_ttl": "2h", "actuator": {"type": "dry-run", "initial_capacity": 20},
            "forecaster": {"name": "persistence", "history": "2h", "refit_every": "1h",
                           "quantiles": [0.5, 0.9]}}
    console = {"users": [{"name": "alice", "token_sha256": hashlib.sha256(ALICE_TOKEN.encode()).hexdigest()}], "secret": "browser-test-secret-123", "public_url": "http://x.test"}
    auto = write_config(tmp_path / "auto.yaml", [target_dict("web", trace, mode="auto", **over)], console=console)
    cfg = load_config(auto)
    with Store(cfg.state_path) as store:
        (live,) = build_targets(cfg, store)
        for k in range(12, n - 1, 3):  # every 15 minutes over the day (the first hour is history)
            live.run(start + k * STEP)
    approve = write_config(tmp_path / "forescale.yaml", [target_dict("web", trace, mode="approve", **over)],
                           console=console)
    # the approve-mode cycle runs with the capacity the auto cycles left in place
    doc = yaml.safe_load(approve.read_text())
    with Store(cfg.state_path) as store:
        doc["targets"][0]["actuator"]["initial_capacity"] = store.load_state("web").current
    approve.write_text(yaml.safe_dump(doc, sort_keys=False))
    res = run_cycle(approve, now)
    assert res.status == "planned", res
    return approve, res.plan


def _wait(drv, by: str, what: str):
    """The element, once the page that has it has loaded (after a form post)."""
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, 20).until(ec.presence_of_element_located((by, what)))


def _login(drv, url: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    drv.get(url + "/")
    assert drv.current_url == url + "/login"
    drv.find_element(By.ID, "token").send_keys(token)
    drv.find_element(By.CSS_SELECTOR, "#login button[type=submit]").click()
    _wait(drv, By.CSS_SELECTOR, "svg.chart")
    assert drv.current_url == url + "/"


def _approve_and_see_applied(drv, console: ConsoleProcess, cfg_path: Path, plan, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    card = drv.find_element(By.ID, f"plan-{plan.id}")
    assert f"{plan.from_capacity} → {plan.to_capacity}" in card.text and "pending" in card.text
    card.find_element(By.NAME, "comment").send_keys("peak is real")
    card.find_element(By.NAME, "approve").click()
    assert _wait(drv, By.ID, "done").text.startswith(f"Plan {plan.id} approved.")
    drv.save_screenshot(str(shots / "approved.png"))
    res = run_cycle(cfg_path, SystemClock().now())  # the daemon's next cycle
    assert plan.id in res.details.get("plans_applied", []), res
    drv.get(console.url + f"/targets/{plan.target}")
    text = drv.find_element(By.TAG_NAME, "main").text
    assert f"{plan.from_capacity} → {plan.to_capacity} applied" in text
    drv.save_screenshot(str(shots / "applied.png"))
    drv.get(console.url + "/audit")
    assert drv.find_element(By.ID, "chain").text.startswith("audit chain ok")


def test_log_in_approve_and_see_it_applied_in_a_browser(tmp_path):
    from selenium.webdriver.common.by import By

    cfg_path, plan = a_day_of_history(tmp_path)
    console = ConsoleProcess(cfg_path, {})
    drv = browser(javascript=True)
    try:
        _login(drv, console.url, ALICE_TOKEN)
        assert "js" in drv.find_element(By.TAG_NAME, "html").get_attribute("class")  # scripts do run here
        assert drv.find_elements(By.CSS_SELECTOR, "svg.chart path.band")
        assert drv.find_elements(By.CSS_SELECTOR, "svg.chart g.event.applied")
        drv.save_screenshot(str(tmp_path / "console.png"))
        if os.environ.get("FORESCALE_UPDATE_SCREENSHOT") == "1":
            (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "console.png", ROOT / "docs" / "img" / "console.png")
        _approve_and_see_applied(drv, console, cfg_path, plan, tmp_path)
    finally:
        drv.quit()
        out = console.close()
    assert "Traceback" not in out, out


def test_the_approve_path_works_with_javascript_off(tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By

    now = on_grid()
    monkeypatch.setenv("FORESCALE_TEST_BOB", BOB_TOKEN)
    state = make_console_state(tmp_path, now)
    from engine.store import Store

    with Store(tmp_path / "state.db") as store:
        plan = store.plan(state.plan_id)
    console = ConsoleProcess(state.cfg_path, {"FORESCALE_TEST_BOB": BOB_TOKEN})
    drv = browser(javascript=False)
    try:
        _login(drv, console.url, BOB_TOKEN)
        assert "js" not in (drv.find_element(By.TAG_NAME, "html").get_attribute("class") or "")
        _approve_and_see_applied(drv, console, state.cfg_path, plan, tmp_path)
    finally:
        drv.quit()
        out = console.close()
    assert "Traceback" not in out, out
