"""Serialise a whole batch of ``track`` messages from polars columns, in Rust rather than per event.

:class:`braze_currents.mapping.MessageBuilder` builds one dict per event and orjson dumps it; that
per-event Python was most of what is left of prepare's time once polars decodes the files. Here each
part of the message is a polars expression over the batch's columns, and the messages come out as the
very bytes ``orjson.dumps(builder.build(record, user_id))`` gives: the same keys in the same order,
null properties left out, moved context fields only where they hold a value, the same escaping
(``tests/unit/test_columnar.py`` compares them byte for byte).

It takes only what it can match exactly and declines the rest, which then goes event by event:
- a mapping with context constants, a constant property named like a field, two fields renamed to one
  name, or context paths that one event could fill in a different order than another;
- columns other than strings, 32/64-bit integers, booleans and lists of strings (a float's NaN, bytes);
- a batch where any event needs a dead letter (a time outside the years 1000 to 9999, a missing
  time, a messageId of 100 characters or more, a message over 32 KB).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from braze_currents.batching import MAX_EVENT_BYTES
from braze_currents.mapping import _FIRST_SECOND, _LAST_SECOND, MAX_MESSAGE_ID_LENGTH, EventSpec

# The batch's identity columns: names no Avro field can have, so they never hide one.
_IDENTITY = "identity-"
_ANONYMOUS = "anonymous-"


@functools.cache
def _plain_types() -> tuple[Any, ...]:
    import polars as pl

    return (pl.String, pl.Int32, pl.Int64, pl.Boolean, pl.List(pl.String), pl.Null)


def _context_tree(spec: EventSpec) -> dict[str, Any] | None:
    """The moved context fields as nested ``{key: field name | subtree}``, in first-appearance order,
    or None when an event could order them differently (a key's paths not side by side) or two paths
    clash."""
    tree: dict[str, Any] = {}
    for field, path in spec.context:
        node = tree
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if part in node:
                keys = list(node)
                if last or isinstance(node[part], str) or keys[-1] != part:
                    return None  # a clash, or a key whose paths are not side by side
                node = node[part]
            elif last:
                node[part] = field
            else:
                node[part] = {}
                node = node[part]
    return tree


class ColumnarBuilder:
    """Build the messages of one event type for whole polars batches.

    :param spec: the mapping of the event type.
    :param message_id_prefix: prepended to the Currents id to form the messageId.
    :param integration: ``context.integration``.
    """

    def __init__(self, spec: EventSpec, *, message_id_prefix: str, integration: Mapping[str, str]) -> None:
        self.spec = spec
        self.prefix = message_id_prefix
        self.integration = dict(integration)
        self.tree = None if spec.context_constants else _context_tree(spec)
        self._plans: dict[tuple[tuple[str, Any], ...], Any] = {}

    def serialise(
        self, frame: Any, rows: Sequence[int], identities: Sequence[str], anonymous: Sequence[bool]
    ) -> tuple[bytes, Any] | None:
        """Serialise the messages of ``rows``; None when any of them must go event by event.

        :param frame: the batch, a polars DataFrame.
        :param rows: the rows to send, in order.
        :param identities: per row sent, its ``userId`` (or ``anonymousId``).
        :param anonymous: per row sent, whether the identity is an ``anonymousId``.
        :returns: the messages, each followed by a comma, and each message's length in bytes.
        """
        import numpy as np
        import polars as pl
        from polars.exceptions import PanicException

        if self.tree is None:
            return None
        plan = self._plan(frame.schema)
        if plan is None:
            return None
        chosen = frame[np.asarray(rows, dtype=np.int64)] if len(rows) != frame.height else frame
        chosen = chosen.with_columns(
            pl.Series(_IDENTITY, list(identities), dtype=pl.String),
            pl.Series(_ANONYMOUS, list(anonymous), dtype=pl.Boolean),
        )
        checks, message = plan
        try:
            if not chosen.select(checks).item():
                return None
            return _joined(chosen.select(message.alias("m")).to_series())
        except (Exception, PanicException):  # whatever polars cannot do, the per-event loop does
            return None

    def _plan(self, schema: Any) -> tuple[Any, Any] | None:
        key = tuple(schema.items())
        if key not in self._plans:
            try:
                self._plans[key] = self._compile(dict(schema))
            except (TypeError, ValueError, OverflowError, orjson.JSONEncodeError):
                self._plans[key] = None  # a constant orjson cannot write: each event dead-letters alone
        return self._plans[key]

    def _compile(self, schema: dict[str, Any]) -> tuple[Any, Any] | None:
        """Compile the checks and the message expression for one batch schema, or None."""
        import polars as pl

        spec = self.spec
        if "id" not in schema or schema["id"] != pl.String or "time" not in schema:
            return None
        if _IDENTITY in schema or _ANONYMOUS in schema:
            return None
        if schema["time"] not in (pl.Int32, pl.Int64) or schema.get("time_ms", pl.Int64) not in (
            pl.Int32,
            pl.Int64,
        ):
            return None
        properties = [name for name in schema if name not in spec.skip]
        names = [spec.rename.get(name, name) for name in properties]
        if len(set(names)) != len(names) or set(names) & set(spec.constants):
            return None
        # polars would write a lone surrogate as U+FFFD where orjson refuses it (the event then
        # becomes a dead letter): such text in the mapping goes event by event.
        texts = [self.prefix, spec.event, *names, *_keys(self.tree), *self.integration.values()]
        if not all(_utf8(text) for text in texts):
            return None
        moved = _leaves(self.tree)
        if any(schema.get(field, pl.Null) not in _plain_types() for field in [*properties, *moved]):
            return None

        def pair(column: Any, name: str) -> Any:
            """``"name":value`` for a column, the value as orjson writes it."""
            encoded = pl.struct(column.alias(name)).struct.json_encode()
            return encoded.str.strip_prefix("{").str.strip_suffix("}")

        parts = [
            pl.when(pl.col(field).is_not_null()).then(pair(pl.col(field), name))
            for field, name in zip(properties, names, strict=True)
        ]
        if spec.constants:
            parts.append(pl.lit(orjson.dumps(dict(spec.constants)).decode()[1:-1]))
        props = pl.concat_str(parts, separator=",", ignore_nulls=True) if parts else pl.lit("")

        def present(field: str) -> Any:
            if field not in schema or schema[field] == pl.Null:
                return pl.lit(False)
            value = pl.col(field).is_not_null()
            return value & (pl.col(field) != "") if schema[field] == pl.String else value

        def node(key: str, child: Any) -> tuple[Any, Any]:
            """(fragment or null, whether it is there) for a context key."""
            if isinstance(child, str):
                there = present(child)
                column = pl.col(child) if child in schema else pl.lit(None)
                return pl.when(there).then(pair(column, key)), there
            members = [node(sub, grandchild) for sub, grandchild in child.items()]
            there = functools.reduce(lambda a, b: a | b, (m[1] for m in members))
            inner = pl.concat_str([m[0] for m in members], separator=",", ignore_nulls=True)
            return pl.when(there).then(pl.lit(orjson.dumps(key).decode() + ":{") + inner + pl.lit("}")), there

        context = pl.concat_str(
            [
                pl.lit('"integration":' + orjson.dumps(self.integration).decode()),
                *(node(key, child)[0] for key, child in self.tree.items()),
            ],
            separator=",",
            ignore_nulls=True,
        )

        seconds, fraction = pl.col("time"), pl.lit(0)
        if "time_ms" in schema:
            millis = pl.col("time_ms")
            seconds = pl.when(millis.is_not_null()).then(millis // 1000).otherwise(pl.col("time"))
            fraction = pl.when(millis.is_not_null()).then(millis % 1000).otherwise(0)
        message_id = pl.lit(self.prefix) + pl.col("id")
        checks = (
            seconds.is_not_null()
            & seconds.is_between(_FIRST_SECOND, _LAST_SECOND)
            & (message_id.str.len_chars() <= MAX_MESSAGE_ID_LENGTH)
        ).all()
        timestamp = (
            pl.from_epoch(seconds.cast(pl.Int64), time_unit="s").dt.strftime("%Y-%m-%dT%H:%M:%S")
            + pl.lit(".")
            + fraction.cast(pl.String).str.zfill(3)
            + pl.lit("Z")
        )
        identity = pl.when(pl.col(_ANONYMOUS)).then(pl.lit('"anonymousId":'))
        identity = identity.otherwise(pl.lit('"userId":'))
        message = pl.concat_str(
            [
                pl.lit('{"type":"track",'),
                identity,
                pair(pl.col(_IDENTITY), "v").str.strip_prefix('"v":'),
                pl.lit(',"event":' + orjson.dumps(spec.event).decode() + ',"messageId":'),
                pair(message_id, "v").str.strip_prefix('"v":'),
                pl.lit(',"timestamp":"'),
                timestamp,
                pl.lit('","properties":{'),
                props,
                pl.lit('},"context":{'),
                context,
                pl.lit("}},"),  # each message is followed by a comma, as the batch builder takes them
            ]
        )
        return checks, message


def _joined(messages: Any) -> tuple[bytes, Any] | None:
    """The messages, each with its comma, as one buffer (Arrow keeps a string column's bytes end to end,
    so this is one copy) and their lengths without the comma; None if one is over the size limit."""
    import numpy as np
    import polars as pl
    import pyarrow as pa

    if messages.null_count():  # no part of a message can be null; were one, its row would go astray
        return None
    array = messages.to_arrow(compat_level=pl.CompatLevel.oldest())
    if array.type != pa.large_string():
        array = array.cast(pa.large_string())
    _, offsets, data = array.buffers()
    ends = np.frombuffer(offsets, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    lengths = np.diff(ends) - 1
    if len(lengths) and int(lengths.max()) > MAX_EVENT_BYTES:
        return None
    return data.slice(int(ends[0]), int(ends[-1] - ends[0])).to_pybytes(), lengths


def _utf8(text: Any) -> bool:
    try:
        str(text).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _keys(tree: Mapping[str, Any] | None) -> list[str]:
    out: list[str] = []
    for key, child in (tree or {}).items():
        out.append(key)
        if not isinstance(child, str):
            out.extend(_keys(child))
    return out


def _leaves(tree: Mapping[str, Any] | None) -> list[str]:
    if not tree:
        return []
    out: list[str] = []
    for child in tree.values():
        out.extend([child] if isinstance(child, str) else _leaves(child))
    return out
