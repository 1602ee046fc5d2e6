"""The playground page in a real headless Chromium (Debian's package, driven by playwright)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .conftest import Models, Server, make_engine

SCREENSHOT = Path(__file__).resolve().parents[2] / "outputs" / "playground.png"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "Chromium is not installed: `make test` installs Debian's chromium package (apt-get install "
            "chromium); run it once, or install the package by hand"
        )
    return found


def test_the_page_shows_every_adapter_s_answer_side_by_side(models: Models) -> None:
    from playwright.sync_api import sync_playwright

    names = ["lora-a", "prompt"]
    with Server(make_engine(models, names=names)) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(server.url + "/")
        page.wait_for_selector("input.model")
        assert sorted(
            page.eval_on_selector_all("input.model", "els => els.map(e => e.value)")
        ) == sorted(["tiny-llama", *names])
        page.fill("#prompt", "Hello wor")
        page.fill("#max_tokens", "12")
        page.click("#run")
        page.wait_for_function(
            "document.querySelectorAll('.answer.done').length === 3", timeout=60_000
        )
        shown = {
            panel.get_attribute("data-model"): panel.query_selector("pre").text_content()
            for panel in page.query_selector_all(".answer")
        }
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        browser.close()
    assert shown == {
        name: models.alone(None if name == "tiny-llama" else name, "Hello wor")
        for name in ["tiny-llama", *names]
    }
    assert SCREENSHOT.stat().st_size > 10_000
