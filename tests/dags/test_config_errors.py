"""A bad Current takes no other DAG down, and its error shows among Airflow's import errors."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHECK_FILE = str(ROOT / "dags" / "currents_config_check.py")
CONFIG = """
currents:
  - name: alpha
    start_date: "2026-12-01T00:00:00Z"
    source: {bucket: alpha-bucket}
  - name: beta
    start_date: "2026-12-01T00:00:00Z"
    source: {bucket: beta-bucket}
    event_types: [users.messages.email.Opn]
  - name: gamma
    start_date: "2026-12-01T00:00:00Z"
    source: {prefix: currents}
  - name: delta
    start_date: "2026-12-01T00:00:00Z"
    source: {bucket: delta-bucket}
    segment: {region: europe}
  - name: alpha
    start_date: "2026-12-01T00:00:00Z"
    source: {bucket: other-bucket}
  - name: epsilon
    start_date: "2026-12-01T00:00:00Z"
    source: {bucket: epsilon-bucket}
    segmnt: {region: eu}
"""


def dagbag_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str):
    from airflow.dag_processing.dagbag import DagBag

    config = tmp_path / "exports.yaml"
    config.write_text(text)
    monkeypatch.setenv("BRAZE_CURRENTS_CONFIG", str(config))
    return DagBag(dag_folder=str(ROOT / "dags"))


def test_bad_currents_are_skipped_and_listed_in_one_import_error(tmp_path, monkeypatch):
    bag = dagbag_for(tmp_path, monkeypatch, CONFIG)

    assert set(bag.dag_ids) == {"currents_to_segment_alpha"}
    assert bag.dags["currents_to_segment_alpha"].get_task("list_files").bucket == "alpha-bucket"
    assert list(bag.import_errors) == [CHECK_FILE]
    error = bag.import_errors[CHECK_FILE]
    assert "5 problems in the exports config" in error
    assert "Current 'beta'.event_types: unknown Currents event type 'users.messages.email.Opn'" in error
    assert "did you mean users.messages.email.Open" in error
    assert "Current 'gamma'.source.bucket: missing" in error
    assert "Current 'delta'.segment.region: must be 'us' or 'eu'" in error
    assert "Current 'alpha' (currents[4]).name: already used by currents[0]" in error
    assert "Current 'epsilon': unknown key 'segmnt' (did you mean 'segment'?)" in error


def test_an_unreadable_config_is_an_import_error_and_builds_no_dag(tmp_path, monkeypatch):
    bag = dagbag_for(tmp_path, monkeypatch, "currents:\n  - name: [alpha\n")

    assert bag.dag_ids == []
    assert list(bag.import_errors) == [CHECK_FILE]
    assert "not valid YAML" in bag.import_errors[CHECK_FILE]


def test_the_check_file_is_parsed_in_safe_mode(tmp_path, monkeypatch):
    """Airflow skips files that mention neither 'airflow' nor 'dag'; the check file must not be one."""
    from airflow.utils.file import might_contain_dag

    assert might_contain_dag(CHECK_FILE, safe_mode=True)


def test_the_dag_processor_stores_the_error_where_the_ui_reads_it(tmp_path):
    """Parse the folder as Airflow does and read the import errors back from the metadata database."""
    import json
    import os
    import subprocess
    import sys

    config = tmp_path / "exports.yaml"
    config.write_text(CONFIG)
    home = tmp_path / "airflow"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "BRAZE_CURRENTS_CONFIG": str(config),
    }

    def airflow(*args: str, expect: int = 0) -> str:
        command = [sys.executable, "-m", "airflow", *args]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        assert done.returncode == expect, done.stderr[-2000:]
        return done.stdout

    def listed(*args: str, expect: int = 0) -> list[dict]:
        # Log lines (such as a graphviz warning) share stdout with the JSON list.
        out = airflow(*args, "-o", "json", expect=expect)
        return json.loads(next(line for line in out.splitlines() if line.startswith("[")))

    airflow("db", "migrate")
    airflow("dags", "reserialize")
    # list-import-errors exits 1 when there are import errors.
    errors = listed("dags", "list-import-errors", expect=1)
    dags = listed("dags", "list")

    assert [error["filepath"] for error in errors] == ["currents_config_check.py"]
    assert "Current 'gamma'.source.bucket: missing" in errors[0]["error"]
    assert [dag["dag_id"] for dag in dags] == ["currents_to_segment_alpha"]
