"""The dashboard in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium) against a
running `jaga serve`: a real dataset, a real pretraining job and an index, made over the API, then each page.

With ``JAGA_SCREENSHOTS_DIR`` set, the tests save screenshots of the main pages there (the README's come from
``JAGA_SCREENSHOTS_DIR=docs/images``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import make_zip, png_bytes, wait_for_job
from tests.servers import HEADERS, KEY, Server

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    pytest.skip(
        "the dashboard's browser tests need Debian's chromium and chromium-driver (apt-get install chromium "
        "chromium-driver)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="the dashboard's browser tests need selenium (dev extra)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

#: A dataset name that would run script if the page ever treated API text as HTML.
HOSTILE_NAME = '<img src=x onerror="window.pwned=1">cats & dogs'
SIZE = 16
PER_CLASS = 12


def _images_zip() -> bytes:
    """Two classes of images with a pattern each (so the map has something to separate), and a broken file."""
    rng = np.random.default_rng(0)
    files: dict[str, bytes] = {}
    for c, name in enumerate(("cat", "dog")):
        for i in range(PER_CLASS):
            image = rng.integers(0, 60, (SIZE, SIZE), dtype=np.uint8)
            if c:
                image[:, : SIZE // 2] += 180
            else:
                image[: SIZE // 2] += 180
            files[f"{name}/{i:02d}.png"] = png_bytes(image)
    files["dog/broken.png"] = b"not an image at all"
    return make_zip(files)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`jaga serve` with a ready dataset, a succeeded pretraining job, its model and an index of the dataset."""
    tmp = tmp_path_factory.mktemp("dashboard")
    # The worker reports the job it holds on every heartbeat: each second here, for the ops panel's test.
    server = Server(tmp / "data", tmp / "serve.log", env={"JAGA_HEARTBEAT_SECONDS": "1"})
    try:
        with httpx.Client(base_url=server.url, headers=HEADERS, timeout=60) as c:
            r = c.post("/v1/datasets", files={"file": ("pets.zip", _images_zip())}, data={"name": HOSTILE_NAME})
            assert r.status_code == 202, r.text
            dataset = r.json()
            assert wait_for_job(c, dataset["ingest_job_id"], timeout=120)["status"] == "succeeded"
            spec = {"kind": "pretrain", "dataset_id": dataset["id"], "epochs": 2, "stem": "standard", "batch_size": 8}
            job = wait_for_job(c, c.post("/v1/jobs", json={**spec, "image_size": SIZE}).json()["id"], timeout=300)
            assert job["status"] == "succeeded", job
            model_id = job["result"]["model_id"]
            index_job = c.post("/v1/jobs", json={"kind": "index", "dataset_id": dataset["id"], "model_id": model_id})
            index_job = wait_for_job(c, index_job.json()["id"], timeout=120)
            assert index_job["status"] == "succeeded", index_job
            knn = {"kind": "evaluate", "dataset_id": dataset["id"], "model_id": model_id, "protocol": "knn"}
            evaluation = wait_for_job(c, c.post("/v1/jobs", json=knn).json()["id"], timeout=120)
            assert evaluation["status"] == "succeeded", evaluation
            events = c.get(f"/v1/jobs/{job['id']}/events", params={"limit": 200}).json()["data"]
        query = tmp / "query.png"
        query.write_bytes(png_bytes(np.full((SIZE, SIZE), 200, np.uint8)))
        yield {
            "server": server,
            "dataset": dataset,
            "job": job,
            "model_id": model_id,
            "index_id": index_job["result"]["index_id"],
            "evaluation_id": evaluation["id"],
            "index_job_id": index_job["id"],
            "events": events,
            "query": query,
        }
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(world: dict[str, Any]) -> Iterator[Any]:
    """Headless Chromium on Debian's binaries, signed in with the test key (Selenium Manager stays offline)."""
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for ``test_the_console_...``
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.get(world["server"].url + "/dashboard")
        driver.find_element(By.ID, "key").send_keys(KEY)
        driver.find_element(By.ID, "login-button").click()
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, condition: Callable[[Any], Any], timeout: float = 30) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def screenshot(driver: Any, name: str) -> None:
    folder = os.environ.get("JAGA_SCREENSHOTS_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.get_screenshot_as_file(str(Path(folder) / f"dashboard-{name}.png"))


def go(driver: Any, world: dict[str, Any], route: str) -> None:
    driver.get(f"{world['server'].url}/dashboard#/{route}")


def loaded_images(driver: Any, css: str) -> int:
    """How many of the images ``css`` selects have loaded (a decoded picture, not a broken one)."""
    return int(
        driver.execute_script(
            "return [...document.querySelectorAll(arguments[0])].filter(i => i.complete && i.naturalWidth > 0).length",
            css,
        )
    )


def test_the_jobs_list_shows_the_job_and_refreshes_with_etags(browser, world):
    job_id = world["job"]["id"]
    row = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, f"#jobs a[href='#/jobs/{job_id}']"))
    assert row.text == job_id
    assert "pretrain" in browser.find_element(By.ID, "jobs").text
    assert "succeeded" in browser.find_element(By.ID, "jobs").text
    # The next refresh sends the page's ETag and keeps the view on the 304.
    wait(browser, lambda d: d.execute_script("return document.body.dataset.lastPoll") == "304", timeout=15)
    assert browser.find_element(By.CSS_SELECTOR, f"#jobs a[href='#/jobs/{job_id}']")
    screenshot(browser, "jobs")
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("failed")
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#jobs-table p").text == "No jobs.")
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("")
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, f"#jobs a[href='#/jobs/{job_id}']"))


