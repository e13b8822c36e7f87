"""The "Currents to Segment" page of the Airflow UI: each Current's recent windows, counts and runs."""

from __future__ import annotations
