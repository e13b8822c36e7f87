"""polars decodes Currents files into the very records fastavro gives, and stops where fastavro stops.

fastavro is the reference: every case decodes the same bytes both ways and compares the records, the
batches and the error, including files cut short at every kind of place and damaged sync markers.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import textwrap
import zlib
from datetime import UTC, datetime
from typing import Any

import cramjam
import pytest

import braze_currents.blocks as blocks
from braze_currents.catalog import field_lists
from braze_currents.generator import avro_schema, encode_avro, generate_records
from braze_currents.reader import DecodeError, RecordBatches
from tests.helpers import ROOT

HOUR = datetime(2026, 12, 1, 4, tzinfo=UTC)
TYPES = ("users.messages.email.Open", "users.messages.sms.Delivery", "users.canvas.Entry")


def _both(data: bytes, batch_size: int = 700) -> tuple[Any, Any]:
    """Decode ``data`` with polars and with fastavro alone: (batch sizes, records, error) or the
    DecodeError's message, for each."""

    def run(use_polars: bool) -> Any:
        try:
            batches = RecordBatches(data, "k.avro", batch_size=batch_size, use_polars=use_polars)
        except DecodeError as exc:
            return str(exc)
        got = list(batches)
        return [len(batch) for batch in got], [r for batch in got for r in batch], batches.error, batches

    by_polars, by_fastavro = run(True), run(False)
    if isinstance(by_polars, tuple):
        assert by_fastavro[3].decoder == "fastavro"
        return by_polars[:3], by_fastavro[:3]
    return by_polars, by_fastavro


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    rng = random.Random(3)
    out = {}
    for event_type in TYPES:
        records = generate_records(event_type, 1800, hour=HOUR, rng=rng, null_external_ratio=0.2)
        out[event_type] = encode_avro(records, avro_schema(event_type), block_size=250)
    return out


def test_every_braze_sample_file_decodes_to_the_same_records(samples_dir):
    paths = sorted(samples_dir.glob("*.avro"))
    assert len(paths) > 50
    for path in paths:
        data = path.read_bytes()
        batches = RecordBatches(data, path.name)
        records = [record for batch in batches for record in batch]
        reference = [record for batch in RecordBatches(data, path.name, use_polars=False) for record in batch]
        if path.stem in field_lists():  # the types the export sends use only what polars reads alike
            assert batches.decoder == "polars", path.name
        assert records == reference, path.name
        assert [list(record) for record in records] == [list(record) for record in reference], "field order"


@pytest.mark.parametrize("codec", ["null", "deflate", "snappy"])
@pytest.mark.parametrize("block_size", [1, 7, 250, 5000])
def test_every_codec_and_block_size_gives_the_same_batches(codec, block_size):
    records = generate_records("users.messages.email.Open", 2100, hour=HOUR, rng=random.Random(block_size))
    data = encode_avro(records, avro_schema("users.messages.email.Open"), codec=codec, block_size=block_size)

    by_polars, by_fastavro = _both(data)

    assert by_polars == by_fastavro
    sizes, got, error = by_polars
    assert sizes == [700, 700, 700] and error is None
    assert [r["id"] for r in got] == [r["id"] for r in records]
    assert RecordBatches(data, "k").decoder == "polars"


def test_a_file_cut_anywhere_stops_where_fastavro_stops_with_its_error(files):
    data = files["users.messages.sms.Delivery"]
    cuts = sorted({*range(0, 400, 3), *random.Random(5).sample(range(len(data)), 150), len(data) - 1})
    stopped = 0
    for cut in cuts:
        by_polars, by_fastavro = _both(data[:cut])
        assert by_polars == by_fastavro, f"cut at byte {cut}"
        stopped += isinstance(by_polars, tuple) and by_polars[2] is not None
    assert stopped > 100, "most cuts land inside a block"


