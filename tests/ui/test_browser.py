"""The page in headless Chromium: sign in through Airflow's login, open it from the UI, check it.

The table is compared with the report files and runs of the windows the session fixture ran; a
screenshot lands in ``var/ui-screenshots/`` (ignored by git).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from braze_currents_airflow.ui.windows import headline_counts
from tests.ui.browser import Browser, chromium_available
from tests.ui.support import USER, wait_for

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "ui-screenshots"
UI_TIMEOUT = 90

pytestmark = pytest.mark.skipif(not chromium_available(), reason="needs Debian's chromium (make chromium)")

# Each Current's table as the browser renders it, read from inside the UI's iframe.
READ_PAGE = """
(() => {
  const frame = document.querySelector('iframe');
  const doc = frame && frame.contentDocument;
  if (!doc || !doc.querySelector('section.current')) return null;
  return {
    src: frame.getAttribute('src'),
    currents: Array.from(doc.querySelectorAll('section.current')).map(section => ({
      dag_id: section.dataset.dagId,
      head: Array.from(section.querySelectorAll('thead th')).map(th => th.dataset.key),
      bars: section.querySelectorAll('svg g.hour').length,
      rows: Array.from(section.querySelectorAll('tr[data-window]')).map(row => ({
        window: row.dataset.window,
        cells: Array.from(row.cells).map(cell => cell.innerText.trim()),
        href: row.querySelector('a.run') ? row.querySelector('a.run').href : null,
        target: row.querySelector('a.run') ? row.querySelector('a.run').target : null,
      })),
    })),
  };
})()
"""


def sign_in(browser: Browser, username: str, password: str) -> None:
    """Fill Airflow's own login form and submit it, as a person would."""
    wait_for(
        lambda: browser.evaluate("document.querySelectorAll('input').length >= 2"),
        timeout=UI_TIMEOUT,
        what="the login form",
    )
    for index, text in enumerate((username, password)):
        browser.evaluate(f"document.querySelectorAll('input')[{index}].focus()")
        browser.call("Input.insertText", {"text": text})
    wait_for(
        lambda: browser.evaluate("!document.querySelector('button[type=submit]').disabled"),
        timeout=10,
        what="the sign-in button to be enabled",
    )
    browser.evaluate("document.querySelector('button[type=submit]').click()")


def expected_cells(head: list[str], report: dict, state: str) -> dict[str, str]:
    """Return what each column (by its data-key) must show for a window, from its report."""
    counts = headline_counts(report)
    cells = {
        "run": state,
        "files": f"{counts['files']:,}",
        "events_read": f"{counts['events_read']:,}",
        "sent": f"{counts['sent']:,}",
        "dead_lettered": f"{counts['dead_lettered']:,}",
        "batches": f"{counts['batches']:,}",
        "balanced": "yes" if report["balanced"] else "no",
    }
    for key in head:
        if key.startswith("dropped:"):
            cells[key] = f"{counts['dropped'].get(key.removeprefix('dropped:'), 0):,}"
    if "late" in head:
        cells["late"] = f"{counts['late']:,}" if "late" in counts else ""
    return cells


@pytest.fixture
def browser(tmp_path):
    browser = Browser(tmp_path / "chromium-profile")
    yield browser
    browser.close()


def test_signed_in_user_sees_every_window_with_the_counts_of_its_report(site, browser):
    browser.open(f"{site.base_url}/plugin/currents-to-segment")
    sign_in(browser, USER, site.password)

    page = wait_for(lambda: browser.evaluate(READ_PAGE), timeout=UI_TIMEOUT, what="the page inside the UI")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.screenshot(SCREENSHOTS / "currents-to-segment-in-airflow.png")

    assert page["src"] == "/currents-to-segment/"
    tables = {current["dag_id"]: current for current in page["currents"]}
    assert set(tables) == {"currents_to_segment_alpha", "currents_to_segment_beta"}
    for ran in site.windows:
        table = tables[ran.dag_id]
        (row,) = [row for row in table["rows"] if row["window"] == f"{ran.window:%Y-%m-%dT%H}"]
        shown = dict(zip(table["head"], row["cells"], strict=True))
        expected = expected_cells(table["head"], site.report(ran), ran.state)
        assert {name: shown[name] for name in expected} == expected
        assert shown["window"] == f"{ran.window:%Y-%m-%d %H}:00"
        assert any(key.startswith("dropped:") for key in table["head"])
        assert row["href"].endswith(
            f"/dags/{ran.dag_id}/runs/{ran.run_id}".replace(":", "%3A").replace("+", "%2B")
        )
        assert row["target"] == "_top"
    assert tables["currents_to_segment_alpha"]["bars"] == 3
    assert tables["currents_to_segment_beta"]["bars"] == 1


def test_a_run_link_opens_that_run_in_the_airflow_ui(site, browser):
    browser.open(f"{site.base_url}/plugin/currents-to-segment")
    sign_in(browser, USER, site.password)
    page = wait_for(lambda: browser.evaluate(READ_PAGE), timeout=UI_TIMEOUT, what="the page inside the UI")
    (beta,) = [window for window in site.windows if window.current == "beta"]
    (row,) = next(c for c in page["currents"] if c["dag_id"] == beta.dag_id)["rows"]

    browser.open(row["href"])

    wait_for(
        lambda: beta.run_id in browser.evaluate("document.body.innerText"),
        timeout=UI_TIMEOUT,
        what=f"the run page of {beta.run_id}",
    )
    assert browser.evaluate("location.pathname").startswith(f"/dags/{beta.dag_id}/runs/")


def test_the_page_alone_without_login_shows_no_data(site, browser):
    browser.open(f"{site.base_url}/currents-to-segment/")

    text = wait_for(
        lambda: browser.evaluate("document.body && document.body.innerText"), timeout=30, what="a body"
    )

    assert "Not authenticated" in text
    assert "alpha" not in text


def test_the_page_alone_after_login(site, browser):
    browser.open(f"{site.base_url}/auth/login?next=/currents-to-segment/")
    sign_in(browser, USER, site.password)

    wait_for(
        lambda: browser.evaluate("!!document.querySelector('section.current tr[data-window]')"),
        timeout=UI_TIMEOUT,
        what="the page after signing in",
    )
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1200, "height": 900, "deviceScaleFactor": 1, "mobile": False},
    )
    browser.screenshot(SCREENSHOTS / "currents-to-segment.png")
    assert browser.evaluate("document.querySelectorAll('section.current').length") == 2
