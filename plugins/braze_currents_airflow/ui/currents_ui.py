"""Airflow plugin: the "Currents to Segment" page, served by the api-server and linked in the nav.

Airflow imports this file from the plugins folder; the page itself lives in the modules beside it.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from braze_currents_airflow.ui.app import URL_PREFIX, airflow_base_path, create_app


class CurrentsToSegmentPlugin(AirflowPlugin):
    """Add the page's app to the api-server and an entry for it to the UI's Browse menu."""

    name = "braze_currents_to_segment"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Currents to Segment"}]
    external_views = [
        {
            "name": "Currents to Segment",
            "href": f"{airflow_base_path()}{URL_PREFIX}/",
            "url_route": "currents-to-segment",
            "destination": "nav",
            "category": "browse",
        }
    ]
