"""The web page at `/` in a real headless browser (Debian's chromium driven by Playwright, never Playwright's
own browser download): type text, press play, audio bytes arrive and a download link appears."""
from __future__ import annotations

import shutil

import pytest

from .server_process import running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def test_page_types_plays_and_receives_audio(served_model, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (test extra)")
    if not shutil.which("chromium"):
        pytest.skip("no chromium here (scripts/system_deps.sh installs Debian's)")
    with running_server(served_model, tmp_path / "voices") as base, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(base + "/")
            page.wait_for_function("document.getElementById('voice').options.length > 0")
            page.fill("#input", "həlˈoʊ wˈɜːld. ðɪs ɪz ɐ tˈɛst.")
            page.check("#phonemes")
            page.select_option("#modality", "ar+nar")
            page.fill("#max_duration", "0.5")
            page.fill("#seed", "1")
            page.click("#play")
            page.wait_for_selector("#download:not([hidden])", timeout=60_000)
            received = int(page.text_content("#bytes"))
            assert received > 0 and received % 640 == 0, received  # whole 16-bit frames of 320 samples
            assert page.text_content("#status").startswith("done"), page.text_content("#status")
        finally:
            browser.close()
