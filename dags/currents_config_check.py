"""Report the exports config's problems as an Airflow import error; this file defines no DAG.

``currents_to_segment.py`` builds a DAG for every Current that passes its checks and skips the
others. Importing this file raises one ``ConfigError`` that lists each skipped Current with the key
at fault and the fix, so the UI's import errors show it while the good Currents keep running.
"""

from __future__ import annotations

from braze_currents.config import ConfigError, check_config

_check = check_config()
if _check.errors:
    raise ConfigError(_check.summary())