def test_the_job_page_draws_a_curve_per_metric_from_the_jobs_events(browser, world):
    go(browser, world, f"jobs/{world['job']['id']}")
    metrics = [e["data"] for e in world["events"] if e["type"] == "metrics"]
    expected = {key: sum(key in m for m in metrics) for key in ("loss", "lr", "images_per_second", "effective_rank")}
    assert expected["loss"] == 2
    assert expected["effective_rank"] >= 2
    for key, count in expected.items():
        chart = wait(browser, lambda d, key=key: d.find_element(By.CSS_SELECTOR, f".chart[data-metric='{key}']"))
        assert chart.get_attribute("data-points") == str(count)
        assert len(chart.find_elements(By.CSS_SELECTOR, "circle.point")) == count
        path = chart.find_element(By.CSS_SELECTOR, "path.series").get_attribute("d")
        assert path.count("L") == count - 1
    states = browser.find_element(By.ID, "states").text
    for status in ("queued", "running", "succeeded"):
        assert status in states
    screenshot(browser, "job")


def test_the_dataset_page_shows_class_counts_rejected_files_and_samples(browser, world):
    go(browser, world, f"datasets/{world['dataset']['id']}")
    name = wait(browser, lambda d: d.find_element(By.ID, "dataset-name"))
    assert name.text == HOSTILE_NAME  # shown as text
    assert browser.execute_script("return window.pwned") is None
    classes = browser.find_element(By.ID, "classes")
    rows = [r.text for r in classes.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert rows == [f"cat {PER_CLASS}", f"dog {PER_CLASS}"]
    assert "dog/broken.png" in browser.find_element(By.ID, "rejected").text
    wait(browser, lambda d: loaded_images(d, "#samples img") == 12)
    screenshot(browser, "dataset")


def test_the_model_page_searches_by_image_and_maps_the_embeddings(browser, world):
    go(browser, world, f"models/{world['model_id']}")
    assert "knn_accuracy" in wait(browser, lambda d: d.find_element(By.ID, "metrics")).text
    evaluations = wait(browser, lambda d: d.find_element(By.ID, "evaluations-table")).text
    assert world["evaluation_id"] in evaluations  # the model's evaluate jobs only: not its index job
    assert world["index_job_id"] not in evaluations
    points = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#map-svg circle.map-point"), timeout=60)
    assert len(points) == 2 * PER_CLASS
    assert {p.get_attribute("fill") for p in points} == {"#2f6fde", "#d9480f"}  # coloured by label
    wait(browser, lambda d: d.find_element(By.ID, "search-file")).send_keys(str(world["query"]))
    k = browser.find_element(By.ID, "search-k")
    k.clear()
    k.send_keys("5")
    browser.find_element(By.ID, "search-button").click()
    wait(browser, lambda d: loaded_images(d, "#search-results img[data-item]") == 5, timeout=60)
    assert loaded_images(browser, "#search-results img") == 6  # and the query beside them
    browser.execute_script("document.getElementById('explore').scrollIntoView()")
    screenshot(browser, "model")


def test_the_ops_panel_shows_the_queue_and_the_worker_holding_a_lease(browser, world):
    with httpx.Client(base_url=world["server"].url, headers=HEADERS, timeout=60) as c:
        spec = {"kind": "pretrain", "dataset_id": world["dataset"]["id"], "epochs": 500, "stem": "standard"}
        long = c.post("/v1/jobs", json={**spec, "image_size": SIZE, "batch_size": 8}).json()
        try:
            wait_for_job(c, long["id"], lambda j: j["status"] == "running", timeout=60)
            go(browser, world, "ops")
            lease = f"table#workers a[href='#/jobs/{long['id']}']"
            held = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, lease), timeout=30)
            assert "pretrain, running" in held.text
            assert len(browser.find_elements(By.CSS_SELECTOR, "table#workers tbody tr")) == 1  # one worker
            counts = browser.find_element(By.ID, "job-counts").text.split("\n")
            assert dict(zip(counts[0].split(), counts[1].split(), strict=True))["running"] == "1"
            screenshot(browser, "ops")
            # Its page draws the curve as the job trains: more points come without a reload.
            go(browser, world, f"jobs/{long['id']}")
            loss = "return document.querySelector(\".chart[data-metric='loss']\")?.dataset.points"
            first = int(wait(browser, lambda d: d.execute_script(loss)))
            wait(browser, lambda d: int(d.execute_script(loss)) > first, timeout=60)
            assert browser.find_element(By.CSS_SELECTOR, "#job-summary .status").text == "running"
        finally:
            c.post(f"/v1/jobs/{long['id']}/cancel")
            assert wait_for_job(c, long["id"], timeout=60)["status"] == "cancelled"


def test_the_console_shows_no_script_error_and_no_blocked_content(browser):
    """Every page so far ran under the page's Content-Security-Policy without tripping it or throwing."""
    messages = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not [m for m in messages if "Content Security Policy" in m or "Uncaught" in m], messages


def test_a_wrong_key_is_refused_and_asked_for_again(browser, world):
    browser.execute_script("sessionStorage.setItem('jaga.dashboard.key', 'wrong')")
    go(browser, world, "jobs")  # from the ops panel: the new route calls the API with the wrong key
    error = wait(browser, lambda d: d.find_element(By.ID, "login-error"))
    wait(browser, lambda d: "refused" in error.text)
    assert browser.find_element(By.ID, "login").is_displayed()
