"""What the page gathers and draws, from report files written by the real summary code."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from braze_currents.deadletters import DeadLetter, to_ndjson
from braze_currents.report import summarise_window
from braze_currents.storage import LocalStore, S3Store
from braze_currents_airflow.ui.page import chart_svg, render_page
from braze_currents_airflow.ui.windows import (
    CurrentView,
    RunRecord,
    headline_counts,
    read_report,
    recent_windows,
)

NOW = datetime(2026, 12, 4, 16, 25, tzinfo=UTC)
H = datetime(2026, 12, 4, 15, tzinfo=UTC)  # the last full hour before NOW
CURRENT = "shop"


def write_report(root, hour: datetime, *, read: int, dropped: dict[str, int], letters: int = 0) -> dict:
    """Write a window's report with the real summary code: nothing staged, so nothing sent."""
    staging, state, dead = (LocalStore(root / name) for name in ("staging", "state", "dead_letters"))
    folder = f"{CURRENT}/date={hour:%Y-%m-%d-%H}"
    dead.put(
        f"{folder}/prepare-dead-letters.ndjson",
        to_ndjson(DeadLetter(reason="event_over_32kb", key="k.avro", id=f"id-{n}") for n in range(letters)),
    )
    prepared = {
        "window": hour.isoformat(),
        "folder": folder,
        "chunks": [],
        "source_files": [],
        "counts": {
            "files": 3,
            "files_failed": 0,
            "files_already_done": 0,
            "events_read": read,
            "dropped": dropped,
            "dead_lettered_prepare": letters,
            "staged": 0,
            "chunks": 0,
            "batches": 0,
        },
    }
    return summarise_window(prepared, {}, staging=staging, state=state, dead_letters=dead, folder=folder)


def run(run_id: str, *, logical: datetime | None, after: datetime, state="success", conf=None) -> RunRecord:
    return RunRecord(run_id=run_id, state=state, logical_date=logical, run_after=after, conf=conf)


def test_headline_counts_take_reasons_totals_and_dead_letters_from_a_real_report(tmp_path):
    report = write_report(
        tmp_path, H, read=10, dropped={"duplicate_id": 2, "missing_external_user_id": 5}, letters=3
    )

    counts = headline_counts(report)

    assert counts["files"] == 3 and counts["events_read"] == 10
    assert counts["dropped"] == {"duplicate_id": 2, "missing_external_user_id": 5}
    assert counts["dropped_total"] == 7
    assert counts["dead_lettered"] == 3
    assert counts["sent"] == 0


@pytest.mark.parametrize(
    ("extra", "late"),
    (
        ({"counts": {"late": 4}}, 4),
        ({"counts": {"late_files": [{"key": "a"}, {"key": "b"}]}}, 2),
        ({"late_files": [{"key": "a"}]}, 1),
        ({}, None),
    ),
)
def test_late_files_are_shown_only_when_the_report_states_them(extra, late):
    report = {"counts": {"files": 1, "events_read": 0, "dropped": {}, **extra.get("counts", {})}}
    report.update({key: value for key, value in extra.items() if key != "counts"})

    counts = headline_counts(report)

    assert counts.get("late") == late


def test_recent_windows_list_reports_and_runs_newest_first_and_skip_empty_hours(tmp_path):
    for back in (0, 1, 3):
        write_report(tmp_path, H - timedelta(hours=back), read=10 + back, dropped={})
    store = LocalStore(tmp_path / "dead_letters")
    old = datetime(2026, 11, 20, 7, tzinfo=UTC)  # a backfilled window far outside the scanned hours
    runs = [
        run("scheduled", logical=H, after=H + timedelta(hours=1, minutes=1)),
        run("backfill", logical=old, after=NOW - timedelta(minutes=30), state="running"),
    ]

    views = recent_windows(CURRENT, store, runs, now=NOW, scan_hours=6)

    assert [view.window for view in views] == [H, H - timedelta(hours=1), H - timedelta(hours=3), old]
    assert [view.counts["events_read"] if view.counts else None for view in views] == [10, 11, 13, None]
    assert views[0].run.run_id == "scheduled"
    assert views[1].run is None and views[1].runs == 0
    assert views[3].run.state == "running" and views[3].counts is None


def test_a_runs_window_is_resolved_like_the_dag_does(tmp_path):
    write_report(tmp_path, H - timedelta(hours=2), read=5, dropped={})
    store = LocalStore(tmp_path / "dead_letters")
    runs = [
        # A manual run naming its hour with the window param.
        run(
            "manual__param", logical=None, after=NOW, conf={"window": f"{H - timedelta(hours=2):%Y-%m-%dT%H}"}
        ),
        # A manual run without a logical date processes the last full hour before it started.
        run("manual__plain", logical=None, after=H + timedelta(hours=1, minutes=20), state="failed"),
        run("manual__bad", logical=None, after=NOW, conf={"window": "yesterday"}),
    ]

    views = {view.window: view for view in recent_windows(CURRENT, store, runs, now=NOW, scan_hours=0)}

    assert views[H - timedelta(hours=2)].run.run_id == "manual__param"
    assert views[H].run.run_id == "manual__plain" and views[H].counts is None
    assert len(views) == 2


def test_the_latest_of_several_runs_of_a_window_is_shown(tmp_path):
    write_report(tmp_path, H, read=5, dropped={})
    runs = [
        run("rerun", logical=H, after=H + timedelta(hours=1, minutes=40), conf={"force": True}),
        run("first", logical=H, after=H + timedelta(hours=1), state="failed"),
    ]

    (view,) = recent_windows(CURRENT, LocalStore(tmp_path / "dead_letters"), runs, now=NOW, scan_hours=0)

    assert (view.run.run_id, view.run.state, view.runs) == ("rerun", "success", 2)


