"""Each window's counts reach the Airflow UI without logs: the page, asset events and the counts XCom.

Checked against the report files of the windows the session fixture ran.
"""

from __future__ import annotations

from urllib.parse import quote

import requests

from braze_currents_airflow.ui.windows import headline_counts


def _get(site, path: str, **params) -> requests.Response:
    response = requests.get(
        f"{site.base_url}{path}",
        params=params,
        headers={"Authorization": f"Bearer {site.token()}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def test_the_fixture_ran_clean_windows_and_one_with_dead_letters(site):
    states = {(window.current, window.state) for window in site.windows}

    assert states == {("alpha", "success"), ("beta", "failed")}
    (beta,) = [window for window in site.windows if window.current == "beta"]
    assert site.report(beta)["counts"]["dead_lettered"] > 0


def test_page_data_matches_each_windows_report_and_run(site):
    body = _get(site, "/currents-to-segment/api/windows", limit=10).json()

    assert body["problem"] is None
    shown = {
        (current["dag_id"], window["window"]): window
        for current in body["currents"]
        for window in current["windows"]
    }
    assert [current["name"] for current in body["currents"]] == ["alpha", "beta"]
    for ran in site.windows:
        window = shown[(ran.dag_id, ran.window.isoformat())]
        assert window["counts"] == headline_counts(site.report(ran))
        assert (window["run_id"], window["state"], window["runs"]) == (ran.run_id, ran.state, 1)
        assert window["counts"]["sent"] > 0


def test_successful_windows_put_their_counts_on_an_asset_event(site):
    alpha = {window.run_id: window for window in site.windows if window.current == "alpha"}
    events = _get(site, "/api/v2/assets/events", source_dag_id="currents_to_segment_alpha").json()

    by_run = {event["source_run_id"]: event for event in events["asset_events"]}
    assert set(by_run) == set(alpha)
    for run_id, ran in alpha.items():
        event = by_run[run_id]
        assert event["source_task_id"] == "summarise"
        assert event["extra"] == {"window": ran.window.isoformat(), **headline_counts(site.report(ran))}


def test_a_failed_window_still_shows_its_counts_in_the_summary_xcom(site):
    (beta,) = [window for window in site.windows if window.current == "beta"]
    path = (
        f"/api/v2/dags/{beta.dag_id}/dagRuns/{quote(beta.run_id, safe='')}"
        "/taskInstances/summarise/xcomEntries/counts"
    )

    value = _get(site, path, deserialize="true").json()["value"]

    assert value == {"window": beta.window.isoformat(), **headline_counts(site.report(beta))}
    assert value["dead_lettered"] > 0
