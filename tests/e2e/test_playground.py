"""The playground in a real browser (Debian chromium driven by Playwright) against the real service."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.conftest import ADMIN_KEY

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def page(server):
    chromium = shutil.which("chromium")
    assert chromium, "chromium missing: `make test` installs Debian's chromium package (make system-deps)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1366, "height": 900})  # a laptop screen
        page.goto(server.url + "/")
        page.get_by_label("API key").fill(ADMIN_KEY)
        page.get_by_label("API key").dispatch_event("change")
        expect(page.locator("#dsl option[value=flow]")).to_have_count(1)
        yield page
        browser.close()


def test_generates_flow_code_and_marks_it_valid(page):
    page.locator("#dsl").select_option("flow")
    page.get_by_label("Request", exact=True).fill("when a form is submitted, post the answers to #sales")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#verdict")).to_have_text("valid", timeout=120_000)
    expect(page.locator("#code")).to_contain_text("when ")
    expect(page.locator("#code .tok-op").first).to_be_visible()  # highlighted
    expect(page.locator("#timings")).to_contain_text("completion tokens")
    expect(page.locator("#tree")).to_contain_text("start", timeout=10_000)


def test_custom_grammar_generates_output_that_parses(page):
    page.get_by_role("button", name="Register grammar").click()
    expect(page.locator("#g-status")).to_contain_text('registered "kv"', timeout=30_000)
    expect(page.locator("#dsl")).to_have_value("kv")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#verdict")).to_have_text("valid", timeout=120_000)
    expect(page.locator("#code")).to_contain_text("=")


def test_invalid_code_shows_the_error_position(page, tmp_path):
    page.locator("#dsl").select_option("flow")
    page.get_by_label("Code in the selected DSL").fill('when forms.submitted(form: "Sales")\nthen chat.pst(x)')
    page.get_by_role("button", name="Validate").click()
    marker = page.locator("#v-marked .err-here")
    expect(marker).to_have_attribute("data-line", "2")
    expect(page.locator("#v-status")).to_contain_text("invalid at line 2, column")
    page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)  # docs' picture is not rewritten
    assert (tmp_path / "playground.png").stat().st_size > 10_000


def test_api_errors_are_shown_to_the_user(page):
    page.get_by_label("Request", exact=True).fill("")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#status")).to_contain_text("422 invalid_request")
