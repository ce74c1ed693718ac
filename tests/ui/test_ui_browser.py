"""The Gradio page in headless Chromium (Debian's ``chromium``), against the live service.

Screenshots land in ``reports/ui/`` for people to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAIN_CONTROLS = [
    "fb-text",
    "fb-marker",
    "fb-ref",
    "fb-voice",
    "fb-ref-text",
    "fb-lang",
    "fb-seed",
    "fb-temperature",
    "fb-top-p",
    "fb-speed",
    "fb-optimize",
    "fb-as-written",
    "fb-spoken",
    "fb-pronunciations",
    "fb-timings",
    "fb-synthesize",
    "fb-audio",
    "fb-metrics",
    "fb-theme",
]
LOADED = "() => (document.querySelector('#fb-status')?.innerText || '').includes('Profile')"
PLAYED = """() => [...document.querySelectorAll('#fb-audio audio')]
    .some(a => a.src && a.duration > 0 && a.ended)"""
MEASURED = "() => / ms/.test(document.querySelector('#fb-metrics').innerText)"
SPOKEN = "() => document.querySelector('#fb-spoken textarea')?.value.includes('two times')"

pytestmark = [
    pytest.mark.ui,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="/usr/bin/chromium is missing: run scripts/install-system-packages.sh",
    ),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Playwright driving the system Chromium (Playwright's own browser download is not used)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1000, "height": 1300})
    yield context.new_page()
    context.close()


def open_page(page, url: str, theme: str) -> None:
    page.goto(f"{url}/?__theme={theme}")
    page.wait_for_function(LOADED, timeout=30_000)


def is_dark(page) -> bool:
    return page.evaluate("() => document.body.classList.contains('dark')")


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_page_shows_controls_in_theme(page, gradio_url: str, screenshots: Path, theme: str) -> None:
    open_page(page, gradio_url, theme)
    assert is_dark(page) == (theme == "dark")
    for control in MAIN_CONTROLS:
        assert page.locator(f"#{control}").is_visible(), f"#{control} is not visible"
    assert "unavailable" in page.locator("#fb-status").inner_text()
    banner = page.locator("#fb-status .fb-banner")
    assert banner.is_visible() and "audio is noise" in banner.inner_text()
    page.screenshot(path=screenshots / f"gradio-{theme}.png", full_page=True)

    page.click("#fb-theme")
    assert is_dark(page) == (theme != "dark")


def test_synthesis_plays_in_the_audio_element(page, gradio_url: str, screenshots: Path) -> None:
    open_page(page, gradio_url, "light")
    page.fill("#fb-text textarea", "Hello from the browser test, 2 times.")
    page.locator("#fb-text textarea").blur()
    page.wait_for_function(SPOKEN, timeout=30_000)  # the spoken-form preview, numbers as words
    page.click("#fb-synthesize")
    page.wait_for_function(PLAYED, timeout=90_000)  # autoplay ran the streamed audio to its end
    page.wait_for_function(MEASURED, timeout=30_000)
    assert page.locator("#fb-message").inner_text().strip() == ""
    page.screenshot(path=screenshots / "gradio-synthesis.png", full_page=True)
