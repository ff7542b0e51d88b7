"""The web page in a real headless browser (Debian's chromium driven by Playwright): search, rate three films,
see ten recommendations with their reasons; then a known user's list.

Skips when chromium or Playwright is missing, unless RECAE_REQUIRE_BROWSER=1 (set by .ci/run) demands them.
Playwright's own browser downloads are never used: it drives the system's /usr/bin/chromium.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.serving import NAMED, Home, Server, build_home, running_server

pytestmark = pytest.mark.slow  # a trained home, a server and a browser: ~15 s

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 60_000  # the machine is shared; a slow second is not a failure


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def require_browser() -> str:
    """The chromium executable, or skip saying why (fail instead under RECAE_REQUIRE_BROWSER=1)."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright for Python (pip install -e '.[dev]')")
    path = chromium_path()
    if path is None:
        missing.append("chromium (apt-get install chromium)")
    try:
        import fastapi  # noqa: F401
    except ImportError:
        missing.append("the serve extra (pip install -e '.[serve]')")
    if missing:
        reason = "browser test needs " + " and ".join(missing)
        if os.environ.get("RECAE_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (RECAE_REQUIRE_BROWSER=1)", pytrace=False)
        pytest.skip(reason)
    assert path is not None
    return path


def rate(page, query: str, title: str, stars: int) -> None:  # type: ignore[no-untyped-def]
    """Search for ``query`` and give the result titled ``title`` ``stars`` stars."""
    page.fill("#search", query)
    page.press("#search", "Enter")
    row = page.locator("#results li", has_text=title)
    row.first.wait_for(timeout=TIMEOUT_MS)
    row.first.locator(f'button[data-stars="{stars}"]').click()


def rate_three_and_read(page, base: str, films: list[tuple[str, str, int]]) -> list[str]:  # type: ignore[no-untyped-def]
    """Open the page, rate three films, wait for ten recommendations; returns their text."""
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(base + "/")
    for query, title, stars in films:
        rate(page, query, title, stars)
    from playwright.sync_api import expect

    expect(page.locator("#rated-count")).to_have_text("3", timeout=TIMEOUT_MS)
    expect(page.locator("#recommendations li")).to_have_count(10, timeout=TIMEOUT_MS)
    page.locator("#recommendations .because").first.wait_for(timeout=TIMEOUT_MS)
    return page.locator("#recommendations li").all_inner_texts()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Home, Server]]:
    require_browser()
    home = build_home(tmp_path_factory.mktemp("page-home"))
    with running_server(home.path) as running:
        yield home, running


def test_rate_three_films_and_see_ten_recommendations(server: tuple[Home, Server], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    _, running = server
    films = [("star wars", NAMED[1], 5), ("star trek", NAMED[2], 4), ("return", NAMED[3], 1)]
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=require_browser(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            texts = rate_three_and_read(page, running.base, films)
            assert len(texts) == 10
            rated_titles = [title for _, title, _ in films]
            shown = [int(m) for m in (page.locator("#recommendations li").nth(i).get_attribute("data-movie-id")
                                      for i in range(10)) if m is not None]
            assert len(set(shown)) == 10 and not set(shown) & {1, 2, 3}  # rated films never come back
            assert all("\u2605" in text for text in texts)  # each shows its predicted rating
            reasons = page.locator("#recommendations .because").all_inner_texts()
            assert reasons and all(r.startswith("Because you rated ") for r in reasons)
            assert all(any(title in r for title in rated_titles) for r in reasons)
            assert page.locator("#status").inner_text() == ""
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

            page.fill("#user-id", "7")
            page.click("#user-form button")
            expect(page.locator("#user-recommendations li")).to_have_count(10)
            page.fill("#user-id", "99999")
            page.click("#user-form button")
            expect(page.locator("#status")).to_contain_text("unknown")
            assert errors == []
        finally:
            browser.close()