def test_limit_keeps_the_newest_windows(tmp_path):
    for back in range(5):
        write_report(tmp_path, H - timedelta(hours=back), read=back, dropped={})

    views = recent_windows(CURRENT, LocalStore(tmp_path / "dead_letters"), [], now=NOW, limit=2)

    assert [view.window for view in views] == [H, H - timedelta(hours=1)]


def test_an_unreadable_report_is_shown_as_a_problem_not_an_error(tmp_path):
    store = LocalStore(tmp_path / "dead_letters")
    store.put(f"{CURRENT}/date={H:%Y-%m-%d-%H}/report.json", b"[1, 2]")

    (view,) = recent_windows(CURRENT, store, [], now=NOW)

    assert view.counts is None and "not a JSON object" in view.problem


def test_reports_are_read_from_an_s3_location(tmp_path):
    import boto3
    from moto import mock_aws

    report = write_report(tmp_path, H, read=9, dropped={"duplicate_id": 1})
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="reports")
        store = S3Store(client, "reports", "braze/dead_letters")
        store.put(f"{CURRENT}/date={H:%Y-%m-%d-%H}/report.json", orjson.dumps(report))

        assert read_report(store, CURRENT, H) == report
        assert read_report(store, CURRENT, H - timedelta(hours=1)) is None


def test_page_shows_every_window_with_its_counts_state_and_run_link(tmp_path):
    write_report(
        tmp_path, H, read=1200, dropped={"duplicate_id": 20, "missing_external_user_id": 80}, letters=2
    )
    write_report(tmp_path, H - timedelta(hours=1), read=900, dropped={"duplicate_id": 9})
    runs = [run("scheduled__2026-12-04T15:00:00+00:00", logical=H, after=NOW, state="failed")]
    views = recent_windows(CURRENT, LocalStore(tmp_path / "dead_letters"), runs, now=NOW)
    current = CurrentView(name=CURRENT, dag_id="currents_to_segment_shop", dead_letters="/x", windows=views)

    html = render_page([current], airflow_base="/airflow", generated_at=NOW)

    row = re.search(r'<tr data-window="2026-12-04T15">(.*?)</tr>', html).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[0] == "2026-12-04 15:00"
    assert (
        'href="/airflow/dags/currents_to_segment_shop/runs/scheduled__2026-12-04T15%3A00%3A00%2B00%3A00"'
        in cells[1]
    )
    assert ">failed<" in cells[1]
    # files, read, dropped by reason (duplicate_id, missing_external_user_id), sent, dead-lettered
    assert cells[2:8] == ["3", "1,200", "20", "80", "0", "2"]
    assert "no run recorded" in html
    assert html.count('<g class="hour"') == 2
    assert "<script" not in html


def test_page_escapes_what_it_shows(tmp_path):
    write_report(tmp_path, H, read=1, dropped={"<b>odd</b>": 1})
    runs = [run('x"><script>alert(1)</script>', logical=H, after=NOW)]
    views = recent_windows(CURRENT, LocalStore(tmp_path / "dead_letters"), runs, now=NOW)
    current = CurrentView(name=CURRENT, dag_id="currents_to_segment_shop", dead_letters="/x", windows=views)

    html = render_page([current], airflow_base="", generated_at=NOW)

    assert "<script>" not in html and "<b>odd</b>" not in html
    assert "&lt;b&gt;odd&lt;/b&gt;" in html


def test_chart_stacks_sent_dropped_and_dead_letters_per_hour(tmp_path):
    write_report(tmp_path, H, read=30, dropped={"duplicate_id": 10}, letters=20)
    views = recent_windows(CURRENT, LocalStore(tmp_path / "dead_letters"), [], now=NOW)

    svg = chart_svg(views)

    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"', svg)]
    assert len(heights) == 2  # nothing sent: one bar for dropped, one for dead letters
    assert heights[1] == pytest.approx(2 * heights[0], rel=0.01)
    assert "dropped 10, dead-lettered 20" in svg


def test_late_files_column_appears_only_when_a_report_states_late_files(tmp_path):
    store = LocalStore(tmp_path / "dead_letters")
    for back, late in ((0, None), (1, 2)):
        report = write_report(tmp_path, H - timedelta(hours=back), read=4, dropped={})
        report["counts"].pop("late", None)
        report.pop("late_files", None)
        if late is not None:
            report["counts"]["late"] = late
        store.put(f"{CURRENT}/date={H - timedelta(hours=back):%Y-%m-%d-%H}/report.json", orjson.dumps(report))

    def page(limit: int) -> str:
        views = recent_windows(CURRENT, store, [], now=NOW, limit=limit)
        current = CurrentView(
            name=CURRENT, dag_id="currents_to_segment_shop", dead_letters="/x", windows=views
        )
        return render_page([current], airflow_base="", generated_at=NOW)

    assert 'data-key="late"' not in page(limit=1)  # only the newest window, which states none
    both = page(limit=2)
    assert 'data-key="late"' in both
    older = re.search(r'<tr data-window="2026-12-04T14">(.*?)</tr>', both).group(1)
    assert re.findall(r"<td[^>]*>(.*?)</td>", older)[6] == "2"  # window, run, files, read, sent, dead, late
