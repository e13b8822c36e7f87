"""One DAG per Braze Current in the exports config: hourly, from S3 to Segment.

The config file is ``include/exports.yaml`` or the file named by ``BRAZE_CURRENTS_CONFIG``.
Each DAG: list files -> prepare chunks -> upload chunks (mapped, retried) -> summarise.
A Current with a config error gets no DAG; ``currents_config_check.py`` reports it as an import
error, so the other Currents keep running.
"""

from __future__ import annotations

from braze_currents.config import check_config
from braze_currents_airflow.dag_factory import build_dag

for _current in check_config().currents:
    globals()[_current.dag_id] = build_dag(_current)