def test_a_wrong_sync_marker_stops_where_fastavro_stops(files):
    data = files["users.canvas.Entry"]
    _, sync = blocks.read_header(io.BytesIO(data))
    places = [index for index in range(len(data)) if data.startswith(sync, index)]
    assert len(places) > 5
    for place in places[1:4]:
        damaged = data[:place] + bytes(16) + data[place + 16 :]
        by_polars, by_fastavro = _both(damaged)
        assert by_polars == by_fastavro
        assert by_polars[2] is not None and 0 < len(by_polars[1]) < 1800


def test_bytes_after_the_last_block_are_read_as_fastavro_reads_them(files):
    data = files["users.messages.email.Open"]
    for tail in (b"\x00", b"\x02", b"\x02\x04ab", os.urandom(40)):
        by_polars, by_fastavro = _both(data + tail)
        assert by_polars == by_fastavro, tail


def test_empty_blocks_and_a_file_of_no_records_decode_alike():
    schema = avro_schema("users.canvas.Entry")
    by_polars, by_fastavro = _both(encode_avro([], schema))
    assert by_polars == by_fastavro == ([], [], None)


def test_a_run_polars_cannot_read_is_read_by_fastavro(files, monkeypatch):
    import polars
    from polars.exceptions import PanicException

    data = files["users.messages.email.Open"]
    reference = [record for batch in RecordBatches(data, "k", use_polars=False) for record in batch]
    calls = []

    def refuses_the_second_run(source: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise PanicException("index out of bounds")  # how polars breaks on some damaged bytes
        return real(source, **kwargs)

    real = polars.read_avro
    monkeypatch.setattr(polars, "read_avro", refuses_the_second_run)
    batches = RecordBatches(data, "k", batch_size=500)
    decoded = [record for batch in batches for record in batch]

    assert decoded == reference and batches.error is None
    assert batches._blocks is not None and batches._blocks.runs_by_fastavro == 1


def test_a_run_polars_reads_short_is_read_by_fastavro(files, monkeypatch):
    """The blocks declare how many records a run holds; a frame of another height is not trusted."""
    import polars

    data = files["users.messages.sms.Delivery"]
    reference = [record for batch in RecordBatches(data, "k", use_polars=False) for record in batch]
    real = polars.read_avro
    monkeypatch.setattr(polars, "read_avro", lambda source, **kwargs: real(source, **kwargs).head(-1))
    batches = RecordBatches(data, "k", batch_size=500)
    decoded = [record for batch in batches for record in batch]

    assert decoded == reference and batches.error is None
    assert batches._blocks is not None and batches._blocks.runs_by_fastavro == 4


def test_a_damaged_union_branch_is_the_one_place_the_decoders_part(files):
    """fastavro refuses a union branch number outside the union; polars reads the value on (README,
    Limitations). Both agree on every record before it."""
    records = generate_records("users.canvas.Entry", 3, hour=HOUR, rng=random.Random(9))
    records[1]["timezone"] = "Europe/Oslo"
    data = bytearray(encode_avro(records, avro_schema("users.canvas.Entry")))
    at = data.index(b"\x16Europe/Oslo") - 1  # the branch number before the string: 1 is "string"
    assert data[at] == 2  # zigzag 1
    data[at] = 6  # zigzag 3: no such branch

    (_, by_polars, polars_error), (_, by_fastavro, fastavro_error) = _both(bytes(data))

    assert fastavro_error is not None and "IndexError" in fastavro_error and len(by_fastavro) == 1
    assert polars_error is None and len(by_polars) == 3
    assert by_polars[:1] == by_fastavro


def _run_fresh(code: str) -> str:
    """Run ``code`` in a new interpreter (this test process has polars loaded) and return its output."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_a_process_forked_with_polars_loaded_decodes_with_fastavro():
    out = _run_fresh(
        """
        import os, random
        from datetime import UTC, datetime
        from braze_currents.generator import avro_schema, encode_avro, generate_records
        from braze_currents.reader import RecordBatches
        hour = datetime(2026, 12, 1, 4, tzinfo=UTC)
        records = generate_records("users.canvas.Entry", 50, hour=hour, rng=random.Random(1))
        data = encode_avro(records, avro_schema("users.canvas.Entry"))
        print(RecordBatches(data, "k").decoder)
        pid = os.fork()
        if pid == 0:
            print(RecordBatches(data, "k").decoder, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        """
    )
    assert out.split() == ["polars", "fastavro"]


def test_workers_decode_with_polars_and_the_task_process_never_loads_it(tmp_path):
    out = _run_fresh(
        f"""
        import random, sys
        from datetime import UTC, datetime
        from pathlib import Path
        from braze_currents.generator import avro_schema, encode_avro, generate_records
        from braze_currents.keys import build_key
        from braze_currents.mapping import load_mapping
        from braze_currents.prepare import PrepareSettings, prepare_window
        from braze_currents.reader import ListedObject
        from braze_currents.storage import LocalStore
        event_type = "users.messages.email.Open"
        hour = datetime(2026, 12, 1, 4, tzinfo=UTC)
        data, objects = {{}}, []
        for offset in range(3):
            key = build_key(
                prefix="currents", integration_id="a" * 24, event_type=event_type, hour=hour, offset=offset
            )
            records = generate_records(event_type, 800, hour=hour, rng=random.Random(offset))
            data[key] = encode_avro(records, avro_schema(event_type))
            objects.append(ListedObject(key, len(data[key]), "e", event_type))
        result = prepare_window(
            objects,
            data.__getitem__,
            mapping=load_mapping("include/segment_mapping.yaml"),
            settings=PrepareSettings(event_types=frozenset({{event_type}})),
            staging=LocalStore(Path({str(tmp_path)!r})),
            folder="w",
            workers=2,
        )
        print(dict(result.decoded_by), "polars" in sys.modules, result.staged_events > 0)
        """
    )
    assert out == "{'polars': 3} False True"


def _long(value: int) -> bytes:
    """An Avro long, zigzag and varint encoded."""
    number, out = (value << 1) ^ (value >> 63), bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    out.append(number)
    return bytes(out)


def _with_blocks(data: bytes, *blocks_: tuple[int, bytes], at: int) -> bytes:
    """``data`` with raw blocks (count, payload) put in before its block number ``at``."""
    stream = io.BytesIO(data)
    header, sync = blocks.read_header(stream)
    starts = [len(header)]
    while starts[-1] < len(data):
        stream.seek(starts[-1])
        blocks._read_long(stream)
        stream.seek(blocks._read_long(stream) + 16, io.SEEK_CUR)
        starts.append(stream.tell())
    extra = b"".join(_long(count) + _long(len(payload)) + payload + sync for count, payload in blocks_)
    return data[: starts[at]] + extra + data[starts[at] :]


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


# An empty block as each codec writes it (snappy: the compressed bytes, then the CRC-32 of the input).
_EMPTY_PAYLOAD = {
    "null": lambda: b"",
    "deflate": lambda: _raw_deflate(b""),
    "snappy": lambda: bytes(cramjam.snappy.compress_raw(b"")) + zlib.crc32(b"").to_bytes(4, "big"),
}


@pytest.mark.parametrize("at", [0, 1, 3])
@pytest.mark.parametrize("codec", ["null", "deflate", "snappy"])
def test_an_empty_block_loses_no_record_after_it(files, at, codec):
    records = generate_records("users.canvas.Entry", 1200, hour=HOUR, rng=random.Random(at))
    data = encode_avro(records, avro_schema("users.canvas.Entry"), codec=codec, block_size=250)
    data = _with_blocks(data, (0, _EMPTY_PAYLOAD[codec]()), at=at)

    by_polars, by_fastavro = _both(data)

    assert by_polars == by_fastavro
    assert len(by_polars[1]) == 1200 and by_polars[2] is None


@pytest.mark.parametrize(
    ("count", "payload"),
    [
        (2**50, b"x" * 40),  # polars would allocate its columns for this count and abort the process
        (10**7, b"x" * 40),
        (-1, b""),
        (0, b"not deflate at all"),
    ],
    ids=["count 2**50", "count 10**7", "negative count", "empty block with a bad payload"],
)
def test_implausible_blocks_are_read_as_fastavro_reads_them(files, count, payload):
    data = files["users.messages.email.Open"]
    for codec_data in (data, _deflated(data)):
        damaged = _with_blocks(codec_data, (count, payload), at=2)
        by_polars, by_fastavro = _both(damaged)
        assert by_polars == by_fastavro


def _deflated(data: bytes) -> bytes:
    records = [record for batch in RecordBatches(data, "k", use_polars=False) for record in batch]
    return encode_avro(records, avro_schema("users.messages.email.Open"), codec="deflate", block_size=250)


def test_a_block_size_past_the_end_of_the_data_stops_as_fastavro_stops(files):
    data = files["users.messages.sms.Delivery"]
    for size in (2**31, 2**62, 2**63 - 1):
        stream = io.BytesIO(data)
        header, _ = blocks.read_header(stream)
        damaged = data + _long(1) + _long(size) + b"tail"
        by_polars, by_fastavro = _both(damaged)
        assert by_polars == by_fastavro
        assert len(by_polars[1]) == 1800 and by_polars[2] is not None
        assert len(header) < len(data)


def test_schemas_with_logical_types_or_other_types_are_read_by_fastavro():
    for extra in ({"type": "string", "logicalType": "uuid"}, "double", {"type": "map", "values": "string"}):
        fields = [
            {"name": "id", "type": "string"},
            {"name": "time", "type": "long"},
            {"name": "x", "type": extra},
        ]
        schema = {"type": "record", "name": "r", "fields": fields}
        assert not blocks.plain_schema(schema)
    assert all(blocks.plain_schema(avro_schema(event_type)) for event_type in field_lists())
    fields = [
        {"name": "id", "type": "string"},
        {"name": "time", "type": {"type": "string", "logicalType": "uuid"}},
    ]
    data = encode_avro(
        [{"id": "a", "time": "00000000-0000-0000-0000-000000000005"}], {**SCHEMA_R, "fields": fields}
    )
    assert RecordBatches(data, "k").decoder == "fastavro"


SCHEMA_R = {"type": "record", "name": "r"}


def test_many_blocks_for_fastavro_alone_hand_the_rest_of_the_file_to_fastavro(files):
    """Each such block is read with a copy of the header: past a few, fastavro reads on from there."""
    data = files["users.canvas.Entry"]
    for at in range(8, 0, -1):  # three empty blocks after each of the eight
        data = _with_blocks(data, *[(0, b"")] * 3, at=at)
    assert 3 * 8 > blocks.MAX_ODD_BLOCKS

    by_polars, by_fastavro = _both(data)
    decoder = RecordBatches(data, "k", batch_size=700)._blocks
    list(decoder)

    assert by_polars == by_fastavro and len(by_polars[1]) == 1800 and by_polars[2] is None
    assert decoder.odd_blocks == blocks.MAX_ODD_BLOCKS + 1


def test_a_header_length_past_64_bits_is_read_as_fastavro_reads_it(files):
    """fastavro reads varints in 64 bits, so bits above them are dropped; the framing reader does not
    guess, and hands the file to fastavro."""
    data = files["users.messages.sms.Delivery"]
    count_bytes = len(_long(blocks._read_long(io.BytesIO(data[4:]))))
    at = 4 + count_bytes  # the first metadata key's length
    length = blocks._read_long(io.BytesIO(data[at:]))
    number = (length << 1) | (1 << 64)  # the same 64 bits, and one bit above them
    overlong = bytes(((number >> (7 * i)) & 0x7F) | (0x80 if i < 9 else 0) for i in range(10))
    damaged = data[:at] + overlong + data[at + len(_long(length)) :]

    by_polars, by_fastavro = _both(damaged)

    assert by_polars == by_fastavro and len(by_polars[1]) == 1800 and by_polars[2] is None
    with pytest.raises(blocks.FramingError):
        blocks.read_header(io.BytesIO(damaged))
