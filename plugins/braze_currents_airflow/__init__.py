"""Airflow shell around the braze_currents core: hooks, operators and the DAG factory."""

from __future__ import annotations
