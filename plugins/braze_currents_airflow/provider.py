"""Provider metadata: registers the ``segment`` connection type and its form with Airflow.

Airflow finds this through the ``apache_airflow_provider`` entry point in ``pyproject.toml`` once the
project is installed (``pip install -e .``); the ``plugins/`` folder alone cannot add connection types.
The form is described here, not by hook methods, so the API server builds it without importing the hook.
"""

from __future__ import annotations

from typing import Any

PACKAGE_NAME = "braze-currents-segment"


def get_provider_info() -> dict[str, Any]:
    """Return the provider info Airflow's ProvidersManager reads: the Segment connection type and form."""
    return {
        "package-name": PACKAGE_NAME,
        "name": "Braze Currents to Segment",
        "description": "Export Braze Currents event files from S3 to Segment's batch API.",
        "connection-types": [
            {
                "connection-type": "segment",
                "hook-class-name": "braze_currents_airflow.hooks.SegmentHook",
                "hook-name": "Segment",
                "conn-fields": {
                    "region": {
                        "label": "Region",
                        "description": (
                            "us or eu, the region of the Segment workspace; empty: segment.region of "
                            "the exports config. A host overrides it."
                        ),
                        "schema": {"type": ["string", "null"], "pattern": "^(us|eu)$"},
                    },
                },
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "port"],
                    "relabeling": {"password": "Write key", "host": "Host (optional)"},
                    "placeholders": {
                        "password": "the write key of the Segment source",
                        "host": "empty for Segment itself; a local receiver such as http://127.0.0.1:8765",
                    },
                },
            }
        ],
    }
