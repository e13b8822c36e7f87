"""Config checks: each problem names the Current, the key and the fix; good entries survive bad ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from braze_currents.config import _KEYS, ConfigError, check_config, load_config

ROOT = Path(__file__).resolve().parents[2]
GOOD = {
    "name": "alpha",
    "start_date": "2026-12-01T00:00:00Z",
    "source": {"bucket": "alpha-bucket"},
}


def write(tmp_path: Path, *entries: dict) -> Path:
    path = tmp_path / "exports.yaml"
    path.write_text(yaml.safe_dump({"currents": list(entries)}))
    return path


def with_changes(changes: dict, drop: tuple[str, ...] = ()) -> dict:
    entry = {**GOOD, "name": "beta", **changes}
    for key in drop:
        entry.pop(key)
    return entry


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            with_changes({"evnt_types": "all"}),
            ["Current 'beta'", "unknown key 'evnt_types'", "did you mean 'event_types'"],
        ),
        (
            with_changes({"source": {"bukcet": "b-bucket"}}),
            ["Current 'beta'.source", "'bukcet'", "did you mean 'bucket'"],
        ),
        (
            with_changes({"event_types": ["users.messages.email.Opn"]}),
            [
                "Current 'beta'.event_types",
                "'users.messages.email.Opn'",
                "did you mean users.messages.email.Open",
            ],
        ),
        (
            with_changes({"segment": {"region": "europe"}}),
            ["Current 'beta'.segment.region", "'us' or 'eu'", "'europe'"],
        ),
        (
            with_changes({"source": {"prefix": "currents"}}),
            ["Current 'beta'.source.bucket: missing", "source: {bucket: my-braze-currents}"],
        ),
        (
            with_changes({"source": {"bucket": "s3://b-bucket/currents"}}),
            ["Current 'beta'.source.bucket", "without s3:// or a folder"],
        ),
        (with_changes({}, drop=("source",)), ["Current 'beta'.source: missing", "bucket:"]),
        (
            with_changes({}, drop=("start_date",)),
            ["Current 'beta'.start_date: missing", "2026-12-01T00:00:00Z"],
        ),
        (with_changes({"chunk_events": 10}), ["Current 'beta'.chunk_events", "from 2500 to 1000000"]),
        (with_changes({"catchup": "no"}), ["Current 'beta'.catchup", "true or false", "'no'"]),
        (with_changes({"name": "Beta Export"}), ["currents[1].name", "lower-case letters", "'Beta Export'"]),
    ],
)
def test_a_bad_entry_is_reported_with_its_key_and_fix_and_the_good_one_survives(tmp_path, entry, expected):
    check = check_config(write(tmp_path, GOOD, entry))

    assert [current.name for current in check.currents] == ["alpha"]
    (error,) = check.errors
    for fragment in expected:
        assert fragment in error


def test_both_spellings_of_the_abort_types_are_accepted(tmp_path):
    entry = with_changes(
        {"event_types": ["users_campaigns_abort", "users.canvas.Abort", "USERS_CANVAS_ABORT"]}
    )

    (current,) = load_config(write(tmp_path, entry))

    assert current.event_types == ("users.campaigns.Abort", "users.canvas.Abort")


def test_a_repeated_name_is_an_error_and_the_first_entry_keeps_its_dag(tmp_path):
    first = {**GOOD, "source": {"bucket": "first-bucket"}}
    second = {**GOOD, "source": {"bucket": "second-bucket"}}

    check = check_config(write(tmp_path, first, second))

    assert [current.bucket for current in check.currents] == ["first-bucket"]
    (error,) = check.errors
    assert "Current 'alpha' (currents[1]).name: already used by currents[0]" in error
    assert "give each Current its own name" in error


def test_load_config_raises_one_error_listing_every_bad_current(tmp_path):
    path = write(
        tmp_path,
        GOOD,
        with_changes({"segment": {"region": "asia"}}),
        with_changes({"name": "gamma", "source": {}}),
    )

    with pytest.raises(ConfigError) as raised:
        load_config(path)

    message = str(raised.value)
    assert message.startswith(f"{path}: 2 problems in the exports config")
    assert "Current 'beta'.segment.region" in message
    assert "Current 'gamma'.source.bucket: missing" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("currents: [\n  - name: a\n", "not valid YAML"),
        ("exports:\n  - name: a\n", "expected a top-level 'currents:' list"),
    ],
)
def test_a_broken_file_gives_one_error_and_no_currents(tmp_path, text, expected):
    path = tmp_path / "exports.yaml"
    path.write_text(text)

    check = check_config(path)

    assert check.currents == []
    (error,) = check.errors
    assert expected in error


def test_a_missing_file_names_the_file(tmp_path):
    check = check_config(tmp_path / "nowhere.yaml")

    assert "nowhere.yaml" in check.summary()
    assert "cannot read the exports config" in check.summary()


def test_the_shipped_config_is_valid():
    (current,) = load_config(ROOT / "include" / "exports.yaml")

    assert current.name == "main"


def readme_configuration() -> str:
    text = (ROOT / "README.md").read_text("utf-8")
    start = text.index("\n## Configuration")
    return text[start : text.index("\n## ", start + 1)]


def test_the_readme_documents_every_config_key():
    section = readme_configuration()
    documented = set(re.findall(r"^\| `([a-z_.]+)`", section, flags=re.MULTILINE))
    top_level = {key.split(".")[0] for key in documented}

    assert set(_KEYS) <= top_level, sorted(set(_KEYS) - top_level)
    assert top_level <= set(_KEYS), sorted(top_level - set(_KEYS))
    assert {
        "source.conn_id",
        "source.bucket",
        "source.prefix",
        "segment.conn_id",
        "segment.region",
    } <= documented


def test_the_readme_example_config_uses_every_key_and_loads(tmp_path):
    section = readme_configuration()
    example = re.search(r"```yaml\n(currents:.*?)```", section, flags=re.DOTALL)
    assert example, "the Configuration section needs a ```yaml example starting with currents:"
    path = tmp_path / "exports.yaml"
    path.write_text(example.group(1))

    currents = load_config(path)

    used = set().union(*(set(entry) for entry in yaml.safe_load(example.group(1))["currents"]))
    assert used == set(_KEYS), sorted(set(_KEYS) ^ used)
    assert {current.region for current in currents} == {"us", "eu"}


def test_the_first_readme_entry_spells_out_the_defaults(tmp_path):
    section = readme_configuration()
    example = yaml.safe_load(re.search(r"```yaml\n(currents:.*?)```", section, flags=re.DOTALL).group(1))
    full = example["currents"][0]
    minimal = {key: full[key] for key in ("name", "start_date")} | {
        "source": {"bucket": full["source"]["bucket"]}
    }

    assert load_config(write(tmp_path, full)) == load_config(write(tmp_path, minimal))


def test_the_readme_shows_the_error_a_typo_gives(tmp_path):
    section = readme_configuration()
    shown = re.search(r"```text\n(.*?)```", section, flags=re.DOTALL)
    assert shown, "the Configuration section needs a ```text block with a real error"
    config = re.search(r"```yaml\n(# a typo.*?)```", section, flags=re.DOTALL)
    assert config, "the Configuration section needs the ```yaml config that gives that error"
    path = tmp_path / "exports.yaml"
    path.write_text(config.group(1))

    message = check_config(path).summary()

    expected = shown.group(1).strip().splitlines()[1:]
    assert message.splitlines()[1:] == expected
