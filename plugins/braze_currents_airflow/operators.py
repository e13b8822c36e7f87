"""Operators that wire the braze_currents core to Airflow: list, prepare, upload, summarise."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from braze_currents.storage import Store, open_store


def _s3_client_factory(aws_conn_id: str) -> Any:
    def make() -> Any:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=aws_conn_id).get_conn()

    return make


def window_folder(current_name: str, window: str) -> str:
    """Return the folder of one window inside staging, state and dead-letter locations."""
    from braze_currents.keys import partition_name
    from braze_currents.window import parse_hour

    return f"{current_name}/date={partition_name(parse_hour(window))}"


class _CurrentsOperator(BaseOperator):
    """Shared settings: the Current's name and where its staging, state and dead letters live."""

    def __init__(
        self,
        *,
        current_name: str,
        aws_conn_id: str = "braze_currents_s3",
        staging: str,
        state: str,
        dead_letters: str,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.current_name = current_name
        self.aws_conn_id = aws_conn_id
        self.staging = staging
        self.state = state
        self.dead_letters = dead_letters

    def store(self, location: str) -> Store:
        return open_store(location, _s3_client_factory(self.aws_conn_id))


class ListWindowFilesOperator(BaseOperator):
    """List the Currents objects of one hour partition for the selected event types.

    Returns the window and the objects (key, size, ETag, event type) for the prepare step.

    :param aws_conn_id: the AWS connection that reads the Currents bucket.
    :param bucket: the bucket Braze writes to.
    :param prefix: the folder set on the Current.
    :param event_types: the event types to list.
    :param window: the hour to process; empty for the run's logical date or the last full hour.
    :param lookback_hours: earlier hour partitions to list as well, for files that land late; the
        prepare step sends those its window's finished run has not accounted for.
    """

    template_fields: Sequence[str] = ("bucket", "prefix", "window")

    def __init__(
        self,
        *,
        aws_conn_id: str = "braze_currents_s3",
        bucket: str,
        prefix: str,
        event_types: Sequence[str],
        window: str = "{{ params.window }}",
        lookback_hours: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id
        self.bucket = bucket
        self.prefix = prefix
        self.event_types = list(event_types)
        self.window = window
        self.lookback_hours = lookback_hours

    def execute(self, context: Any) -> dict[str, Any]:
        from braze_currents.reader import list_window
        from braze_currents.window import WindowError, resolve_window

        try:
            hour = resolve_window(param=self.window or None, logical_date=context["dag_run"].logical_date)
        except WindowError as exc:
            raise AirflowFailException(f"param window: {exc}") from None
        client = _s3_client_factory(self.aws_conn_id)()
        listing = list_window(
            client, bucket=self.bucket, prefix=self.prefix, hour=hour, event_types=self.event_types
        )
        total = sum(obj.size for obj in listing.objects)
        self.log.info(
            "Window %s: %s files (%s bytes) in s3://%s/%s; %s keys ignored",
            hour.isoformat(),
            len(listing.objects),
            total,
            self.bucket,
            self.prefix,
            listing.ignored_keys,
        )
        if listing.unknown_event_types:
            self.log.warning("Unknown event_type= folders: %s", sorted(listing.unknown_event_types))
        if listing.unknown_layouts:
            self.log.warning("%s keys have folder levels this version does not know", listing.unknown_layouts)
        earlier = []
        for back in range(1, self.lookback_hours + 1):
            past = hour - timedelta(hours=back)
            found = list_window(
                client, bucket=self.bucket, prefix=self.prefix, hour=past, event_types=self.event_types
            )
            earlier.extend({**dataclasses.asdict(obj), "window": past.isoformat()} for obj in found.objects)
        return {
            "window": hour.isoformat(),
            "bucket": self.bucket,
            "objects": [dataclasses.asdict(obj) for obj in listing.objects],
            "earlier_objects": earlier,
            "ignored_keys": listing.ignored_keys,
            "unknown_event_types": listing.unknown_event_types,
            "unknown_layouts": listing.unknown_layouts,
        }


class PrepareChunksOperator(_CurrentsOperator):
    """Decode, filter and map a window's files into staged chunks of Segment batch bodies.

    Event data goes to the staging location; XCom holds only references and counts: the return value
    is the list of chunks (what the upload is mapped over) and the XCom key ``prepared`` holds the
    window, its counts and the source files for the summary.

    :param listing: the output of :class:`ListWindowFilesOperator`.
    :param event_types: the event types to send.
    :param mapping_file: the event mapping file.
    :param mapping_overrides: the Current's overrides on top of it (checked by the config).
    :param filters: the Current's event filters (checked by the config).
    :param anonymous_users: send events without an external user id as anonymous events.
    :param message_id_prefix: text before each Currents id in the messageId.
    :param integrations: the ``integrations`` object of every batch.
    :param chunk_events: about how many events one chunk holds.
    :param workers: processes that read the files (decode, filter, map); 1 reads them in the task.
    """

    template_fields: Sequence[str] = ("listing",)

    def __init__(
        self,
        *,
        listing: Any,
        event_types: Sequence[str],
        mapping_file: str,
        mapping_overrides: dict[str, Any] | None = None,
        filters: dict[str, Any] | None = None,
        anonymous_users: bool = False,
        message_id_prefix: str = "",
        integrations: dict[str, Any] | None = None,
        chunk_events: int = 50_000,
        workers: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.listing = listing
        self.workers = workers
        self.event_types = list(event_types)
        self.mapping_file = mapping_file
        self.mapping_overrides = mapping_overrides or {}
        self.filters = filters or {}
        self.anonymous_users = anonymous_users
        self.message_id_prefix = message_id_prefix
        self.integrations = {"Braze": False} if integrations is None else integrations
        self.chunk_events = chunk_events

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from braze_currents.deadletters import to_ndjson
        from braze_currents.filters import FilterError, check_filters
        from braze_currents.mapping import MappingError, apply_overrides, load_mapping
        from braze_currents.prepare import PrepareSettings, prepare_window
        from braze_currents.reader import ListedObject
        from braze_currents.report import done_files, open_dead_letters
        from braze_currents.upload import sent_ids

        try:
            mapping = apply_overrides(load_mapping(self.mapping_file), self.mapping_overrides)
            event_filters = check_filters(self.filters, f"Current {self.current_name!r}.filters")
        except (MappingError, FilterError) as exc:
            raise AirflowFailException(str(exc)) from None
        window = self.listing["window"]
        window_dir = window_folder(self.current_name, window)
        folder = window_dir
        objects = [ListedObject(**obj) for obj in self.listing["objects"]]
        bucket = self.listing["bucket"]
        client = _s3_client_factory(self.aws_conn_id)()

        def fetch(key: str) -> Any:
            from botocore.exceptions import ClientError

            from braze_currents.reader import DecodeError

            try:
                # The body streams to local disk in pieces (prepare_window reads it): a 100,000-event
                # object is some 45 MB this process need not hold.
                return client.get_object(Bucket=bucket, Key=key)["Body"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    # Gone since it was listed: nothing left to send; recorded, not retried forever.
                    raise DecodeError(
                        f"s3://{bucket}/{key} no longer exists (deleted after listing)"
                    ) from None
                raise

        state = self.store(self.state)
        params = context["params"]
        force = bool(params.get("force", False))
        retry = bool(params.get("retry_dead_letters", False))
        dry_run = bool(params.get("dry_run", False))
        safe_run = context["run_id"].replace(":", "-").replace("+", "-")
        late: dict[str, list[Any]] = {}  # folder of an earlier window -> its late files
        if dry_run:
            # A dry run stages the exact request bodies where the user can read them, and sends nothing.
            folder = f"{folder}/dry-run-{safe_run}"
        if force:
            # A forced run re-sends on purpose: its chunks and ledger entries get a folder of their own.
            folder = folder if dry_run else f"{folder}/force-{safe_run}"
            already_sent: set[str] = set()
            skipped = []
        else:
            retry_keys = set()
            if retry:
                retry_keys = {
                    letter.key for letter in open_dead_letters(self.store(self.dead_letters), window_dir)
                }
                self.log.info(
                    "Window %s: reading again the %s files with dead letters", window, len(retry_keys)
                )
            done = {(entry["key"], entry.get("etag")) for entry in done_files(state, window_dir)}
            skipped = [obj for obj in objects if (obj.key, obj.etag) in done and obj.key not in retry_keys]
            objects = [obj for obj in objects if (obj.key, obj.etag) not in done or obj.key in retry_keys]
            already_sent = sent_ids(state, window_dir)
            late = self._late_files(state, objects, retry_keys, context["run_id"], claim=not dry_run)
            self.log.info(
                "Window %s: %s files already done, %s late files from earlier hours, %s events already "
                "acknowledged; sending the rest",
                window,
                len(skipped),
                sum(len(found) for found in late.values()),
                len(already_sent),
            )
        staging = self.store(self.staging)
        # The window's own files, then each earlier window's late files. Late files are staged and
        # acknowledged under their own window's folder, so every later run of that window (a rerun, a
        # dead-letter retry, another late pass) sees what was already delivered from them.
        groups = [(folder, objects, already_sent, None)]
        for origin, found in sorted(late.items()):
            late_folder = (
                f"{folder}/late-{origin.rsplit('=', 1)[-1]}" if dry_run else f"{origin}/late-{safe_run}"
            )
            groups.append((late_folder, found, sent_ids(state, origin), origin))
        results = []
        for group_folder, group_objects, group_sent, origin in groups:
            settings = PrepareSettings(
                filters=event_filters,
                anonymous=self.anonymous_users,
                event_types=frozenset(self.event_types),
                message_id_prefix=self.message_id_prefix,
                integrations=self.integrations,
                chunk_events=self._chunk_events(group_objects),
            )
            try:
                result = prepare_window(
                    group_objects,
                    fetch,
                    mapping=mapping,
                    settings=settings,
                    staging=staging,
                    folder=group_folder,
                    seen_ids=group_sent,
                    workers=self.workers,
                )
            except FilterError as exc:  # a query that does not fit the data: retrying will not help
                raise AirflowFailException(f"Current {self.current_name!r}: {exc}") from None
            if origin is not None:
                for source in result.source_files:
                    source.update(late_from=origin.rsplit("date=", 1)[-1], origin_folder=origin)
            results.append(result)
        letters = [letter for result in results for letter in result.dead_letters]
        # Dead letters stay in the window's own folder, forced run or not: the summary reads them there.
        letters_folder = folder if dry_run else window_dir
        self.store(self.dead_letters).put(f"{letters_folder}/prepare-dead-letters.ndjson", to_ndjson(letters))
        chunks = [
            {**dataclasses.asdict(chunk), "label": chunk.label()}
            for result in results
            for chunk in result.chunks
        ]
        dropped: dict[str, int] = {}
        for result in results:
            for reason, count in result.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + count
        counts = {
            "files": sum(result.files for result in results),
            "files_failed": sum(result.files_failed for result in results),
            "files_already_done": len(skipped),
            "files_listed_twice": sum(result.files_listed_twice for result in results),
            "late_files": sum(len(found) for found in late.values()),
            "events_read": sum(result.events_read for result in results),
            "dropped": dropped,
            "dead_lettered_prepare": sum(result.dead_lettered for result in results),
            "staged": sum(result.staged_events for result in results),
            "chunks": len(chunks),
            "batches": sum(chunk["batches"] for chunk in chunks),
        }
        self.log.info(
            "Window %s: %s files, %s events read, %s staged in %s chunks (%s batches), dropped %s, "
            "%s dead letters",
            window,
            counts["files"],
            counts["events_read"],
            counts["staged"],
            counts["chunks"],
            counts["batches"],
            counts["dropped"],
            len(letters),
        )
        prepared = {
            "window": window,
            "run_id": context["run_id"],
            "dry_run": dry_run,
            "folder": folder,
            "late_folders": [group[0] for group in groups[1:]],
            "chunks": chunks,
            "counts": counts,
            "source_files": [source for result in results for source in result.source_files],
        }
        context["ti"].xcom_push(key="prepared", value=prepared)
        return chunks

    def _late_files(
        self, state: Store, current: list[Any], retry_keys: set[str], run_id: str, *, claim: bool = True
    ) -> dict[str, list[Any]]:
        """Return, by window folder, files of earlier hours that their window's run has not accounted for.

        A window whose run has not finished yet is left alone: its own run (or rerun) sends its files.
        Each late file is claimed in the ledger first, so two runs working at once never both send it.
        """
        from braze_currents.reader import ListedObject
        from braze_currents.report import claim_late_file, done_files, window_finished

        by_window: dict[str, list[dict[str, Any]]] = {}
        for obj in self.listing.get("earlier_objects", []):
            by_window.setdefault(obj["window"], []).append(obj)
        taken = {obj.key for obj in current}
        late: dict[str, list[Any]] = {}
        for past, candidates in sorted(by_window.items()):
            origin = window_folder(self.current_name, past)
            if not window_finished(state, origin):
                continue
            done = {(entry["key"], entry.get("etag")) for entry in done_files(state, origin)}
            for obj in candidates:
                key = obj["key"]
                if key in taken or ((key, obj["etag"]) in done and key not in retry_keys):
                    continue
                taken.add(key)
                if claim and not claim_late_file(state, origin, key, run_id):
                    self.log.info("Late file %s is claimed by another run; leaving it to that run", key)
                    continue
                late.setdefault(origin, []).append(
                    ListedObject(**{k: v for k, v in obj.items() if k != "window"})
                )
        return late

    def _chunk_events(self, objects: list[Any]) -> int:
        """Grow the chunk size when a huge window would otherwise fan out past a few hundred tasks."""
        estimated_events = sum(obj.size for obj in objects) // 150
        return max(self.chunk_events, -(-estimated_events // 500))


class UploadChunkOperator(_CurrentsOperator):
    """Upload one staged chunk to Segment, resuming after the batches the ledger holds.

    A refused write key (401/403) fails the task at once, without retries; other failures are left to
    Airflow's retries, and a retry sends only what is not acknowledged yet.

    :param chunk: one entry of the prepare step's ``chunks`` list.
    :param segment_conn_id: the Segment connection.
    :param region: ``us`` or ``eu`` when the connection does not say.
    :param concurrency: requests in flight at once.
    :param requests_per_second: the Current's request cap, shared by its upload tasks in this process.
    :param events_per_second: the Current's event cap, shared the same way.
    """

    template_fields: Sequence[str] = ("chunk",)

    def __init__(
        self,
        *,
        chunk: dict[str, Any],
        segment_conn_id: str = "segment_default",
        region: str = "us",
        concurrency: int = 4,
        requests_per_second: float | None = None,
        events_per_second: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.chunk = chunk
        self.segment_conn_id = segment_conn_id
        self.region = region
        self.concurrency = concurrency
        self.requests_per_second = requests_per_second
        self.events_per_second = events_per_second

    @cached_property
    def hook(self) -> Any:
        from braze_currents_airflow.hooks import SegmentHook

        return SegmentHook(segment_conn_id=self.segment_conn_id, region=self.region)

    def execute(self, context: Any) -> dict[str, Any]:
        from braze_currents.segment_client import SegmentAuthError, SegmentError
        from braze_currents.throttle import shared_limiter
        from braze_currents.upload import upload_chunk

        context["chunk_label"] = self.chunk.get("label", self.chunk["chunk_id"])
        if (context.get("params") or {}).get("dry_run", False):
            self.log.info(
                "Dry run: chunk %s holds %s events in %s batches, staged as %s/%s; nothing sent",
                self.chunk["chunk_id"],
                self.chunk["events"],
                self.chunk["batches"],
                self.store(self.staging).uri,
                self.chunk["name"],
            )
            return {"chunk_id": self.chunk["chunk_id"], "sent": 0, "dead_letters": 0, "dry_run": True}
        try:
            client = self.hook.get_client(pool_size=self.concurrency)
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from None
        try:
            result = upload_chunk(
                client,
                staging=self.store(self.staging),
                state=self.store(self.state),
                chunk_name=self.chunk["name"],
                concurrency=self.concurrency,
                limiter=shared_limiter(
                    self.current_name,
                    requests_per_second=self.requests_per_second,
                    events_per_second=self.events_per_second,
                ),
            )
        except SegmentAuthError as exc:
            raise AirflowFailException(
                f"{exc}: check the write key in {self.hook.describe()} and its region; not retrying"
            ) from None
        except SegmentError as exc:
            self.log.error("Chunk %s failed: %s", self.chunk["chunk_id"], exc)
            raise
        finally:
            client.close()
        self.log.info(
            "Chunk %s: %s batches (%s already acknowledged), %s events sent, %s dead letters, %s requests",
            self.chunk["chunk_id"],
            result.batches,
            result.skipped_batches,
            result.sent,
            len(result.dead_letters),
            result.requests,
        )
        return {
            "chunk_id": self.chunk["chunk_id"],
            "sent": result.sent,
            "dead_letters": len(result.dead_letters),
        }


class SummariseWindowOperator(_CurrentsOperator):
    """Account for every event of a window, write its report and dead letters, tidy staging.

    Checks that events read = sent + dropped (by reason) + dead-lettered; a window that does not
    balance fails. A window with dead letters fails too unless ``on_dead_letters`` is ``warn``.

    :param prepared: the output of :class:`PrepareChunksOperator`.
    :param on_dead_letters: ``fail`` (the default: losses are visible in the UI) or ``warn``.
    :param keep_staged: keep staged chunks after the window is acknowledged.
    :param staged_retention_hours: hours staged chunks are kept once acknowledged (0: delete at once).
    """

    template_fields: Sequence[str] = ("prepared", "listing")

    def __init__(
        self,
        *,
        prepared: Any,
        listing: Any = None,
        on_dead_letters: str = "fail",
        keep_staged: bool = False,
        staged_retention_hours: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.staged_retention_hours = staged_retention_hours
        if on_dead_letters not in ("fail", "warn"):
            raise ValueError(f"on_dead_letters must be 'fail' or 'warn', got {on_dead_letters!r}")
        self.prepared = prepared
        self.listing = listing
        self.on_dead_letters = on_dead_letters
        self.keep_staged = keep_staged

    def execute(self, context: Any) -> dict[str, Any]:
        from braze_currents.report import summarise_window

        staging, state, letters = (
            self.store(self.staging),
            self.store(self.state),
            self.store(self.dead_letters),
        )
        folder = window_folder(self.current_name, self.prepared["window"])
        if self.prepared.get("dry_run"):
            folder = self.prepared["folder"]
        report = summarise_window(
            self.prepared,
            self.listing or {},
            staging=staging,
            state=state,
            dead_letters=letters,
            folder=folder,
            keep_staged=self.keep_staged,
            retention_hours=self.staged_retention_hours,
            dry_run=bool(self.prepared.get("dry_run")),
        )
        counts = report["counts"]
        if report.get("dry_run"):
            self.log.info(
                "Dry run of window %s: would send %s events in %s batches (files=%s read=%s dropped=%s "
                "dead_lettered=%s); request bodies: %s; report: %s/%s/report.json",
                report["window"],
                report["would_send"],
                counts["batches"],
                counts["files"],
                counts["events_read"],
                counts["dropped"],
                counts["dead_lettered"],
                f"{staging.uri}/{folder}/",
                letters.uri,
                folder,
            )
            return report
        self.log.info(
            "Window %s: files=%s read=%s sent=%s dropped=%s dead_lettered=%s batches=%s",
            report["window"],
            counts["files"],
            counts["events_read"],
            counts["sent"],
            counts["dropped"],
            counts["dead_lettered"],
            counts["batches"],
        )
        self._show_counts(context, report)
        if not report["balanced"]:
            raise AirflowFailException(f"window {report['window']} does not balance: {report['balance']}")
        if report["dead_letters"] and self.on_dead_letters == "fail":
            raise AirflowFailException(
                f"window {report['window']} has {report['dead_letters']} dead letters; see "
                f"{letters.uri}/{folder}/dead_letters.ndjson; on_dead_letters: warn lets such windows pass"
            )
        if report["dead_letters"]:
            self.log.warning("Window %s has %s dead letters", report["window"], report["dead_letters"])
        return report

    def _show_counts(self, context: Any, report: dict[str, Any]) -> None:
        """Put the window's headline counts where the Airflow UI shows them without opening logs.

        They go to the XCom ``counts`` (the task's XCom tab, failed windows too) and to the event of
        each outlet asset (the run's asset events and the Assets view), which Airflow records only
        when the task succeeds.
        """
        from braze_currents_airflow.ui.windows import headline_counts

        counts = {"window": report["window"], **headline_counts(report)}
        context["ti"].xcom_push(key="counts", value=counts)
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = counts
