"""The write key and personal data stay out of logs, XCom, rendered fields, reports and the ledger."""

from __future__ import annotations

import base64
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from braze_currents.localstack import LocalServices
from tests.helpers import decode_prefix, write_config, write_hostile_window

HOUR = datetime(2026, 11, 30, 11, tzinfo=UTC)


def _database_text(path: Path) -> str:
    """Every value of every table of Airflow's SQLite database, as text."""
    out = []
    with sqlite3.connect(path) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        out.append(value.decode("utf-8", "replace"))
                    elif value is not None:
                        out.append(str(value))
    return "\n".join(out)


def _files_text(root: Path, skip: set[Path]) -> dict[Path, str]:
    return {
        path: path.read_bytes().decode("utf-8", "replace")
        for path in root.rglob("*")
        if path.is_file() and path not in skip
    }


def test_a_window_leaves_no_write_key_and_no_personal_data_behind(
    airflow_db, tmp_path, monkeypatch, capfd, caplog
):
    caplog.set_level("DEBUG")
    with LocalServices(tmp_path / "services") as services:
        for name, value in services.connection_env().items():
            monkeypatch.setenv(name, value)
        client = services.s3_client()
        write_hostile_window(client, services.bucket, HOUR, events_per_type=300)
        personal: set[str] = set()
        for obj in client.list_objects_v2(Bucket=services.bucket)["Contents"]:
            body = client.get_object(Bucket=services.bucket, Key=obj["Key"])["Body"].read()
            for record in decode_prefix(body):
                for field in ("external_user_id", "email_address", "phone_number"):
                    if isinstance(record.get(field), str) and len(record[field].strip()) > 4:
                        personal.add(record[field].strip())
        assert len(personal) > 100
        config = write_config(
            tmp_path / "exports.yaml",
            bucket=services.bucket,
            workdir=tmp_path,
            on_dead_letters="warn",
            keep_staged=True,  # so the staged request bodies are searched too
        )
        monkeypatch.setenv("BRAZE_CURRENTS_CONFIG", str(config))
        from braze_currents.config import load_config
        from braze_currents_airflow.dag_factory import build_dag

        (current,) = load_config(config)
        assert build_dag(current).test(logical_date=HOUR).state == "success"
        assert len(services.receiver.accepted_ids()) > 1000
        key = services.write_key
        accepted_file = services.accepted_path

    forms = {key, base64.b64encode(f"{key}:".encode()).decode(), base64.b64encode(key.encode()).decode()}
    captured = capfd.readouterr()
    home = Path(os.environ["AIRFLOW_HOME"])
    places = {
        "dags test output": captured.out + captured.err + caplog.text,
        "Airflow database (XCom, rendered fields, task instances)": _database_text(home / "airflow.db"),
        **{str(path): text for path, text in _files_text(home / "logs", set()).items()},
    }
    delivered = accepted_file.read_text()
    assert sum(value in delivered for value in personal) > 100  # the search does find what is there
    written = _files_text(tmp_path, {accepted_file, config})
    assert any("report.json" in str(path) for path in written)
    assert any(path.name.startswith("chunk-") for path in written)  # staged bodies, kept for this search
    for where, text in {**places, **{str(p): t for p, t in written.items()}}.items():
        for form in forms:
            assert form not in text, f"the write key appears in {where}"
    for where, text in places.items():  # logs, XCom and the database carry counts and ids, no people
        leaked = sorted(value for value in personal if value in text)
        assert not leaked, f"{len(leaked)} emails, phone numbers or external ids appear in {where}"
    ledger = {str(p): t for p, t in written.items() if "/state/" in str(p) or "dead_letters" in str(p)}
    for where, text in ledger.items():
        leaked = sorted(value for value in personal if value in text)
        assert not leaked, f"{len(leaked)} emails, phone numbers or external ids appear in {where}"
