"""The playground in a real browser (Debian chromium driven by Playwright) against the real service."""

from __future__ import annotations

import contextlib
import re
import shutil

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
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


def test_no_empty_output_box_shows_before_there_is_output(page):
    for box in ("#code", "#tree", "#v-marked", "#o-log"):
        assert page.locator(box).evaluate("pre => pre.textContent === '' && getComputedStyle(pre).display === 'none'")
    # The key field's placeholder fits inside it (measured in the field's own font).
    fits = page.get_by_label("API key").evaluate("""input => {
        const context = document.createElement("canvas").getContext("2d");
        const style = getComputedStyle(input);
        context.font = style.font;
        const padding = parseFloat(style.paddingLeft) + parseFloat(style.paddingRight);
        return context.measureText(input.placeholder).width <= input.clientWidth - padding;
    }""")
    assert fits


def test_generates_flow_code_and_marks_it_valid(page):
    page.locator("#dsl").select_option("flow")
    page.get_by_label("Request", exact=True).fill("when a form is submitted, post the answers to #sales")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#verdict")).to_have_text("valid", timeout=120_000)
    expect(page.locator("#code")).to_contain_text("when ")
    expect(page.locator("#code .tok-op").first).to_be_visible()  # highlighted
    expect(page.locator("#timings")).to_contain_text("completion tokens")
    expect(page.locator("#tree")).to_contain_text("start", timeout=10_000)


def test_candidates_answer_with_their_votes_and_a_confidence(page):
    page.locator("#dsl").select_option("flow")
    page.get_by_label("Request", exact=True).fill("when a ticket is created, email the support team")
    page.get_by_label("Candidates").fill("3")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#verdict")).to_have_text("valid", timeout=180_000)
    expect(page.locator("#confidence")).to_have_text(re.compile(r"^confidence (0|1)\.\d\d( \(raw\))?$"))
    expect(page.locator("#candidates-list li")).to_have_count(3)
    expect(page.locator("#candidates-list li").first).to_contain_text("vote")
    page.get_by_label("Candidates").fill("1")


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


def _until(page, selector: str, *, timeout_s: float = 300) -> None:
    """Wait until ``selector`` is on the page; a run that ends first (or a wait that runs out) fails the test with
    the run's status and log as the playground shows them."""
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function("sel => document.querySelector(sel) || document.getElementById('o-stop').disabled",
                               arg=selector, timeout=timeout_s * 1000)
    if not page.locator(selector).count():
        pytest.fail(f"waiting for {selector}: {page.locator('#o-status').text_content()}\n"
                    f"{page.locator('#o-log').text_content()}")


def test_onboarding_view_runs_a_dsl_to_a_published_adapter_and_tries_it(page, server):
    """Grammar and pairs in, the stages and the held-out score as they go, the report, then the adapter served.
    The DSL is the shopping-list language written for issue 28: `[...]` optionals, an inlined rule, aliases,
    %import and %ignore, the constructs that once crashed onboarding."""
    import json

    from service.config import PROJECT_ROOT

    folder = PROJECT_ROOT / "data" / "onboarding" / "shop"
    rows = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    short = [row for row in rows if len(row["code"]) <= 24][:40]  # short codes: short outputs on a CPU
    assert any("@" in row["code"] or " by " in row["code"] or "(" in row["code"] for row in short)
    page.locator("#o-name").fill("shop")
    page.locator("#o-grammar").fill((folder / "shop.lark").read_text())
    page.locator("#o-pairs").fill("\n".join(json.dumps(row) for row in short))
    # Two training steps and 5 held-out pairs (the fewest a run scores on) keep it to minutes on a CPU; margin -1
    # and alpha 1 publish what trains (the gate's decisions are unit-tested).
    page.locator("#o-steps").fill("2")
    page.locator("#o-heldout").fill("5")
    page.locator("#o-margin").fill("-1")
    page.locator("#o-alpha").fill("1")
    page.locator("#o-max-tokens").fill("16")
    page.get_by_role("button", name="Start onboarding").click()
    expect(page.locator("#o-status")).to_contain_text("running", timeout=30_000)
    expect(page.locator("#o-stop")).to_be_enabled()
    _until(page, "#o-stages li[data-stage=baseline].done")
    expect(page.locator("#o-scores tbody tr")).to_have_count(2)  # the two baselines, before training
    _until(page, "#o-stages li[data-stage=train].done")
    # Training has ended: the bar reads finished, whatever step an early stop ended at.
    expect(page.locator("#o-score")).to_contain_text("training finished at step 2 of 2 planned · held-out score")
    assert page.locator("#o-progress").evaluate("bar => bar.value === bar.max")
    _until(page, "#o-stop:disabled")
    expect(page.locator("#o-status")).to_contain_text("published")
    expect(page.locator("#o-scores tbody tr")).to_have_count(7)  # with the best adapter's 3 candidates
    expect(page.locator("#o-verdict")).to_contain_text("published:")
    expect(page.locator("#o-report")).to_contain_text("# Onboarding `shop`")
    expect(page.locator("#o-chart")).to_have_attribute("src", re.compile("^blob:"))
    assert page.locator("#o-chart").evaluate("img => img.complete && img.naturalWidth") > 100  # the PNG drew
    page.get_by_role("button", name="Try the published adapter").click()
    expect(page.locator("#timings")).to_contain_text("adapter shop", timeout=120_000)
    expect(page.locator("#verdict")).not_to_be_empty()
    with server.client() as admin:  # the shared DSL and adapter this test published
        assert admin.delete("/adapters/shop").status_code == 204
        assert admin.delete("/dsls/shop").status_code == 204
