"""The API docs: served from the package (no CDN), off with `--docs off`, and usable in a real
browser (headless Chromium from Debian, driven by Selenium) with nothing but this server
reachable: the page loads without a failed request, the pre-filled /v1/rerank example runs
with the API key entered in the page, and the answer shows up in it."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import LiveServer, ServerFactory

ROOT = Path(__file__).resolve().parents[2]
KEY = "docs-test-key"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts"))


@pytest.fixture(scope="module")
def keyed(module_servers: ServerFactory, xlmr_dir: str) -> LiveServer:
    return module_servers(xlmr_dir, api_keys=[KEY])


def test_docs_page_and_assets_come_from_this_server(keyed: LiveServer) -> None:
    page = httpx.get(f"{keyed.url}/docs")  # open without a key, like /health
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", page.text)
    assert urls and all(u.startswith("/docs/assets/") for u in urls), urls
    assert "http://" not in page.text and "https://" not in page.text
    for url in urls:
        asset = httpx.get(keyed.url + url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    spec = httpx.get(f"{keyed.url}/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/rerank"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in spec["paths"]["/health"]["get"]


def test_docs_off_leaves_only_the_api(server_factory: ServerFactory, xlmr_dir: str) -> None:
    server = server_factory(xlmr_dir, docs="off")
    with server.client() as c:
        for path in ("/docs", "/openapi.json", "/redoc", "/docs/assets/swagger-ui.css"):
            assert c.get(path).status_code == 404, path
        assert c.post("/v1/rerank", json={"query": "q", "documents": ["d"]}).status_code == 200


# -- in a real browser ---------------------------------------------------------------------------
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser(keyed: LiveServer) -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no headless Chromium here: install Debian's chromium and chromium-driver"
                    " (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,2400", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update",
                # nothing but this server resolves: a page that wanted a CDN would fail here
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _network(driver: Any) -> tuple[list[str], list[str]]:
    """(URLs requested, failures) since the last call, from Chrome's DevTools log."""
    requested, failed = [], []
    for entry in driver.get_log("performance"):
        message = orjson.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requested.append(message["params"]["request"]["url"])
        elif message["method"] == "Network.loadingFailed":
            failed.append(f"{message['params'].get('errorText')} ({message['params']['type']})")
        elif message["method"] == "Network.responseReceived":
            response = message["params"]["response"]
            if response["status"] >= 400:
                failed.append(f"{response['status']} {response['url']}")
    return requested, failed


def _wait(driver: Any, css: str, timeout: float = 30.0) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, css))
    )


def test_try_the_rerank_example_in_a_browser(browser: Any, keyed: LiveServer) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{keyed.url}/docs")
    _wait(browser, '.opblock-summary-path[data-path="/v1/rerank"]')
    requested, failed = _network(browser)
    assert not failed, failed
    assert requested and all(u.startswith((keyed.url, "data:")) for u in requested), requested

    _wait(browser, ".btn.authorize").click()  # the key, as a person would enter it
    field = _wait(browser, ".modal-ux input")
    field.send_keys(KEY)
    browser.find_element(By.CSS_SELECTOR, ".modal-ux .auth-btn-wrapper .authorize").click()
    browser.find_element(By.CSS_SELECTOR, ".modal-ux .btn-done").click()

    operation = browser.find_element(By.CSS_SELECTOR,
                                     '.opblock-summary-path[data-path="/v1/rerank"]')
    operation.click()
    block = operation.find_element(By.XPATH, "./ancestor::div[contains(@class, 'opblock ')]")
    body = _wait(block, "textarea.body-param__text")
    assert "Red Planet" in body.get_attribute("value")  # the example, pre-filled
    block.find_element(By.CSS_SELECTOR, ".btn.execute").click()

    deadline = time.monotonic() + 30
    status = ""
    while time.monotonic() < deadline:
        cells = block.find_elements(By.CSS_SELECTOR,
                                    ".live-responses-table tr.response .response-col_status")
        if cells and cells[0].text.strip():
            status = cells[0].text.strip()
            break
        time.sleep(0.2)
    answer = block.find_element(By.CSS_SELECTOR, ".live-responses-table .microlight").text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "docs-v1-rerank.png"))
    assert status == "200", (status, answer[:500])
    results = orjson.loads(answer)["results"]  # the example's top_n: 2 of its 3 planets
    assert len(results) == 2 and all("planet" in r["document"]["text"].lower() for r in results)
    requested, failed = _network(browser)
    assert not failed, failed
    assert all(u.startswith((keyed.url, "data:")) for u in requested), requested
    assert f"{keyed.url}/v1/rerank" in requested
    console = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not console, console
