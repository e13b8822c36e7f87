"""Pure core of the Braze Currents to Segment export: no Airflow imports live in this package."""

from __future__ import annotations

__version__ = "0.1.0"
INTEGRATION_NAME = "braze-currents-segment"
