"""A real deployment with LocalExecutor: backfill, rerun of a failed window, the hourly schedule, login.

One deployment serves the module: PostgreSQL database ``braze_currents_e2e``, scheduler, dag-processor,
api-server and triggerer as separate processes, the settings loaded from an Astro-format file. Each
test has its own Current (own DAG, S3 prefix and messageId prefix), so the tests do not depend on
each other's order.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests

from braze_currents.localstack import LocalServices
from braze_currents.receiver import Fault
from tests.e2e.conftest import (
    Deployment,
    current_entry,
    generate_hour,
    note,
    now_hour,
    start_deployment,
    wait_for,
    workdir_for,
    write_exports,
)

DATABASE = "braze_currents_e2e"
BACKFILL_HOURS = 6
SETTINGS = """\
airflow:
  connections:
    - conn_id: e2e_extra_http
      conn_type: http
      conn_host: example.invalid
      conn_schema:
      conn_login: someone
      conn_password:
      conn_port: 8443
      conn_extra:
        timeout: 5
  pools:
    - pool_name: segment_uploads
      pool_slot: 3
      pool_description: Uploads to Segment
  variables:
    - variable_name: braze_currents_note
      variable_value: loaded without the Astro CLI
"""


@pytest.fixture(scope="module")
def deployment():
    workdir = workdir_for("local")
    with LocalServices(workdir / "services", bucket="e2e-currents") as services:
        exports = write_exports(
            workdir / "exports.yaml",
            [current_entry(name, services.bucket, workdir) for name in ("backfill", "rerun", "hourly")],
        )
        airflow = start_deployment(
            home=workdir / "airflow_home", database=DATABASE, services=services, exports=exports
        )
        try:
            settings = workdir / "airflow_settings.yaml"
            settings.write_text(SETTINGS)
            airflow.load_settings(settings)
            yield Deployment(airflow, services, workdir)
        finally:
            airflow.stop()


def test_settings_file_is_loaded_without_the_astro_cli(deployment):
    conn = deployment.sql(
        "SELECT conn_type, host, login, port, extra FROM connection WHERE conn_id = %s", ("e2e_extra_http",)
    )
    assert conn and conn[0]["conn_type"] == "http" and conn[0]["port"] == 8443
    assert conn[0]["login"] == "someone"
    pool = deployment.sql("SELECT slots, description FROM slot_pool WHERE pool = %s", ("segment_uploads",))
    assert pool == [{"slots": 3, "description": "Uploads to Segment"}]
    value = deployment.cli("variables", "get", "braze_currents_note").strip().splitlines()[-1]
    assert value == "loaded without the Astro CLI"


def test_backfill_of_six_hours_delivers_each_expected_message_once(deployment):
    name, dag_id = "backfill", "currents_to_segment_backfill"
    last = now_hour() - timedelta(hours=5)
    hours = [last - timedelta(hours=n) for n in range(BACKFILL_HOURS - 1, -1, -1)]
    client = deployment.services.s3_client()
    expected = {
        hour: generate_hour(client, deployment.services.bucket, name, hour, seed=i)
        for i, hour in enumerate(hours)
    }

    deployment.unpause(dag_id)
    deployment.backfill(dag_id, hours[0], hours[-1], max_active_runs=3)
    runs = deployment.wait_runs(dag_id, "backfill", BACKFILL_HOURS, timeout=600)

    assert [run["logical_date"] for run in runs] == hours
    assert [run["state"] for run in runs] == ["success"] * BACKFILL_HOURS
    for run in runs:
        assert run["data_interval_start"] == run["logical_date"]
        assert run["data_interval_end"] == run["logical_date"] + timedelta(hours=1)
    all_expected = set().union(*expected.values())
    assert deployment.accepted(f"{name}-") == all_expected
    assert deployment.services.receiver.stats()["duplicates"] == 0
    for hour in hours:
        report = deployment.report(name, hour)
        assert report["counts"]["sent"] == len(expected[hour])
        assert report["balanced"] is True
        counts = report["counts"]
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(counts["dropped"].items()))
        note(
            f"local backfill {hour:%Y-%m-%dT%H}:00Z: success, files={counts['files']} "
            f"read={counts['events_read']} sent={counts['sent']} (dropped {dropped})"
        )


def test_failed_window_is_completed_by_clearing_only_failed_tasks(deployment):
    name, dag_id = "rerun", "currents_to_segment_rerun"
    window = now_hour() - timedelta(hours=12)
    earlier = window - timedelta(hours=1)
    client = deployment.services.s3_client()
    expected_earlier = generate_hour(client, deployment.services.bucket, name, earlier, seed=1)
    expected = generate_hour(client, deployment.services.bucket, name, window, seed=2)
    receiver = deployment.services.receiver

    deployment.unpause(dag_id)
    deployment.backfill(dag_id, earlier, earlier)
    (first,) = deployment.wait_runs(dag_id, "backfill", 1, timeout=300)
    assert first["state"] == "success"
    untouched = deployment.task_instances(dag_id, first["run_id"])

    # Segment takes two batches of the window, then rejects the write key until the fault is removed.
    receiver.inject(Fault(delay=0.001, times=2), Fault(status=401, times=100_000))
    try:
        failed_run, before, failed = _fail_window(deployment, dag_id, window)
    finally:
        receiver.clear_faults()
    partial = deployment.accepted(f"{name}-") - expected_earlier
    assert 0 < len(partial) < len(expected)
    note(
        f"rerun {window:%Y-%m-%dT%H}:00Z: first run failed on 401 after 2 batches: {len(failed)} of "
        f"{sum(1 for task_id, _ in before if task_id == 'upload_chunk')} upload chunks failed, "
        f"{len(partial)} of {len(expected)} messageIds delivered"
    )

    deployment.cli(
        "tasks", "clear", dag_id, "--only-failed", "-s", window.isoformat(), "-e", window.isoformat(), "-y"
    )

    def rerun_finished():
        deployment.check_alive()
        (run,) = [r for r in deployment.runs(dag_id) if r["run_id"] == failed_run["run_id"]]
        return (
            run
            if run["state"] in {"success", "failed"} and run["end_date"] != failed_run["end_date"]
            else None
        )

    rerun = wait_for(rerun_finished, timeout=300, what="the cleared window to finish")
    assert rerun["state"] == "success"
    after = {
        (ti["task_id"], ti["map_index"]): ti for ti in deployment.task_instances(dag_id, failed_run["run_id"])
    }
    for key, ti in after.items():
        assert ti["state"] == "success"
        reran = key in failed or key == ("summarise", -1)
        assert (ti["try_number"] > before[key]["try_number"]) is reran, key
    assert deployment.task_instances(dag_id, first["run_id"]) == untouched
    assert deployment.accepted(f"{name}-") == expected | expected_earlier
    assert receiver.stats()["duplicates"] == 0
    assert deployment.report(name, window)["balanced"] is True
    note(
        f"rerun {window:%Y-%m-%dT%H}:00Z: after tasks clear --only-failed: success, reran "
        f"{len(failed)} chunks + summarise, {len(expected)} messageIds delivered, 0 duplicates; "
        f"window {earlier:%H}:00Z untouched"
    )


def test_hourly_schedule_creates_the_run_for_the_last_full_hour(deployment):
    name, dag_id = "hourly", "currents_to_segment_hourly"
    hour = now_hour() - timedelta(hours=1)
    expected = {hour: generate_hour(deployment.services.s3_client(), deployment.services.bucket, name, hour)}

    deployment.unpause(dag_id)
    (run,) = deployment.wait_runs(dag_id, "scheduled", 1, timeout=300)[:1]

    logical = run["logical_date"]
    assert logical in {hour, hour + timedelta(hours=1)}  # the next hour only if the clock turned meanwhile
    assert run["data_interval_start"] == logical
    assert run["data_interval_end"] == logical + timedelta(hours=1)
    assert run["state"] == "success"
    assert deployment.report(name, logical)["counts"]["sent"] == len(expected.get(logical, ()))
    assert deployment.accepted(f"{name}-") == expected.get(logical, set())
    (dag,) = deployment.sql(
        "SELECT next_dagrun, next_dagrun_data_interval_start, next_dagrun_data_interval_end "
        "FROM dag WHERE dag_id = %s",
        (dag_id,),
    )
    latest = max(r["logical_date"] for r in deployment.runs(dag_id, "scheduled"))
    assert dag["next_dagrun"] == latest + timedelta(hours=1)
    assert dag["next_dagrun_data_interval_start"] == latest + timedelta(hours=1)
    assert dag["next_dagrun_data_interval_end"] == latest + timedelta(hours=2)
    note(
        f"hourly schedule: scheduled run {logical:%Y-%m-%dT%H}:00Z, data interval [{logical:%H}:00, "
        f"{logical + timedelta(hours=1):%H}:00), success; next run {dag['next_dagrun']:%Y-%m-%dT%H}:00Z"
    )


def test_api_requires_login_and_admin_password_works(deployment):
    url = deployment.airflow.url
    assert requests.get(f"{url}/api/v2/dags", timeout=10).status_code == 401
    password = wait_for(deployment.airflow.admin_password, timeout=30, what="the generated admin password")
    wrong = requests.post(
        f"{url}/auth/token", json={"username": "admin", "password": password + "x"}, timeout=10
    )
    assert wrong.status_code == 401
    token = requests.post(f"{url}/auth/token", json={"username": "admin", "password": password}, timeout=10)
    assert token.status_code == 201
    headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
    dags = requests.get(f"{url}/api/v2/dags", headers=headers, timeout=10).json()
    assert {"currents_to_segment_backfill", "currents_to_segment_rerun"} <= {
        d["dag_id"] for d in dags["dags"]
    }


def _fail_window(deployment, dag_id, window):
    """Backfill one window while Segment refuses it; return the failed run, its task instances, failures."""
    deployment.backfill(dag_id, window, window)
    runs = deployment.wait_runs(dag_id, "backfill", 2, timeout=300)
    failed_run = next(run for run in runs if run["logical_date"] == window)
    assert failed_run["state"] == "failed"
    before = {
        (ti["task_id"], ti["map_index"]): ti for ti in deployment.task_instances(dag_id, failed_run["run_id"])
    }
    failed = {key for key, ti in before.items() if ti["state"] == "failed"}
    assert failed and all(task_id == "upload_chunk" for task_id, _ in failed)
    assert before[("summarise", -1)]["state"] == "upstream_failed"
    return failed_run, before, failed
