"""Build one hourly export DAG per Current in the exports config."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Asset, CronDataIntervalTimetable, Param, XComArg

from braze_currents.config import CurrentConfig
from braze_currents_airflow.operators import (
    ListWindowFilesOperator,
    PrepareChunksOperator,
    SummariseWindowOperator,
    UploadChunkOperator,
)

DOC = """
### Braze Currents to Segment: `{name}`

Every hour this DAG exports partition `date=H` of `s3://{bucket}/{prefix}` to Segment ({region}):
list the hour's files, prepare chunks (decode, filter, map, batch), upload each chunk as its own
task with retries, then summarise. Trigger it with the param `window` (e.g. `2026-12-01T04:00:00Z`)
to process a given hour; without it a manual run processes the last full hour.
"""


def reports_asset(current: CurrentConfig) -> Asset:
    """Return the asset each summary updates: the Current's window reports, its events carrying the counts.

    Named after the DAG alone (no location in its URI), so moving ``dead_letters`` keeps the same asset.

    :param current: the checked settings of the Current.
    """
    return Asset(name=f"{current.dag_id}_reports")


def build_dag(current: CurrentConfig) -> DAG:
    """Return the DAG that exports one Current.

    :param current: the checked settings of the Current.
    """
    shared: dict[str, Any] = {
        "current_name": current.name,
        "aws_conn_id": current.source_conn_id,
        "staging": current.staging,
        "state": current.state,
        "dead_letters": current.dead_letters,
    }
    with DAG(
        dag_id=current.dag_id,
        schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
        start_date=current.start_date,
        catchup=current.catchup,
        max_active_runs=current.max_active_runs,
        doc_md=DOC.format(
            name=current.name, bucket=current.bucket, prefix=current.prefix, region=current.region
        ),
        tags=["braze", "currents", "segment", *current.tags],
        params={
            "force": Param(
                False,
                type="boolean",
                description="Re-send the whole window even where the ledger records it as delivered",
            ),
            "dry_run": Param(
                current.dry_run,
                type="boolean",
                description="Stage the exact request bodies and report what would be sent; send nothing",
            ),
            "retry_dead_letters": Param(
                False,
                type="boolean",
                description="Read again the files that have dead letters and send what is not delivered yet",
            ),
            "window": Param(
                "",
                type="string",
                description="Hour to process, e.g. 2026-12-01T04:00:00Z; empty: the run's own hour",
            ),
        },
        default_args={
            "retries": current.retries,
            "retry_delay": timedelta(seconds=30),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": timedelta(minutes=10),
        },
    ) as dag:
        listing = ListWindowFilesOperator(
            task_id="list_files",
            aws_conn_id=current.source_conn_id,
            bucket=current.bucket,
            prefix=current.prefix,
            event_types=current.event_types,
            lookback_hours=current.lookback_hours,
        )
        prepare = PrepareChunksOperator(
            task_id="prepare_chunks",
            listing=listing.output,
            event_types=current.event_types,
            mapping_file=current.mapping_file,
            mapping_overrides=current.mapping_overrides,
            filters=current.filters,
            anonymous_users=current.anonymous_users,
            message_id_prefix=current.message_id_prefix,
            integrations=current.integrations,
            chunk_events=current.chunk_events,
            workers=current.prepare_workers,
            **shared,
        )
        upload = UploadChunkOperator.partial(
            task_id="upload_chunk",
            segment_conn_id=current.segment_conn_id,
            region=current.region,
            concurrency=current.upload_concurrency,
            requests_per_second=current.requests_per_second,
            events_per_second=current.events_per_second,
            map_index_template="{{ chunk_label }}",
            **shared,
        ).expand(chunk=prepare.output)
        summary = SummariseWindowOperator(
            task_id="summarise",
            prepared=XComArg(prepare, key="prepared"),
            listing=listing.output,
            on_dead_letters=current.on_dead_letters,
            keep_staged=current.keep_staged,
            staged_retention_hours=current.staged_retention_hours,
            outlets=[reports_asset(current)],
            # An hour with nothing to send maps no upload task; the summary must still run then.
            trigger_rule="none_failed",
            **shared,
        )
        upload >> summary
    return dag
