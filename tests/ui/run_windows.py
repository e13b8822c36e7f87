"""Run windows through the real DAGs with ``dag.test``, in a process configured by the caller's env.

Usage: ``python tests/ui/run_windows.py DAG_ID=YYYY-MM-DDTHH ...``; prints one line ``WINDOW {json}`` per run
(dag id, window, run id, state). The tests run it as a subprocess so that these runs land in the
PostgreSQL database of the api-server under test, not in the SQLite one of the pytest process.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime


def main(argv: list[str]) -> int:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        print(json.dumps({"import_errors": bag.import_errors}), file=sys.stderr)
        return 2
    for arg in argv:
        dag_id, _, hour = arg.partition("=")
        window = datetime.fromisoformat(hour).replace(tzinfo=UTC)
        run = bag.get_dag(dag_id).test(logical_date=window)
        record = {"dag_id": dag_id, "window": window.isoformat(), "run_id": run.run_id, "state": run.state}
        print("WINDOW " + json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
