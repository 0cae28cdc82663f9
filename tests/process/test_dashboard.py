"""The admin listener's dashboard: the resource and its CSP, and the page live in headless Chromium."""

from __future__ import annotations

import base64
import hashlib
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import pytest_twisted

from powerlb.dashboard import PAGE_PATH, content_security_policy, inline_hashes
from tests.support import (
    HOST,
    Process,
    clean_env,
    get,
    request,
    start_demo_backends,
    start_twistd_powerlb,
    stats,
    wait_until,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
#: Health checks that see a backend go down or come back within about half a second.
FAST_CHECKS = ("--health-interval=0.2", "--health-timeout=0.5", "--health-fall=1", "--health-rise=1")
PAGE_WAIT = 20.0  # seconds the page may take to show a change


class _InlineBlocks(HTMLParser):
    """Collects the text of every <script> and <style> element and every src/href attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: Dict[str, List[str]] = {"script": [], "style": []}
        self.references: List[str] = []
        self._open: Optional[str] = None

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Any]]) -> None:
        self.references += [value for name, value in attrs if name in ("src", "href")]
        if tag in self.blocks:
            self.blocks[tag].append("")
            self._open = tag

    def handle_endtag(self, tag: str) -> None:
        if tag == self._open:
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.blocks[self._open][-1] += data


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _directives(policy: str) -> Dict[str, List[str]]:
    parts = [part.split() for part in policy.split(";") if part.strip()]
    return {part[0]: part[1:] for part in parts}


def test_inline_hashes_match_the_csp_specification_example():
    # CSP Level 3, "hash-source": the hash of this script body.
    html = "<p>x</p><script>alert('Hello, world.');</script>"
    assert inline_hashes(html, "script") == ["'sha256-qznLcsROx4GACP2dm0UCKCzCG+HiZ1guq6ZZDob/Tng='"]
    assert inline_hashes(html, "style") == []
    policy = _directives(content_security_policy(html))
    assert policy["script-src"] == ["'sha256-qznLcsROx4GACP2dm0UCKCzCG+HiZ1guq6ZZDob/Tng='"]
    assert policy["style-src"] == ["'none'"]
    assert policy["default-src"] == ["'none'"]


def test_every_inline_block_gets_its_own_hash():
    html = "<style>a{}</style><script>1</script>\n<style>\nb{}\n</style><script src=x></script>"
    assert inline_hashes(html, "style") == [_csp_hash("a{}"), _csp_hash("\nb{}\n")]
    # a script with attributes is not inline code the policy should allow
    assert inline_hashes(html, "script") == [_csp_hash("1")]


@pytest_twisted.ensureDeferred
async def test_dashboard_is_served_with_a_strict_policy_for_its_own_inline_blocks(
    make_backends, start_powerlb, http
):
    (a,) = make_backends(1)
    lb = start_powerlb([a], admin="tcp:0:interface=127.0.0.1")
    response = await http.get(lb.admin_url + "/")
    body = (await response.content()).decode()
    assert response.code == 200
    assert body == PAGE_PATH.read_text(encoding="utf-8")

    def header(name: bytes) -> str:
        (value,) = response.headers.getRawHeaders(name)
        return value.decode()

    assert header(b"content-type") == "text/html; charset=utf-8"
    assert header(b"x-content-type-options") == "nosniff"
    assert header(b"cache-control") == "no-store"
    policy = _directives(header(b"content-security-policy"))
    parsed = _InlineBlocks()
    parsed.feed(body)
    assert len(parsed.blocks["script"]) == len(parsed.blocks["style"]) == 2  # the page's, the charts'
    assert policy["script-src"] == [_csp_hash(text) for text in parsed.blocks["script"]]
    assert policy["style-src"] == [_csp_hash(text) for text in parsed.blocks["style"]]
    assert policy["default-src"] == ["'none'"]
    assert policy["connect-src"] == ["'self'"]
    assert parsed.references == ["data:,"]  # no external assets
    assert "http://" not in body and "https://" not in body

    head = await http.head(lb.admin_url + "/")
    assert head.code == 200
    assert head.headers.getRawHeaders(b"content-length") == [str(len(body.encode())).encode()]
    assert head.headers.getRawHeaders(b"content-security-policy") == response.headers.getRawHeaders(
        b"content-security-policy"
    )
    assert await head.content() == b""

    # the stats the page polls, by the relative URL it uses
    polled = await http.get(lb.admin_url + "/api/v1/stats")
    assert polled.code == 200
    figures = await polled.json()
    assert [backend["url"] for backend in figures["backends"]] == [a.url]
    series = await http.get(lb.admin_url + "/api/v1/series")
    assert series.code == 200
    assert set(await series.json()) == {"step", "window", "now", "pools"}
    assert (await http.get(lb.admin_url + "/dashboard/extra")).code == 404


# --- the page in a real browser: blocking selenium, so backends and powerlb run as processes ---


@pytest.fixture
def processes() -> Iterator[List[Process]]:
    """Processes a test starts; each is stopped by PID afterwards."""
    started: List[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Debian Chromium driven through chromedriver, with a fresh profile and console logging."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} missing: install Debian's chromium and chromium-driver "
            "(apt-get install -y chromium chromium-driver; `make test` does it)",
            pytrace=False,
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is missing: pip install -e '.[test]' (`make test` does it)", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def _start_demo_backend(tmp_path: Path, name: str, processes: List[Process]) -> int:
    home = tmp_path / name
    home.mkdir()
    process, (port,) = start_demo_backends(home, 1)
    processes.append(process)
    return port


def _backend_rows(driver: Any) -> Dict[str, Dict[str, Any]]:
    """The backends table as shown: URL -> {"state", "latency", "requests": text, "badge": element}."""
    from selenium.webdriver.common.by import By

    rows = {}
    for row in driver.find_elements(By.CSS_SELECTOR, "#backends tr"):
        cells = row.find_elements(By.TAG_NAME, "td")
        rows[cells[0].text] = {
            "state": cells[1].text,
            "latency": cells[6].text,
            "requests": cells[7].text,
            "badge": cells[1].find_element(By.CSS_SELECTOR, ".state"),
        }
    return rows


def _severe(driver: Any) -> List[Dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_dashboard_in_chromium_shows_every_backend_and_one_going_down(tmp_path, browser, processes):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ports = [_start_demo_backend(tmp_path, name, processes) for name in ("a", "b")]
    lb, (listen, admin) = start_twistd_powerlb(
        tmp_path, ports, *FAST_CHECKS, "--cache-size", "1MiB", "--admin-token", "t"
    )
    processes.append(lb)
    urls = [f"http://{HOST}:{port}" for port in ports]
    for path in ("/", "/", "/cached", "/cached"):
        assert get(listen, path).status == 200
    sent = {backend["url"]: backend["requests"] for backend in stats(admin)["backends"]}

    browser.get(f"http://{HOST}:{admin}/")
    assert browser.title == "powerlb"
    wait = WebDriverWait(browser, PAGE_WAIT, ignored_exceptions=(StaleElementReferenceException,))

    def shows(states: Dict[str, str]) -> bool:
        rows = _backend_rows(browser)
        return all(url in rows and rows[url]["state"] == state for url, state in states.items())

    wait.until(lambda d: d.find_element(By.ID, "connection").text == "live")
    wait.until(lambda d: shows(dict.fromkeys(urls, "up")))
    rows = _backend_rows(browser)
    assert sorted(rows) == sorted(urls)
    assert {url: int(row["requests"]) for url, row in rows.items()} == sent
    assert all(row["badge"].is_displayed() for row in rows.values())
    assert browser.find_element(By.ID, "cache-hits").text == "1"
    assert browser.find_element(By.ID, "cache-misses").text == "3"
    assert browser.find_element(By.ID, "cache-hit_ratio").text == "25.0%"
    assert _severe(browser) == []

    down_url, up_url = urls
    processes[0].stop()
    wait.until(lambda d: shows({down_url: "down", up_url: "up"}))
    rows = _backend_rows(browser)
    # the inline style applies (the CSP let it in): down and up have different colours
    colour = {url: row["badge"].value_of_css_property("background-color") for url, row in rows.items()}
    assert colour[down_url] != colour[up_url]
    assert "rgba(0, 0, 0, 0)" not in colour.values()

    restarted = Process(
        [sys.executable, "-m", "powerlb.demo", "--ports", str(ports[0])],
        tmp_path / "a" / "restarted.log",
        cwd=tmp_path,
        env=clean_env(),
    )
    processes.append(restarted)
    wait_until(lambda: get(ports[0], "/health").status == 200, "restarted demo backend")
    wait.until(lambda d: shows(dict.fromkeys(urls, "up")))
    assert _severe(browser) == []

    # an operator disables b through the API; traffic to a shows its latency over the last poll
    disabled = request(
        admin,
        "PATCH",
        f"/api/v1/backends/{up_url[7:]}",
        b'{"state": "disabled"}',
        {"Content-Type": "application/json", "Authorization": "Bearer t"},
    )
    assert disabled.status == 200
    wait.until(lambda d: shows({down_url: "up", up_url: "disabled"}))

    def latency_shown() -> bool:
        assert get(listen, "/").status == 200
        return re.fullmatch(r"\d+\.\d ms", _backend_rows(browser)[down_url]["latency"]) is not None

    wait.until(lambda d: latency_shown())
    assert _backend_rows(browser)[up_url]["latency"] == "\N{EN DASH}"  # no requests: no figure
    assert _severe(browser) == []

    lb.stop()
    wait.until(lambda d: d.find_element(By.ID, "connection").text.startswith("connection lost"))
    assert sorted(_backend_rows(browser)) == sorted(urls)  # the last figures stay on show


def _chart_paths(driver: Any, pool: str) -> Dict[str, str]:
    """The pool's chart lines as drawn: figure (``rps``, ``p50`` ...) -> the SVG path's ``d``."""
    from selenium.webdriver.common.by import By

    card = driver.find_element(By.CSS_SELECTOR, f'article.pool[data-pool="{pool}"]')
    paths = card.find_elements(By.CSS_SELECTOR, "figure.chart svg path")
    return {path.get_attribute("data-figure"): path.get_attribute("d") or "" for path in paths}


def test_dashboard_in_chromium_charts_each_pool_and_saves_a_screenshot(tmp_path, browser, processes):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ports = [_start_demo_backend(tmp_path, name, processes) for name in ("a", "b")]
    lb, (listen, admin) = start_twistd_powerlb(tmp_path, ports, "--cache-size", "1MiB")
    processes.append(lb)
    browser.set_window_size(1280, 1000)
    browser.get(f"http://{HOST}:{admin}/")
    wait = WebDriverWait(
        browser, PAGE_WAIT, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)
    )

    def drawn() -> bool:
        # traffic while the page waits: each series step then has requests, latency and look-ups
        for path in ("/", "/cached", "/slow?seconds=0.02"):
            assert get(listen, path).status == 200
        paths = _chart_paths(browser, "default")
        # a line through two samples or more in every chart
        return sorted(paths) == ["error_rate", "hit_ratio", "p50", "p99", "rps"] and all(
            d.count("L") >= 1 for d in paths.values()
        )

    wait.until(lambda d: drawn())
    card = browser.find_element(By.CSS_SELECTOR, 'article.pool[data-pool="default"]')
    assert card.find_element(By.TAG_NAME, "h3").text == "default 2 backends"
    values = {
        figure.get_attribute("data-chart"): figure.find_element(
            By.CSS_SELECTOR, "figcaption > span:last-child"
        ).text
        for figure in card.find_elements(By.CSS_SELECTOR, "figure.chart")
    }
    assert re.fullmatch(r"\d+\.\d", values["rps"]) and float(values["rps"]) > 0
    assert values["error_rate"] == "0.0%"
    assert re.fullmatch(r"[\d.]+ ms / [\d.]+ ms", values["latency"])
    assert re.fullmatch(r"\d+\.\d%", values["hit_ratio"]) and float(values["hit_ratio"][:-1]) > 0
    # the charts' inline style applies (the CSP let it in): the line is stroked, not filled
    line = card.find_element(By.CSS_SELECTOR, 'path[data-figure="rps"]')
    assert line.value_of_css_property("fill") == "none"
    assert line.value_of_css_property("stroke") not in ("none", "")
    assert browser.find_element(By.ID, "no-pools").is_displayed() is False
    # a configuration without routes: its one catch-all route
    rows = browser.find_elements(By.CSS_SELECTOR, "#routes tr")
    assert [row.text.split()[:3] for row in rows] == [["0", "default", "*"]]
    assert browser.find_element(By.ID, "no-routes").is_displayed() is False
    # stats with routes, as the page's poll passes them on (the next poll puts today's back)
    shown = browser.execute_script(
        """
        var routes = [
          {"path-prefix": "/api/", pool: "api", requests: 3}, {host: "<b>x</b>", pool: "default"}
        ];
        document.dispatchEvent(new CustomEvent("powerlb-stats", {detail: {routes: routes}}));
        var rows = Array.from(document.querySelectorAll("#routes tr"), function (row) {
          return Array.from(row.cells, function (cell) { return cell.textContent; });
        });
        var head = Array.from(document.querySelectorAll("#routes-head th"), function (th) {
          return th.textContent;
        });
        return [head, rows, document.getElementById("no-routes").hidden];
        """
    )
    assert shown == [
        ["path-prefix", "pool", "requests", "host"],
        [["/api/", "api", "3", "\N{EN DASH}"], ["\N{EN DASH}", "default", "\N{EN DASH}", "<b>x</b>"]],
        True,
    ]
    assert _severe(browser) == []

    screenshot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
