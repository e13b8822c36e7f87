"""Scale-out: the same backfill on CeleryExecutor, two workers, staging and state on S3.

Redis at 127.0.0.1:6379 is the broker (a database number of its own, emptied first); the result
backend is the PostgreSQL database ``braze_currents_e2e_celery``. The two workers record distinct
host names on their task instances, as workers on two machines would; nothing they share but S3, the
database and the broker.
"""

from __future__ import annotations

import collections
import os
import re
from datetime import timedelta

import pytest

from braze_currents.localstack import LocalServices
from tests.e2e.conftest import (
    Deployment,
    current_entry,
    generate_hour,
    note,
    now_hour,
    start_deployment,
    workdir_for,
    write_exports,
)

DATABASE = "braze_currents_e2e_celery"
REDIS_DB = int(os.environ.get("BRAZE_CURRENTS_E2E_REDIS_DB", "13"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
WORK_BUCKET = "e2e-airflow-work"
WORKERS = ("worker-a", "worker-b")
BACKFILL_HOURS = 6
# About four chunks of 2,500 events per window, so that one window's chunks can spread over both workers.
EVENTS_PER_TYPE = 2000


def require_redis() -> None:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
        client.ping()
        client.flushdb()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL} ({exc}); start one (README: 'make test-e2e'), "
            "e.g. apt-get install redis-server, or docker run -p 127.0.0.1:6379:6379 redis:7"
        )


@pytest.fixture(scope="module")
def deployment():
    require_redis()
    workdir = workdir_for("celery")
    with LocalServices(workdir / "services", bucket="e2e-currents") as services:
        services.s3_client().create_bucket(Bucket=WORK_BUCKET)
        exports = write_exports(
            workdir / "exports.yaml",
            [current_entry("scaleout", services.bucket, f"s3://{WORK_BUCKET}/braze")],
        )
        env = {
            "AIRFLOW__CELERY__BROKER_URL": REDIS_URL,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        }
        airflow = start_deployment(
            home=workdir / "airflow_home",
            database=DATABASE,
            services=services,
            exports=exports,
            executor="CeleryExecutor",
            components=("scheduler", "dag-processor", "api-server"),
            extra_env=env,
        )
        try:
            for worker in WORKERS:
                airflow.start_celery_worker(worker, concurrency=2)
            yield Deployment(airflow, services, workdir)
        finally:
            airflow.stop()


def test_celery_backfill_spreads_chunks_over_both_workers_and_delivers_once(deployment):
    name, dag_id = "scaleout", "currents_to_segment_scaleout"
    last = now_hour() - timedelta(hours=5)
    hours = [last - timedelta(hours=n) for n in range(BACKFILL_HOURS - 1, -1, -1)]
    client = deployment.services.s3_client()
    expected = set()
    for seed, hour in enumerate(hours):
        expected |= generate_hour(
            client, deployment.services.bucket, name, hour, seed=seed, events_per_type=EVENTS_PER_TYPE
        )

    deployment.unpause(dag_id)
    deployment.backfill(dag_id, hours[0], hours[-1], max_active_runs=3)
    runs = deployment.wait_runs(dag_id, "backfill", BACKFILL_HOURS, timeout=600)

    assert [run["state"] for run in runs] == ["success"] * BACKFILL_HOURS
    assert deployment.accepted(f"{name}-") == expected
    assert deployment.services.receiver.stats()["duplicates"] == 0

    by_window: dict[str, dict[str, list[str]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for run in runs:
        for ti in deployment.task_instances(dag_id, run["run_id"]):
            assert ti["hostname"] in WORKERS, ti
            if ti["task_id"] == "upload_chunk":
                label = str(ti["map_index"])
                by_window[f"{run['logical_date']:%Y-%m-%dT%H}:00Z"][ti["hostname"]].append(label)
    assert any(len(hosts) == len(WORKERS) for hosts in by_window.values()), dict(by_window)

    # Each prepare task forked its workers before loading polars, so they all decoded with it.
    logs = sorted(
        (deployment.airflow.home / "logs" / f"dag_id={dag_id}").glob(
            "run_id=backfill__*/task_id=prepare_chunks/*.log"
        )
    )
    decoded = [
        re.search(r"Decoded (\d+) files with polars and (\d+) with fastavro", log.read_text()) for log in logs
    ]
    assert len(logs) == BACKFILL_HOURS and all(decoded), logs
    assert [int(found[2]) for found in decoded] == [0] * BACKFILL_HOURS
    assert sum(int(found[1]) for found in decoded) > 0

    state = client.list_objects_v2(Bucket=WORK_BUCKET, Prefix="braze/state/")
    assert state.get("KeyCount", 0) > 0  # the ledger lives on S3, where every worker reads it
    staged = client.list_objects_v2(Bucket=WORK_BUCKET, Prefix="braze/staging/")
    assert staged.get("KeyCount", 0) == 0  # summaries removed every staged chunk

    for window, hosts in sorted(by_window.items()):
        note(
            f"celery backfill {window}: "
            + "; ".join(
                f"{host} ran chunks {','.join(sorted(chunks))}" for host, chunks in sorted(hosts.items())
            )
        )
    note(
        f"celery backfill: {len(runs)} runs success, {len(expected)} messageIds delivered once, 0 duplicates"
    )
