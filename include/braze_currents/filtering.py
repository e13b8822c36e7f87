"""Decide, with pandas, which decoded events of a window are sent and why the others are not.

An event is sent when it has an id, a non-blank external user id, its id has not been seen earlier in
the window, and the ledger does not record it as delivered. The checks run on whole batches of records
at once; only the events that pass go through the per-event mapping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

# What happens to each row of a batch.
SEND = 0
MISSING_ID = 1
NO_EXTERNAL_ID = 2
DUPLICATE = 3
ALREADY_SENT = 4

# Characters that print as nothing but are not whitespace: an id made only of these (and blanks) is
# as empty as a blank one.
INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"

# pandas' hash_array takes 16-character keys; two keys give two independent 64-bit halves.
_HASH_KEYS = ("braze-currents-1", "braze-currents-2")


class SeenIds:
    """The event ids already taken in a window, kept as 128-bit hashes: 16 bytes an id.

    A window of millions of events would need hundreds of megabytes as a set of strings; here the
    hashes sit in a few sorted numpy arrays ("runs") whose sizes halve from the oldest to the newest,
    so a lookup touches few runs and merging costs little.

    .. note::
        Two different ids are taken for the same one only when both 64-bit halves of their hashes
        collide (about one chance in 10**38 per pair). When only the first half collides the repeat
        may be missed; the event is then sent again with the same messageId, which Segment drops.
    """

    def __init__(self) -> None:
        self._runs: list[tuple[Any, Any]] = []

    def __len__(self) -> int:
        return sum(len(high) for high, _ in self._runs)

    @staticmethod
    def hashes(ids: Any) -> tuple[Any, Any]:
        """Return the two 64-bit halves of each id's hash, as :meth:`add_hashes` takes them.

        :param ids: a numpy object array of id strings.
        """
        import pandas as pd

        high = pd.util.hash_array(ids, hash_key=_HASH_KEYS[0], categorize=False)
        low = pd.util.hash_array(ids, hash_key=_HASH_KEYS[1], categorize=False)
        return high, low

    def add(self, ids: Any) -> Any:
        """Record ids that do not repeat among themselves; return a mask of those recorded before.

        :param ids: a numpy object array of id strings.
        """
        return self.add_hashes(*self.hashes(ids))

    def add_hashes(self, high: Any, low: Any) -> Any:
        """:meth:`add` for ids already hashed with :meth:`hashes` (say, in another process)."""
        import numpy as np

        # Looked up in sorted order: each run is then read front to back rather than at random.
        order = np.argsort(high, kind="stable")
        high, low = high[order], low[order]
        found = np.zeros(len(high), dtype=bool)
        for run_high, run_low in self._runs:
            at = np.minimum(np.searchsorted(run_high, high), len(run_high) - 1)
            found |= (run_high[at] == high) & (run_low[at] == low)
        if not found.all():
            self._runs.append((high[~found], low[~found]))
            self._merge()
        seen = np.empty(len(high), dtype=bool)
        seen[order] = found
        return seen

    def _merge(self) -> None:
        import numpy as np

        while len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
            newer_high, newer_low = self._runs.pop()
            older_high, older_low = self._runs[-1]
            # Inserting the smaller sorted run into the larger keeps both sorted with one new array each.
            at = np.searchsorted(older_high, newer_high)
            self._runs[-1] = (np.insert(older_high, at, newer_high), np.insert(older_low, at, newer_low))


@dataclasses.dataclass
class Selection:
    """The outcome of each row of a batch, and the stripped external ids to send as ``userId``.

    :param outcome: a numpy array with one of ``SEND``, ``MISSING_ID``, ``NO_EXTERNAL_ID``,
        ``DUPLICATE``, ``ALREADY_SENT`` per row.
    :param user_ids: per row, the external user id without surrounding blanks (meaningful where sent).
    :param taken: the rows whose ids this batch added to ``seen`` (each id's first row), in order;
        their outcome is ``SEND`` or ``ALREADY_SENT``.
    :param taken_hashes: the hashes of those ids, as :meth:`SeenIds.hashes` gives them.
    """

    outcome: Any
    user_ids: list[Any]
    taken: Any = None
    taken_hashes: tuple[Any, Any] | None = None

    def rows(self, outcome: int) -> list[int]:
        """Return the row numbers with this outcome, in order."""
        import numpy as np

        return np.flatnonzero(self.outcome == outcome).tolist()

    def count(self, outcome: int) -> int:
        return int((self.outcome == outcome).sum())


def select_rows(
    records: Sequence[dict[str, Any]],
    seen: SeenIds,
    *,
    already_sent: Collection[str] = (),
    message_id_prefix: str = "",
    anonymous: bool = False,
) -> Selection:
    """Decide what happens to each record of a batch, and record the ids taken in ``seen``.

    In row order, as a loop over the events would: a record without an id is ``MISSING_ID``; one
    whose external user id is null, empty or blank is ``NO_EXTERNAL_ID``; one whose id was taken by an
    earlier row (of this batch or an earlier one) is ``DUPLICATE``; one whose messageId the ledger
    holds is ``ALREADY_SENT``, and its id still counts as taken.

    :param records: the decoded records of one batch (a list, or a polars batch as
        :class:`braze_currents.blocks.FrameRecords`).
    :param seen: the ids taken so far in the window; updated.
    :param already_sent: messageIds the ledger records as delivered.
    :param message_id_prefix: put before each id to form its messageId.
    :param anonymous: a record without an external user id but with a Braze ``user_id`` is sent too
        (as an anonymous event) instead of being ``NO_EXTERNAL_ID``.
    """
    import numpy as np
    import pandas as pd

    from braze_currents.blocks import column

    id_values = column(records, "id")
    ids = pd.Series(id_values, dtype=object)
    # dtype "str": a missing value is NaN, not None, so blanks and missing are both tested explicitly.
    external = pd.Series(column(records, "external_user_id"), dtype="str").str.strip()
    has_id = np.fromiter((type(value) is str and value != "" for value in id_values), bool, len(id_values))
    has_external = (external.notna() & external.str.strip(INVISIBLE).ne("")).to_numpy(dtype=bool)
    if anonymous:
        braze_ids = pd.Series(column(records, "user_id"), dtype="str").str.strip()
        visible = braze_ids.notna() & braze_ids.str.strip(INVISIBLE).ne("")
        has_external = has_external | visible.to_numpy(dtype=bool)

    outcome = np.full(len(records), SEND, dtype=np.int8)
    outcome[~has_external] = NO_EXTERNAL_ID
    outcome[~has_id] = MISSING_ID
    candidates = np.flatnonzero(has_id & has_external)
    candidate_ids = ids.iloc[candidates]
    repeated = candidate_ids.duplicated(keep="first").to_numpy()
    first = candidates[~repeated]
    high, low = SeenIds.hashes(candidate_ids.to_numpy()[~repeated])
    earlier = seen.add_hashes(high, low)
    outcome[candidates[repeated]] = DUPLICATE
    outcome[first[earlier]] = DUPLICATE
    fresh = first[~earlier]
    if already_sent:
        delivered = np.fromiter(
            (message_id_prefix + id_values[row] in already_sent for row in fresh.tolist()),
            dtype=bool,
            count=len(fresh),
        )
        outcome[fresh[delivered]] = ALREADY_SENT
    return Selection(outcome, external.tolist(), fresh, (high[~earlier], low[~earlier]))
