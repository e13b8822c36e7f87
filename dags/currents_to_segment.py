"""One DAG per Braze Current in the exports config: hourly, from S3 to Segment.

The config file is ``include/exports.yaml`` or the file named by ``BRAZE_CURRENTS_CONFIG``.
Each DAG: list files -> prepare chunks -> upload chunks (mapped, retried) -> summarise.
"""

from __future__ import annotations

from braze_currents.config import load_config
from braze_currents_airflow.dag_factory import build_dag

for _current in load_config():
    globals()[_current.dag_id] = build_dag(_current)
