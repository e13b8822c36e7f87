"""The FastAPI app the Airflow api-server mounts for the page, behind Airflow's own login.

Plugin apps are not covered by Airflow's authentication on their own: every route here depends on
Airflow's ``get_user`` (the JWT from the UI's ``_token`` cookie or an ``Authorization: Bearer``
header), so a request without a valid token gets 401 or 403, and the page lists only the Currents
whose DAGs the signed-in user may read.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_authenticated
from fastapi import Depends, FastAPI, Query
from fastapi.responses import HTMLResponse, JSONResponse
from sqlalchemy import select

from braze_currents.config import ConfigError, CurrentConfig, load_config
from braze_currents.storage import Store, open_store
from braze_currents_airflow.ui.page import render_page
from braze_currents_airflow.ui.windows import CurrentView, RunRecord, recent_windows

log = logging.getLogger(__name__)

URL_PREFIX = "/currents-to-segment"
# The page draws with inline CSS and SVG only: no script runs and nothing is fetched.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"


def airflow_base_path() -> str:
    """Return the path the Airflow UI is served under ('' at the root), from ``[api] base_url``."""
    from airflow.configuration import conf

    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


def _dead_letter_store(current: CurrentConfig) -> Store:
    def s3_client() -> Any:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        return S3Hook(aws_conn_id=current.source_conn_id).get_conn()

    return open_store(current.dead_letters, s3_client)


def _runs(session: Any, dag_id: str, limit: int) -> list[RunRecord]:
    from airflow.models.dagrun import DagRun

    query = (
        select(DagRun.run_id, DagRun.state, DagRun.logical_date, DagRun.run_after, DagRun.conf)
        .where(DagRun.dag_id == dag_id)
        .order_by(DagRun.run_after.desc())
        .limit(limit)
    )
    return [
        RunRecord(
            run_id=row.run_id,
            state=str(row.state) if row.state else None,
            logical_date=row.logical_date,
            run_after=row.run_after,
            conf=row.conf if isinstance(row.conf, dict) else None,
        )
        for row in session.execute(query)
    ]


def gather(session: Any, user: Any, *, limit: int, scan_hours: int) -> tuple[list[CurrentView], str | None]:
    """Return the views of the Currents the user may read, and a config problem if there is one."""
    try:
        currents = load_config()
    except ConfigError as exc:
        return [], str(exc)
    readable = get_auth_manager().filter_authorized_dag_ids(
        dag_ids={current.dag_id for current in currents}, user=user, method="GET"
    )
    views = []
    for current in currents:
        if current.dag_id not in readable:
            continue
        try:
            windows = recent_windows(
                current.name,
                _dead_letter_store(current),
                _runs(session, current.dag_id, limit * 2),
                scan_hours=scan_hours,
                limit=limit,
            )
            problem = None
        except Exception as exc:  # one unreachable location must not hide the other Currents
            log.warning("Cannot read the reports of Current %s: %s", current.name, exc)
            windows, problem = [], f"cannot read the reports in {current.dead_letters}: {type(exc).__name__}"
        views.append(
            CurrentView(
                name=current.name,
                dag_id=current.dag_id,
                dead_letters=current.dead_letters,
                windows=windows,
                problem=problem,
            )
        )
    return views, None


def create_app() -> FastAPI:
    """Return the page's app; every route requires a signed-in Airflow user."""
    app = FastAPI(
        title="Currents to Segment",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(requires_authenticated())],
    )
    limit_query = Query(24, ge=1, le=500, description="windows per Current")
    scan_query = Query(24, ge=0, le=24 * 31, description="past hours to look for reports in")

    @app.get("/", response_class=HTMLResponse)
    def page(
        session: SessionDep, user: GetUserDep, limit: int = limit_query, scan_hours: int = scan_query
    ) -> HTMLResponse:
        views, problem = gather(session, user, limit=limit, scan_hours=scan_hours)
        html = render_page(
            views, airflow_base=airflow_base_path(), generated_at=datetime.now(UTC), problem=problem
        )
        return HTMLResponse(html, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})

    @app.get("/api/windows")
    def windows(
        session: SessionDep, user: GetUserDep, limit: int = limit_query, scan_hours: int = scan_query
    ) -> JSONResponse:
        views, problem = gather(session, user, limit=limit, scan_hours=scan_hours)
        body = {
            "problem": problem,
            "currents": [
                {
                    "name": view.name,
                    "dag_id": view.dag_id,
                    "problem": view.problem,
                    "windows": [
                        {
                            "window": window.window.isoformat(),
                            "counts": window.counts,
                            "balanced": window.balanced,
                            "run_id": window.run.run_id if window.run else None,
                            "state": window.run.state if window.run else None,
                            "runs": window.runs,
                        }
                        for window in view.windows
                    ],
                }
                for view in views
            ],
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return app
