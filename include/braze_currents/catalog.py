"""The 51 Currents event types that can be exported to Segment, with their Avro field lists."""

from __future__ import annotations

import functools
import json
from importlib import resources

# Braze's documentation spells two types with underscores; the files use the dotted form.
_ALIASES = {
    "users_campaigns_abort": "users.campaigns.Abort",
    "users_canvas_abort": "users.canvas.Abort",
}


class UnknownEventTypeError(ValueError):
    """Raised for an event type that is not one of the exportable Currents types."""


@functools.cache
def field_lists() -> dict[str, list[dict]]:
    """Return ``{event type: [{"name": ..., "type": ...}, ...]}`` in writer order."""
    text = resources.files("braze_currents").joinpath("data/currents_schemas.json").read_text("utf-8")
    data = json.loads(text)
    return {name: fields for name, fields in data.items() if not name.startswith("_")}


def all_event_types() -> list[str]:
    """Return every exportable event type, sorted."""
    return sorted(field_lists())


def canonical_event_type(name: str) -> str:
    """Return the dotted spelling of ``name``; accept Braze's underscore aliases and any letter case.

    :param name: an event type as a user wrote it.
    """
    cleaned = name.strip()
    if cleaned in field_lists():
        return cleaned
    if cleaned.lower() in _ALIASES:
        return _ALIASES[cleaned.lower()]
    by_lower = {known.lower(): known for known in field_lists()}
    by_lower.update({known.lower().replace(".", "_"): known for known in field_lists()})
    if cleaned.lower() in by_lower:
        return by_lower[cleaned.lower()]
    import difflib

    # Compare in lower case with dots, so 'users_messages_email_opn' finds users.messages.email.Open too.
    wanted = cleaned.lower().replace("_", ".")
    close = difflib.get_close_matches(wanted, sorted(by_lower), n=1, cutoff=0.75)
    suggestions = list(dict.fromkeys(by_lower[match] for match in close))
    if not suggestions:
        suggestions = [known for known in field_lists() if wanted.split(".")[-1] in known.lower()][:3]
    hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
    raise UnknownEventTypeError(
        f"unknown Currents event type {name!r}{hint} "
        "(write 'all'; `python -m braze_currents.catalog` lists every type)"
    )


if __name__ == "__main__":
    print("\n".join(all_event_types()))
