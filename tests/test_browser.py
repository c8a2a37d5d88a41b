"""A real browser on the monitored setup: headless Chromium (Debian's, driven by selenium with the system
chromedriver; nothing is downloaded) on the flow run page, the Artifacts page and report.html of a tiny
pipeline run reported into a server started by ``flows.server``. Screenshots land in the test's tmp dir."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import server

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _missing() -> str | None:
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        return "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e '.[dev]')"
    return None


pytestmark = [pytest.mark.browser, pytest.mark.skipif(_missing() is not None, reason=_missing() or "")]


@pytest.fixture(scope="module")
def driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    d = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    """A server on a free port, then ``uniadc run`` of a tiny pipeline that reports into it by itself."""
    from benchmarks.server_load import tiny_dataset

    work = tmp_path_factory.mktemp("browser")
    config = tiny_dataset(work)
    home = work / "home"
    state = server.start("sqlite", None, port=server.free_port(), workers=0, deploy=False, home=home,
                         say=lambda line: None)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(ROOT))
    overrides = ["discriminator.backbone=tiny", "discriminator.text_encoder=tiny", "discriminator.iterations=8",
                 "discriminator.batch_size=4", "discriminator.fusion_dim=16"]  # fmt: skip
    args = [sys.executable, "-m", "flows.cli", "run", "-c", str(config), "--store", str(work / "store")]
    for o in overrides:
        args += ["--set", o]
    try:
        r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"reporting to the Prefect server at {state.ui_url}" in r.stderr
        yield state, work
    finally:
        server.stop(home=home, say=lambda line: None)


def _wait_text(driver, needles, timeout=30.0) -> str:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = driver.find_element(By.TAG_NAME, "body").text
        if all(n in text for n in needles):
            return text
        time.sleep(0.5)
    return text


def _pipeline_run_id(api_url: str) -> str:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def go():
        async with PrefectClient(api=api_url) as client:
            runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pipeline"])))
            return [str(r.id) for r in runs if r.state_type.value == "COMPLETED"]

    (run_id,) = asyncio.run(go())
    return run_id


def test_flow_run_page_lists_the_stage_tasks(driver, served_run, tmp_path):
    from selenium.webdriver.common.by import By

    state, _ = served_run
    driver.get(f"{state.ui_url}/runs/flow-run/{_pipeline_run_id(state.api_url)}")
    _wait_text(driver, ["Task Runs"])
    tab = driver.find_elements(By.XPATH, "//*[contains(., 'Task Runs') and not(*[contains(., 'Task Runs')])]")
    assert tab, "no Task Runs tab on the flow run page"
    tab[0].click()
    names = ["split", "support", "regenerate-scratch", "regenerate-stain", "regenerate-hole", "train",
             "evaluate", "report", "contact-sheet"]  # fmt: skip
    text = _wait_text(driver, names)
    driver.save_screenshot(str(tmp_path / "flow-run.png"))
    assert [n for n in names if n not in text] == [], text[:2000]


def test_artifacts_page_has_the_keys_and_full_progress(driver, served_run, tmp_path):
    state, _ = served_run
    driver.get(f"{state.ui_url}/artifacts")
    keys = ["load-metrics", "load-summary", "load-samples-scratch", "load-train-progress"]
    text = _wait_text(driver, keys)
    driver.save_screenshot(str(tmp_path / "artifacts.png"))
    assert [k for k in keys if k not in text] == [], text[:2000]
    driver.get(f"{state.ui_url}/artifacts/key/load-train-progress")
    text = _wait_text(driver, ["train: 8/8 it"])
    driver.save_screenshot(str(tmp_path / "progress.png"))
    assert "train: 8/8 it" in text


def test_summary_artifact_images_render(driver, served_run, tmp_path):
    from selenium.webdriver.common.by import By

    state, _ = served_run
    driver.get(f"{state.ui_url}/artifacts/key/load-summary")
    _wait_text(driver, ["load-summary"])
    deadline = time.monotonic() + 30
    href = None
    while href is None and time.monotonic() < deadline:
        href = next((a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "a")
                     if "/artifacts/artifact/" in (a.get_attribute("href") or "")), None)  # fmt: skip
        time.sleep(0.5)
    assert href, "no link to the summary artifact"
    driver.get(href)
    _wait_text(driver, ["Per category", "Confusion matrix"])
    time.sleep(1)
    sizes = driver.execute_script(
        "return Array.from(document.images).filter(i => i.src.startsWith('data:')).map(i => i.naturalWidth)"
    )
    driver.save_screenshot(str(tmp_path / "summary.png"))
    assert len(sizes) == 5 and all(w > 0 for w in sizes), sizes  # contact sheet + four worst predictions


def test_report_renders_offline(driver, served_run, tmp_path):
    from selenium.webdriver.common.by import By

    _, work = served_run
    report = work / "store" / "load" / "report.html"
    driver.get(report.as_uri())
    text = _wait_text(driver, ["Confusion matrix", "Per category"])
    broken = driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length"
    )
    total = driver.execute_script("return document.images.length")
    driver.save_screenshot(str(tmp_path / "report.png"))
    # 3 categories x 4 selected samples, 8 test images x (image, ground truth, heatmap, classes); none broken
    assert total == 3 * 4 + 8 * 4 and broken == 0
    for selector in ("table.confusion", "svg.confusion", "table.per-category"):
        assert driver.find_elements(By.CSS_SELECTOR, selector), selector
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.plot")) == 3  # ROC, PR, PRO
    assert "Every test image, worst first" in text
