"""Generate realistic Braze Currents Avro files for demos, tests and load runs.

The files follow what Braze writes to a storage bucket: one Avro object container file per event type
per flush under ``event_type=<type>/date=<YYYY-MM-DD-HH>/`` folders, the writer schema embedded, every
event's ``time`` inside the hour partition, and at-least-once delivery (a share of events repeated,
some of them in a later file). Values look like production data but stay fictional: e-mail addresses
only on ``example.com``/``example.org``/``example.net``, phone numbers only in the ranges reserved for
fiction (``+1 NXX 555-01xx`` and Ofcom's ``+44 7700 900xxx``), IP addresses from the documentation
blocks.

Run ``python -m braze_currents.generator --help`` to write sample hours to a folder or a bucket.
"""

from __future__ import annotations

import argparse
import base64
import copy
import dataclasses
import functools
import io
import logging
import math
import random
import sys
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from fastavro import parse_schema
from fastavro.write import Writer

from braze_currents.catalog import canonical_event_type, field_lists
from braze_currents.keys import build_key, partition_name

log = logging.getLogger(__name__)

SCHEMA_NAMESPACE = "dataexport.S3.inner"
DEFAULT_INTEGRATION_ID = "5f3c9a1e7b2d4c6e8a0b1d2f"
EMAIL_DOMAINS = ("example.com", "example.org", "example.net")
CODECS = ("null", "deflate", "snappy")
LAYOUTS = ("version-env", "schema-zone")
KAFKA_PARTITIONS = 3

# Users are drawn from a fixed population so the same person shows up across event types and hours.
POPULATION_SIZE = 20_000
# Share of users whose external id is an empty or whitespace-only string (on top of the null share).
BLANK_EXTERNAL_RATIO = 0.01
# Share of users whose external id is all digits with leading zeros, which must stay a string.
NUMERIC_EXTERNAL_RATIO = 0.03
# Share of nullable fields left null, except the fields in _NULL_RATES.
DEFAULT_NULL_RATE = 0.20


@dataclasses.dataclass(frozen=True)
class GeneratedFile:
    """One Avro file the generator wrote.

    :param key: the object key (relative path for a folder).
    :param event_type: the dotted event type.
    :param n_records: how many records the file holds, repeats included.
    :param ids: the ``id`` of every record, in file order (a repeated event appears again).
    :param external_ids: the ``external_user_id`` of every record, in file order.
    :param size: the file size in bytes.
    """

    key: str
    event_type: str
    n_records: int
    ids: list[str]
    external_ids: list[str | None]
    size: int


@dataclasses.dataclass(frozen=True)
class Campaign:
    """A campaign of the sample workspace, with its message variations.

    :param campaign_id: the campaign's API identifier.
    :param name: the campaign name as marketers typed it.
    :param variations: ``(message variation id, name)`` pairs.
    :param send_ids: the send tracking ids used with this campaign.
    """

    campaign_id: str
    name: str
    variations: tuple[tuple[str, str], ...]
    send_ids: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Canvas:
    """A Canvas of the sample workspace, with variations, steps and an experiment step.

    :param canvas_id: the Canvas's identifier.
    :param api_id: the Canvas's API identifier.
    :param name: the Canvas name.
    :param variations: ``(variation id, name, API id)`` triples.
    :param steps: ``(step id, name, API id, step message variation id)`` tuples.
    :param experiment_step_id: the experiment step's id.
    :param splits: ``(experiment split id, name)`` pairs.
    """

    canvas_id: str
    api_id: str
    name: str
    variations: tuple[tuple[str, str, str], ...]
    steps: tuple[tuple[str, str, str, str], ...]
    experiment_step_id: str
    splits: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True)
class _AppGroup:
    app_group_id: str
    api_id: str
    apps: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class _User:
    index: int
    user_id: str
    # Decides the external id for a given null ratio, so the ratio stays a parameter.
    external_draw: float
    email: str
    phone: str
    country: str
    timezone: str
    locale: str
    app_group: _AppGroup
    platform: str
    device_id: str
    device_model: str
    os_version: str
    resolution: str
    carrier: str | None
    browser: str
    ad_id: str
    ad_tracking_enabled: bool
    push_token: str
    user_agent: str

    def external_id(self, null_ratio: float) -> str | None:
        """Return this user's external id when a share ``null_ratio`` of users has none."""
        if self.external_draw < null_ratio:
            return None
        if self.external_draw < null_ratio + BLANK_EXTERNAL_RATIO:
            return "" if self.index % 2 else "  "
        if self.external_draw < null_ratio + BLANK_EXTERNAL_RATIO + NUMERIC_EXTERNAL_RATIO:
            return f"{self.index:07d}"
        return f"cust-{self.index:06d}"


# --- fixed vocabularies ------------------------------------------------------------------------------
# Names carry non-ASCII on purpose (accents, en dashes written as \u2013, CJK, emoji): exports must
# keep them intact.

_COUNTRIES = ("US", "GB", "DE", "FR", "PL", "JP")
_COUNTRY_WEIGHTS = (45, 20, 10, 10, 5, 10)
_TIMEZONES = {
    "US": ("America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles", "America/Phoenix"),
    "GB": ("Europe/London",),
    "DE": ("Europe/Berlin",),
    "FR": ("Europe/Paris",),
    "PL": ("Europe/Warsaw",),
    "JP": ("Asia/Tokyo",),
}
_LOCALES = {"US": "en-US", "GB": "en-GB", "DE": "de-DE", "FR": "fr-FR", "PL": "pl-PL", "JP": "ja-JP"}
_FIRST_NAMES = {
    "US": ("Emma", "Liam", "Olivia", "Noah", "Ava", "Mason", "José", "Zoë", "Aaliyah", "Ethan"),
    "GB": ("Oliver", "Amelia", "Harry", "Isla", "Siobhán", "George", "Freya", "Niamh"),
    "DE": ("Jürgen", "Lena", "Jörg", "Mia", "Lukas", "Günther", "Anneliese"),
    "FR": ("Zoë", "Élodie", "Léa", "François", "Hugo", "Chloé", "Anaïs"),
    "PL": ("Łukasz", "Zofia", "Paweł", "Małgorzata", "Jakub", "Wojciech"),
    "JP": ("渡辺", "さくら", "翔太", "Yuki", "Haruto", "美咲", "Ren"),
}
_LAST_NAMES = {
    "US": ("Smith", "Johnson", "Garcia", "Nguyen", "O'Brien", "Williams", "Martínez", "Kim"),
    "GB": ("Taylor", "Brown", "Wilson", "Evans", "Ó Súilleabháin", "Patel", "Hughes"),
    "DE": ("Müller", "Schröder", "Weiß", "Becker", "Hoffmann"),
    "FR": ("Lefèvre", "Dubois", "Moreau", "Girard", "Fontaine"),
    "PL": ("Wiśniewski", "Kowalski", "Wójcik", "Zieliński", "Nowak"),
    "JP": ("Tanaka", "渡辺", "Suzuki", "佐藤", "Takahashi"),
}
_US_AREA_CODES = ("202", "212", "312", "415", "617", "713")
_CARRIERS = {
    "US": ("T-Mobile", "Verizon", "AT&T"),
    "GB": ("EE", "Vodafone UK", "O2 - UK"),
    "DE": ("Telekom.de", "Vodafone.de"),
    "FR": ("Orange F", "SFR"),
    "PL": ("Play", "Orange PL"),
    "JP": ("NTT DOCOMO", "SoftBank"),
}
_PLATFORMS = ("ios", "android", "web")
_PLATFORM_WEIGHTS = (45, 40, 15)
_DEVICES = {
    "ios": ("iPhone15,2", "iPhone16,1", "iPhone14,5", "iPhone17,3", "iPad13,18"),
    "android": ("Pixel 8", "SM-S918B", "SM-A546B", "moto g84 5G", "Pixel 7a"),
    "web": ("Macintosh", "Windows", "Linux x86_64"),
}
_OS_VERSIONS = {
    "ios": ("17.6.1", "18.1", "18.2.1", "16.7.10"),
    "android": ("15", "14", "13", "12"),
    "web": ("Mac OS X 10.15.7", "Windows 10", "Linux"),
}
_RESOLUTIONS = {
    "ios": ("1179x2556", "1170x2532", "1290x2796"),
    "android": ("1080x2400", "1080x2340", "1440x3120"),
    "web": ("1920x1080", "1440x900", "2560x1440"),
}
_BROWSERS = {
    "ios": ("Safari", "Chrome Mobile iOS"),
    "android": ("Chrome Mobile", "Samsung Internet"),
    "web": ("Chrome", "Safari", "Firefox", "Edge"),
}
_USER_AGENTS = {
    "ios": (
        "Mozilla/5.0 (iPhone; CPU iPhone OS {os} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/18.1 Mobile/15E148 Safari/604.1"
    ),
    "android": (
        "Mozilla/5.0 (Linux; Android {os}; {model}) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Mobile Safari/537.36"
    ),
    "web": (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36"
    ),
}
_AD_ID_TYPES = {"ios": "ios_idfa", "android": "google_ad_id", "web": None}
_DEVICE_CLASSES = {"ios": "phone", "android": "phone", "web": "desktop"}
_CAMPAIGN_NAMES = (
    "Black Friday 2026 \u2013 Early Access",
    "Zoë's Spring Picks",
    "Winback: 30 days inactive",
    "Price drop alert (Łukasz test)",
    "渡辺さん向け JP launch",
    "Weekly digest 🗞️",
    "Order shipped \u2013 transactional",
    "App update 7.4 release notes",
)
_CANVAS_NAMES = (
    "Welcome Journey v3",
    "Cart Abandonment \u2013 Müller DE",
    "Re-engagement / Café promo",
    "Loyalty tiers 2026",
    "Onboarding 🚀 iOS",
)
_STEP_NAMES = (
    "Entry",
    "Day 1 \u2013 Welcome email",
    "Day 3 push nudge",
    "Wait 2 days",
    "SMS reminder",
    "Décision split",
)
_VARIATION_NAMES = ("Variant 1", "Variant 2", "Control")
_SENDER_NUMBERS = ("+12025550100", "+12025550101", "+447700900000")
_ABORT_TYPES = (
    "liquid_abort_message",
    "rate_limit",
    "user_not_in_segment",
    "quiet_hours",
    "frequency_capping",
    "connected_content_error",
)
_ABORT_LOGS = (
    "{% abort_message('no coupon left') %}",
    "Frequency cap of 3 messages per 7 days reached",
    "Connected Content returned 503 after 3 attempts",
    "User is not in the target segment at send time",
    "Message would be sent during quiet hours (22:00-08:00 local)",
)
_BOUNCE_REASONS = (
    "550 5.1.1 <{email}>: Recipient address rejected: User unknown",
    "552 5.2.2 Mailbox full",
    "554 5.7.1 Message rejected due to content",
    "421 4.7.0 Temporary rate limit, try again later",
)
_MAILBOX_PROVIDERS = ("Gmail", "Microsoft", "Yahoo", "Apple", "GMX", "Orange")
_ESPS = ("SendGrid", "SparkPost", "Amazon SES")
_IP_POOLS = ("marketing", "transactional", "warmup")
# Documentation address blocks (RFC 5737): never routable.
_SENDING_IPS = ("192.0.2.10", "192.0.2.11", "198.51.100.25", "203.0.113.7")
_LINK_ALIASES = ("cta_button", "hero_image", "footer_unsubscribe", "product_1", "view_in_browser")
_BUTTON_STRINGS = ("Shop now", "Not now", "Voir l'offre", "Jetzt kaufen", "詳しく見る")
_BUTTON_ACTIONS = ("URI", "DEEP_LINK", "CLOSE", "NEWS_FEED")
_SUBSCRIPTION_STATUSES = ("Subscribed", "Unsubscribed", "Opted In")
_STATE_SOURCES = ("REST API", "Preference Center", "Subscription Center", "SMS Inbound", "CSV Import", "SDK")
_CHANNELS = ("email", "sms", "whatsapp")
_SMS_ACTIONS = ("Subscribed", "Unsubscribed", "None")
_SMS_BODIES = ("STOP", "YES", "HELP", "Where is my order?", "Merci 👍", "ok", "UNSTOP", "はい")
_SMS_ERRORS = ("Undeliverable", "Unreachable destination handset", "Carrier violation", "Message blocked")
_PROVIDER_CODES = ("30003", "30005", "30006", "30007", "131026", "131047")
_CATEGORIES = ("opt-in", "opt-out", "help", None)
_TEMPLATE_NAMES = ("order_update_v2", "appointment_reminder", "welcome_es", "cart_reminder")
_QUICK_REPLIES = ("Yes please", "Not now", "Talk to an agent", "Sí")
_CONVERSION_BEHAVIORS = (
    {"type": "purchase"},
    {"type": "custom_event", "name": "added_to_cart"},
    {"type": "session_start", "app_id": None},
    {"type": "click_email"},
)
_STRING_TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"

_CAMPAIGN_FIELDS = frozenset(
    {"campaign_id", "campaign_name", "message_variation_id", "message_variation_name"}
)
_CANVAS_FIELDS = frozenset(
    {
        "canvas_id",
        "canvas_api_id",
        "canvas_name",
        "canvas_variation_id",
        "canvas_variation_api_id",
        "canvas_variation_name",
        "canvas_step_id",
        "canvas_step_api_id",
        "canvas_step_name",
        "canvas_step_message_variation_id",
        "experiment_step_id",
        "experiment_split_id",
        "experiment_split_name",
    }
)
_PHONE_FIELDS = frozenset(
    {"to_phone_number", "user_phone_number", "phone_number", "from_phone_number", "inbound_phone_number"}
)
# Fields that carry identity, routing or filters: never nulled at random (context may still null them).
_NULL_RATES = {
    "user_id": 0.03,
    "email_address": 0.0,
    "app_group_id": 0.0,
    "app_id": 0.0,
    "platform": 0.0,
    "timezone": 0.05,
    "device_model": 0.05,
    "os_version": 0.05,
    "time_ms": 0.0,
    "send_id": 0.05,
    "dispatch_id": 0.05,
    "subscription_group_id": 0.0,
    "is_suspected_bot_click": 0.0,
    "suspected_bot_click_reason": 0.0,
    **dict.fromkeys(_PHONE_FIELDS, 0.0),
    **dict.fromkeys(_CAMPAIGN_FIELDS | _CANVAS_FIELDS, 0.0),
}


# --- small value helpers -----------------------------------------------------------------------------


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _object_id(rng: random.Random, at: int | None = None) -> str:
    # Braze ids are MongoDB ObjectIds: 4 bytes of creation time, then 8 random bytes.
    seconds = at if at is not None else rng.randrange(1_546_300_800, 1_767_225_600)
    return f"{seconds:08x}{rng.getrandbits(64):016x}"


def _token(rng: random.Random, length: int = 10) -> str:
    return "".join(rng.choices(_STRING_TOKEN_ALPHABET, k=length))


def _b64_token(rng: random.Random, n_bytes: int) -> str:
    return base64.urlsafe_b64encode(rng.randbytes(n_bytes)).decode("ascii").rstrip("=")


def _ascii_fold(text: str) -> str:
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return "".join(ch for ch in folded.lower() if ch.isalnum())


# --- the sample workspace ----------------------------------------------------------------------------


@functools.cache
def _app_groups() -> tuple[_AppGroup, ...]:
    rng = random.Random("braze-currents/app-groups")
    return tuple(
        _AppGroup(_object_id(rng), _uuid(rng), {platform: _uuid(rng) for platform in _PLATFORMS})
        for _ in range(2)
    )


@functools.cache
def campaign_pool() -> tuple[Campaign, ...]:
    """Return the campaigns that generated events refer to (stable across seeds)."""
    rng = random.Random("braze-currents/campaigns")
    return tuple(
        Campaign(
            campaign_id=_uuid(rng),
            name=name,
            variations=tuple((_uuid(rng), label) for label in _VARIATION_NAMES[: rng.randint(1, 3)]),
            send_ids=tuple(_object_id(rng) for _ in range(3)),
        )
        for name in _CAMPAIGN_NAMES
    )


@functools.cache
def canvas_pool() -> tuple[Canvas, ...]:
    """Return the Canvases that generated events refer to (stable across seeds)."""
    rng = random.Random("braze-currents/canvases")
    canvases = []
    for name in _CANVAS_NAMES:
        steps = rng.sample(_STEP_NAMES, rng.randint(3, len(_STEP_NAMES)))
        canvases.append(
            Canvas(
                canvas_id=_uuid(rng),
                api_id=_uuid(rng),
                name=name,
                variations=tuple((_uuid(rng), label, _uuid(rng)) for label in _VARIATION_NAMES[:2]),
                steps=tuple((_uuid(rng), step, _uuid(rng), _uuid(rng)) for step in steps),
                experiment_step_id=_uuid(rng),
                splits=tuple((_uuid(rng), label) for label in ("Path A", "Path B", "Control path")),
            )
        )
    return tuple(canvases)


@functools.lru_cache(maxsize=POPULATION_SIZE)
def _user(index: int) -> _User:
    rng = random.Random(f"braze-currents/user/{index}")
    country = rng.choices(_COUNTRIES, _COUNTRY_WEIGHTS)[0]
    platform = rng.choices(_PLATFORMS, _PLATFORM_WEIGHTS)[0]
    first = rng.choice(_FIRST_NAMES[country])
    last = rng.choice(_LAST_NAMES[country])

    # Most addresses are folded to ASCII; a few keep the UTF-8 local part (RFC 6531 mailboxes exist).
    if rng.random() < 0.02:
        local = f"{first}.{last}".lower().replace(" ", "").replace("'", "")
    else:
        local = ".".join(part for part in (_ascii_fold(first), _ascii_fold(last)) if part) or "user"
    local += str(rng.randrange(1, 1000)) if rng.random() < 0.6 else ""
    if rng.random() < 0.05:
        local += "+news"
    email = f"{local}@{rng.choice(EMAIL_DOMAINS)}"

    if country == "GB":
        phone = f"+447700900{rng.randrange(1000):03d}"
    else:
        phone = f"+1{rng.choice(_US_AREA_CODES)}55501{rng.randrange(100):02d}"

    model = rng.choice(_DEVICES[platform])
    os_version = rng.choice(_OS_VERSIONS[platform])
    if platform == "ios":
        device_id, push_token = _uuid(rng).upper(), f"{rng.getrandbits(256):064x}"
    elif platform == "android":
        device_id, push_token = _uuid(rng), f"{_b64_token(rng, 16)}:APA91b{_b64_token(rng, 100)}"
    else:
        device_id, push_token = _uuid(rng), _b64_token(rng, 64)
    ua_os = os_version.replace(".", "_") if platform == "ios" else os_version
    user_agent = _USER_AGENTS[platform].format(os=ua_os, model=model)

    return _User(
        index=index,
        user_id=_object_id(rng),
        external_draw=rng.random(),
        email=email,
        phone=phone,
        country=country,
        timezone=rng.choice(_TIMEZONES[country]),
        locale=_LOCALES[country],
        app_group=_app_groups()[0 if rng.random() < 0.85 else 1],
        platform=platform,
        device_id=device_id,
        device_model=model,
        os_version=os_version,
        resolution=rng.choice(_RESOLUTIONS[platform]),
        carrier=rng.choice(_CARRIERS[country]) if platform != "web" else None,
        browser=rng.choice(_BROWSERS[platform]),
        ad_id=_uuid(rng),
        ad_tracking_enabled=rng.random() < 0.3,
        push_token=push_token,
        user_agent=user_agent,
    )


# --- field values ------------------------------------------------------------------------------------


class _Context:
    """What one record's field values are drawn from."""

    __slots__ = (
        "bot_click",
        "campaign",
        "canvas",
        "canvas_variation",
        "rng",
        "source",
        "step",
        "t",
        "user",
        "variation",
    )

    def __init__(self, rng: random.Random, user: _User, source: str | None, t: int) -> None:
        self.rng = rng
        self.user = user
        self.source = source
        self.t = t
        self.campaign = rng.choice(campaign_pool())
        self.variation = rng.choice(self.campaign.variations)
        self.canvas = rng.choice(canvas_pool())
        self.canvas_variation = rng.choice(self.canvas.variations)
        self.step = rng.choice(self.canvas.steps)
        self.bot_click = rng.random() < 0.05


def _from_campaign(pick: Callable[[_Context], Any]) -> Callable[[_Context], Any]:
    return lambda c: pick(c) if c.source == "campaign" else None


def _from_canvas(pick: Callable[[_Context], Any]) -> Callable[[_Context], Any]:
    return lambda c: pick(c) if c.source == "canvas" else None


def _message_extras(c: _Context) -> str:
    extras: dict[str, Any] = {"locale": c.user.locale}
    if c.rng.random() < 0.6:
        extras["offer_code"] = f"SAVE{c.rng.choice((10, 15, 20, 25))}"
    if c.rng.random() < 0.4:
        extras["greeting"] = c.rng.choice(("Hi", "Bonjour Zoë", "Hallo Jürgen", "こんにちは"))
    if c.rng.random() < 0.3:
        extras["order_id"] = f"ORD-{c.rng.randrange(10**7):07d}"
    return orjson.dumps(extras).decode("utf-8")


def _url(c: _Context) -> str:
    path = c.rng.choice(("products/trail-shoe-2", "sale", "account/orders", "blog/spring-edit", "cart"))
    name = c.canvas.name if c.source == "canvas" else c.campaign.name
    campaign = _ascii_fold(name)[:24] or "campaign"
    return f"https://www.example.com/{path}?utm_source=braze&utm_medium=email&utm_campaign={campaign}"


def _bot_click_reasons(c: _Context) -> list[str] | None:
    if not c.bot_click:
        return None
    return c.rng.sample(("user_agent", "ip_address", "click_time", "link_scanner"), c.rng.randint(1, 2))


def _channel_identifier(c: _Context) -> str:
    return c.user.email if c.rng.random() < 0.7 else c.user.phone


# Each entry is (Avro kind, value function). A kind that does not match the field's schema type falls
# back to the generic value for that type, so an evolved schema still encodes.
_FIELDS: dict[str, tuple[str, Callable[[_Context], Any]]] = {
    "id": ("string", lambda c: _uuid(c.rng)),
    "user_id": ("string", lambda c: c.user.user_id),
    "time": ("int", lambda c: c.t),
    "time_ms": ("int", lambda c: c.t * 1000 + c.rng.randrange(1000)),
    "timezone": ("string", lambda c: c.user.timezone),
    "app_group_id": ("string", lambda c: c.user.app_group.app_group_id),
    "app_group_api_id": ("string", lambda c: c.user.app_group.api_id),
    "app_id": ("string", lambda c: c.user.app_group.apps[c.user.platform]),
    "platform": ("string", lambda c: c.user.platform),
    "os_version": ("string", lambda c: c.user.os_version),
    "device_model": ("string", lambda c: c.user.device_model),
    "device_id": ("string", lambda c: c.user.device_id),
    "device_os": ("string", lambda c: {"ios": "iOS", "android": "Android", "web": "Web"}[c.user.platform]),
    "device_class": ("string", lambda c: _DEVICE_CLASSES[c.user.platform]),
    "resolution": ("string", lambda c: c.user.resolution),
    "carrier": ("string", lambda c: c.user.carrier),
    "browser": ("string", lambda c: c.user.browser),
    "ad_id": ("string", lambda c: c.user.ad_id if c.user.platform != "web" else None),
    "ad_id_type": ("string", lambda c: _AD_ID_TYPES[c.user.platform]),
    "ad_tracking_enabled": ("boolean", lambda c: c.user.ad_tracking_enabled),
    "push_token": ("string", lambda c: c.user.push_token),
    "locale_key": ("string", lambda c: c.user.locale),
    "user_agent": ("string", lambda c: c.user.user_agent),
    "email_address": ("string", lambda c: c.user.email),
    "to_phone_number": ("string", lambda c: c.user.phone),
    "user_phone_number": ("string", lambda c: c.user.phone),
    "phone_number": ("string", lambda c: c.user.phone),
    "from_phone_number": ("string", lambda c: c.rng.choice(_SENDER_NUMBERS)),
    "inbound_phone_number": ("string", lambda c: c.rng.choice(_SENDER_NUMBERS)),
    "campaign_id": ("string", _from_campaign(lambda c: c.campaign.campaign_id)),
    "campaign_name": ("string", _from_campaign(lambda c: c.campaign.name)),
    "message_variation_id": ("string", _from_campaign(lambda c: c.variation[0])),
    "message_variation_name": ("string", _from_campaign(lambda c: c.variation[1])),
    "canvas_id": ("string", _from_canvas(lambda c: c.canvas.canvas_id)),
    "canvas_api_id": ("string", _from_canvas(lambda c: c.canvas.api_id)),
    "canvas_name": ("string", _from_canvas(lambda c: c.canvas.name)),
    "canvas_variation_id": ("string", _from_canvas(lambda c: c.canvas_variation[0])),
    "canvas_variation_name": ("string", _from_canvas(lambda c: c.canvas_variation[1])),
    "canvas_variation_api_id": ("string", _from_canvas(lambda c: c.canvas_variation[2])),
    "canvas_step_id": ("string", _from_canvas(lambda c: c.step[0])),
    "canvas_step_name": ("string", _from_canvas(lambda c: c.step[1])),
    "canvas_step_api_id": ("string", _from_canvas(lambda c: c.step[2])),
    "canvas_step_message_variation_id": ("string", _from_canvas(lambda c: c.step[3])),
    "experiment_step_id": ("string", _from_canvas(lambda c: c.canvas.experiment_step_id)),
    "experiment_split_id": ("string", _from_canvas(lambda c: c.rng.choice(c.canvas.splits)[0])),
    "experiment_split_name": ("string", _from_canvas(lambda c: c.rng.choice(c.canvas.splits)[1])),
    "send_id": ("string", lambda c: c.rng.choice(c.campaign.send_ids)),
    "dispatch_id": ("string", lambda c: _object_id(c.rng, c.t - c.rng.randrange(600))),
    "message_extras": ("string", _message_extras),
    "abort_type": ("string", lambda c: c.rng.choice(_ABORT_TYPES)),
    "abort_log": ("string", lambda c: c.rng.choice(_ABORT_LOGS)),
    "bounce_reason": ("string", lambda c: c.rng.choice(_BOUNCE_REASONS).format(email=c.user.email)),
    "esp": ("string", lambda c: c.rng.choice(_ESPS)),
    "ip_pool": ("string", lambda c: c.rng.choice(_IP_POOLS)),
    "sending_ip": ("string", lambda c: c.rng.choice(_SENDING_IPS)),
    "from_domain": ("string", lambda c: c.rng.choice(("mail.example.com", "news.example.com"))),
    "mailbox_provider": ("string", lambda c: c.rng.choice(_MAILBOX_PROVIDERS)),
    "machine_open": ("string", lambda c: "true" if c.rng.random() < 0.4 else None),
    "is_amp": ("boolean", lambda c: c.rng.random() < 0.1),
    "is_suspected_bot_click": ("boolean", lambda c: c.bot_click),
    "is_drop": ("boolean", lambda c: c.rng.random() < 0.02),
    "is_sms_fallback": ("boolean", lambda c: c.rng.random() < 0.1),
    "in_control_group": ("boolean", lambda c: c.rng.random() < 0.1),
    "suspected_bot_click_reason": ("array", _bot_click_reasons),
    "url": ("string", _url),
    "short_url": ("string", lambda c: f"https://example.com/s/{_b64_token(c.rng, 5)}"),
    "media_urls": ("array", lambda c: [f"https://cdn.example.com/mms/{_token(c.rng, 12)}.jpg"]),
    "link_id": ("string", lambda c: _token(c.rng, 6)),
    "link_alias": ("string", lambda c: c.rng.choice(_LINK_ALIASES)),
    "button_id": ("string", lambda c: str(c.rng.randrange(2))),
    "button_string": ("string", lambda c: c.rng.choice(_BUTTON_STRINGS)),
    "button_action_type": ("string", lambda c: c.rng.choice(_BUTTON_ACTIONS)),
    "card_id": ("string", lambda c: _b64_token(c.rng, 24)),
    "content_card_id": ("string", lambda c: _b64_token(c.rng, 24)),
    "conversion_behavior": (
        "string",
        lambda c: orjson.dumps(c.rng.choice(_CONVERSION_BEHAVIORS)).decode("utf-8"),
    ),
    "conversion_behavior_index": ("int", lambda c: c.rng.randrange(3)),
    "subscription_group_id": ("string", lambda c: c.rng.choice(_subscription_groups())),
    "subscription_status": ("string", lambda c: c.rng.choice(_SUBSCRIPTION_STATUSES)),
    "state_change_source": ("string", lambda c: c.rng.choice(_STATE_SOURCES)),
    "channel": ("string", lambda c: c.rng.choice(_CHANNELS)),
    "channel_identifier": ("string", _channel_identifier),
    "action": ("string", lambda c: c.rng.choice(_SMS_ACTIONS)),
    "message_body": ("string", lambda c: c.rng.choice(_SMS_BODIES)),
    "error": ("string", lambda c: c.rng.choice(_SMS_ERRORS)),
    "provider_error_code": ("string", lambda c: c.rng.choice(_PROVIDER_CODES)),
    "provider_error_title": ("string", lambda c: c.rng.choice(_SMS_ERRORS)),
    "category": ("string", lambda c: c.rng.choice(_CATEGORIES)),
    "template_name": ("string", lambda c: c.rng.choice(_TEMPLATE_NAMES)),
    "quick_reply_text": ("string", lambda c: c.rng.choice(_QUICK_REPLIES)),
    "message_id": ("string", lambda c: f"wamid.{_b64_token(c.rng, 30)}"),
    "in_reply_to": ("string", lambda c: f"wamid.{_b64_token(c.rng, 30)}"),
    "flow_id": ("string", lambda c: str(c.rng.randrange(10**15, 10**16))),
    "flow_response_json": (
        "string",
        lambda c: orjson.dumps({"screen": "SURVEY", "rating": c.rng.randint(1, 5)}).decode("utf-8"),
    ),
    "bsuid": ("string", lambda c: f"{c.user.country}.{c.rng.randrange(10**15, 10**16)}"),
    "version": ("string", lambda c: c.rng.choice(("2", "3"))),
    "product_id": ("string", lambda c: f"sku-{c.rng.randrange(10**5):05d}"),
    "catalog_id": ("string", lambda c: _object_id(c.rng, 1_735_689_600)),
}


@functools.cache
def _subscription_groups() -> tuple[str, ...]:
    rng = random.Random("braze-currents/subscription-groups")
    return tuple(_uuid(rng) for _ in range(4))


def _generic_value(kind: str, name: str, rng: random.Random) -> Any:
    if kind == "boolean":
        return rng.random() < 0.5
    if kind in ("int", "long"):
        return rng.randrange(10)
    if kind == "float":
        return round(rng.uniform(0, 100), 2)
    if kind == "array":
        return [_token(rng, 6) for _ in range(rng.randint(1, 3))]
    if name.endswith("_name"):
        return f"{rng.choice(('Spring', 'Loyalty', 'Winback', 'Café'))} {rng.choice(_VARIATION_NAMES)}"
    return _token(rng, rng.randint(6, 12))


def _kind(avro_type: Any) -> tuple[str, bool]:
    """Return the Avro kind of a field type and whether it is nullable."""
    nullable = isinstance(avro_type, list) and "null" in avro_type
    if isinstance(avro_type, list):
        branches = [branch for branch in avro_type if branch != "null"]
        avro_type = branches[0] if branches else "null"
    if isinstance(avro_type, dict):
        return avro_type.get("type", "string"), nullable
    return avro_type, nullable


# --- public API --------------------------------------------------------------------------------------


def avro_schema(event_type: str, fields: list[dict] | None = None) -> dict:
    """Build the Avro record schema Braze embeds in files of one event type.

    Unions get ``"default": null`` as in Braze's writer schemas.

    :param event_type: the dotted event type; Braze's underscore aliases are accepted.
    :param fields: ``[{"name", "type"}, ...]`` in writer order; the catalog's list when omitted.
    """
    if fields is None:
        event_type = canonical_event_type(event_type)
        fields = field_lists()[event_type]
    avro_fields = []
    for field in fields:
        avro_field = {"name": field["name"], "type": copy.deepcopy(field["type"])}
        if isinstance(field["type"], list) and field["type"] and field["type"][0] == "null":
            avro_field["default"] = None
        avro_fields.append(avro_field)
    return {"type": "record", "name": f"{SCHEMA_NAMESPACE}.{event_type}", "fields": avro_fields}


def generate_records(
    event_type: str,
    n: int,
    *,
    hour: datetime,
    rng: random.Random,
    null_external_ratio: float = 0.10,
    duplicate_ratio: float = 0.0,
    fields: list[dict] | None = None,
) -> list[dict]:
    """Generate ``n`` realistic records of one event type, ordered roughly by ``time``.

    Users come from a fixed population, so a user keeps the same ids, address, phone and device across
    event types and hours. About ``null_external_ratio`` of records have no ``external_user_id``, about 1%
    more have an empty or whitespace-only one and about 3% an all-digit one with leading zeros. Each
    event comes from a campaign or a Canvas, and the other's fields are null. A share
    ``duplicate_ratio`` of the ``n`` records repeat an earlier record in full, as Braze's at-least-once
    delivery does: the first repeat is placed last (so it lands in another file when the records are
    split), half the rest far after their original and half shortly after.

    :param event_type: the dotted event type.
    :param n: how many records to return, repeats included.
    :param hour: the hour partition; ``time`` falls in ``[hour, hour + 1h)`` (floored to the hour, UTC
        when naive).
    :param rng: the source of randomness; the same seed gives the same records.
    :param null_external_ratio: share of records whose user has no external id.
    :param duplicate_ratio: share of records that repeat an earlier one (at least one when above 0).
    :param fields: the field list in writer order; the catalog's list when omitted.
    """
    if n < 0:
        raise ValueError(f"n must be 0 or more, got {n}")
    if not 0.0 <= duplicate_ratio < 1.0:
        raise ValueError(f"duplicate_ratio must be in [0, 1), got {duplicate_ratio}")
    if not 0.0 <= null_external_ratio <= 1.0:
        raise ValueError(f"null_external_ratio must be in [0, 1], got {null_external_ratio}")
    if fields is None:
        event_type = canonical_event_type(event_type)
        fields = field_lists()[event_type]
    start = int(_floor_hour(hour).timestamp())

    n_duplicates = round(n * duplicate_ratio)
    if duplicate_ratio > 0 and n >= 2:
        n_duplicates = min(max(n_duplicates, 1), n - 1)
    n_originals = n - n_duplicates

    plan = _field_plan(fields)
    source_choice = _source_choice(fields)
    times = sorted(rng.randrange(start, start + 3600) for _ in range(n_originals))
    originals = []
    for t in times:
        user = _user(rng.randrange(POPULATION_SIZE))
        source = source_choice if source_choice != "either" else rng.choice(("campaign", "canvas"))
        context = _Context(rng, user, source, t)
        record: dict[str, Any] = {}
        for name, kind, nullable, null_rate, value in plan:
            if name == "external_user_id":
                record[name] = user.external_id(null_external_ratio)
            elif nullable and null_rate and rng.random() < null_rate:
                record[name] = None
            elif value is None:
                record[name] = _generic_value(kind, name, rng)
            else:
                record[name] = value(context)
        if "user_id" in record and record["user_id"] is None and "external_user_id" in record:
            # An inbound message from an unknown number has no Braze user, so no external id either.
            record["external_user_id"] = None
        originals.append(record)
    return _with_duplicates(originals, n_duplicates, rng)


def encode_avro(
    records: Iterable[Mapping[str, Any]],
    schema: dict,
    *,
    codec: str = "null",
    block_size: int = 1000,
    sync_marker: bytes | None = None,
) -> bytes:
    """Encode records as an Avro object container file, ``block_size`` records per data block.

    :param records: the records, each with every schema field.
    :param schema: the writer schema, e.g. from :func:`avro_schema`.
    :param codec: ``null``, ``deflate`` or ``snappy``.
    :param block_size: records per data block; a file of a few thousand records has several blocks.
    :param sync_marker: the 16-byte sync marker; random when omitted (pass one for byte-identical output).
    """
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    buffer = io.BytesIO()
    # A sync interval no block reaches, so blocks are cut by record count below, not by bytes.
    writer = Writer(
        buffer, parse_schema(schema), codec=codec, sync_interval=2**62, sync_marker=sync_marker or b""
    )
    pending = 0
    for record in records:
        writer.write(record)
        pending += 1
        if pending == block_size:
            writer.flush()
            pending = 0
    writer.flush()
    return buffer.getvalue()


def write_window(
    put: Callable[[str, bytes], None],
    *,
    prefix: str,
    hour: datetime,
    event_types: Iterable[str],
    events_per_type: int | Mapping[str, int],
    seed: int = 0,
    integration_id: str = DEFAULT_INTEGRATION_ID,
    max_events_per_file: int = 15_000,
    codec: str = "null",
    layout: str = "version-env",
    duplicate_ratio: float = 0.02,
    null_external_ratio: float = 0.10,
) -> list[GeneratedFile]:
    """Write one hour of Currents files the way Braze lays them out, and describe what was written.

    Each event type's events are split into files of at most ``max_events_per_file`` records; even a
    small hour gets one to three files, as Braze flushes every five minutes. Files of a type take Kafka
    partitions 0 to 2 in turn, with start offsets that grow from file to file. Repeated events
    (``duplicate_ratio``) appear within a file and, when a type has two or more files, across files.
    A type with no events gets no file, as Braze never writes empty files.

    :param put: called with ``(key, data)`` for each file, e.g. from :func:`s3_put` or :func:`dir_put`.
    :param prefix: the folder the Current writes under, e.g. ``currents``.
    :param hour: the hour partition (floored to the hour, UTC when naive).
    :param event_types: the event types to write; Braze's underscore aliases are accepted.
    :param events_per_type: records per type, or ``{event type: records}`` (missing types get none).
    :param seed: the seed; the same seed, hour and arguments give the same keys and bytes.
    :param integration_id: the 24-hex id in the topic name.
    :param max_events_per_file: the most records one file holds.
    :param codec: ``null``, ``deflate`` or ``snappy``.
    :param layout: ``version-env`` (``version=6/us-01``) or ``schema-zone`` (``6/us-01``).
    :param duplicate_ratio: share of records that repeat an earlier event.
    :param null_external_ratio: share of records without an ``external_user_id``.
    """
    if max_events_per_file < 1:
        raise ValueError(f"max_events_per_file must be at least 1, got {max_events_per_file}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    hour = _floor_hour(hour)
    partition = partition_name(hour)
    counts = (
        {canonical_event_type(name): count for name, count in events_per_type.items()}
        if isinstance(events_per_type, Mapping)
        else None
    )

    files: list[GeneratedFile] = []
    for requested in event_types:
        event_type = canonical_event_type(requested)
        n = counts.get(event_type, 0) if counts is not None else int(events_per_type)
        if n <= 0:
            continue
        rng = random.Random(f"{seed}/{partition}/{event_type}")
        schema = avro_schema(event_type)
        records = generate_records(
            event_type,
            n,
            hour=hour,
            rng=rng,
            null_external_ratio=null_external_ratio,
            duplicate_ratio=duplicate_ratio,
        )

        n_files = max(math.ceil(n / max_events_per_file), min(n, rng.randint(1, 3)))
        offset = rng.randrange(10**6)
        kafka_partition = rng.randrange(KAFKA_PARTITIONS)
        start = 0
        for size in _split_sizes(n, n_files):
            chunk = records[start : start + size]
            start += size
            key = build_key(
                prefix=prefix,
                integration_id=integration_id,
                event_type=event_type,
                hour=hour,
                offset=offset,
                kafka_partition=kafka_partition,
                layout=layout,
            )
            data = encode_avro(chunk, schema, codec=codec, sync_marker=rng.randbytes(16))
            put(key, data)
            files.append(
                GeneratedFile(
                    key=key,
                    event_type=event_type,
                    n_records=size,
                    ids=[record["id"] for record in chunk],
                    external_ids=[record.get("external_user_id") for record in chunk],
                    size=len(data),
                )
            )
            offset += size
            kafka_partition = (kafka_partition + 1) % KAFKA_PARTITIONS
        log.info("Wrote %s records of %s for %s in %s files", n, event_type, partition, n_files)
    return files


def s3_put(client: Any, bucket: str) -> Callable[[str, bytes], None]:
    """Return a ``put`` for :func:`write_window` that uploads with a boto3 S3 client.

    :param client: a boto3 S3 client.
    :param bucket: the bucket to write to.
    """

    def put(key: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=data)

    return put


def dir_put(root: Path) -> Callable[[str, bytes], None]:
    """Return a ``put`` for :func:`write_window` that writes files under a folder, keys as paths.

    :param root: the folder; created when missing.
    """
    base = Path(root).resolve()

    def put(key: str, data: bytes) -> None:
        target = (base / key).resolve()
        if not target.is_relative_to(base):
            raise ValueError(f"key {key!r} points outside {base}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    return put


# --- internals ---------------------------------------------------------------------------------------


def _floor_hour(hour: datetime) -> datetime:
    if hour.tzinfo is None:
        hour = hour.replace(tzinfo=UTC)
    return hour.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _field_plan(fields: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, bool, float, Callable | None]]:
    """Return ``(name, kind, nullable, null rate, value function or None)`` for each field."""
    plan = []
    for field in fields:
        name = field["name"]
        kind, nullable = _kind(field["type"])
        known = _FIELDS.get(name)
        value = None
        if known is not None and (known[0] == kind or {known[0], kind} <= {"int", "long"}):
            value = known[1]
        null_rate = _NULL_RATES.get(name, DEFAULT_NULL_RATE) if nullable else 0.0
        if not nullable and value is not None:
            # A required field must never come back null from a context rule or a missing attribute.
            value = _required(value, kind, name)
        plan.append((name, kind, nullable, null_rate, value))
    return plan


def _required(value: Callable[[_Context], Any], kind: str, name: str) -> Callable[[_Context], Any]:
    def required_value(c: _Context) -> Any:
        result = value(c)
        return _generic_value(kind, name, c.rng) if result is None else result

    return required_value


def _source_choice(fields: Sequence[Mapping[str, Any]]) -> str | None:
    """Return ``campaign``, ``canvas``, ``either`` or None: which kind of message the events come from."""
    names = {field["name"]: _kind(field["type"])[1] for field in fields}
    required = {name for name, nullable in names.items() if not nullable}
    if required & _CAMPAIGN_FIELDS:
        return "campaign"
    if required & _CANVAS_FIELDS:
        return "canvas"
    has_campaign = bool(names.keys() & _CAMPAIGN_FIELDS)
    has_canvas = bool(names.keys() & _CANVAS_FIELDS)
    if has_campaign and has_canvas:
        return "either"
    return "campaign" if has_campaign else "canvas" if has_canvas else None


def _with_duplicates(originals: list[dict], n_duplicates: int, rng: random.Random) -> list[dict]:
    """Insert ``n_duplicates`` full copies of earlier records after their originals."""
    if not n_duplicates or not originals:
        return originals
    m = len(originals)
    placed: list[tuple[float, int, dict]] = [(float(i), 0, record) for i, record in enumerate(originals)]
    for d in range(n_duplicates):
        if d == 0:
            source, position = 0, float(m)
        elif d % 2 == 0:
            source = rng.randrange(max(1, m // 2))
            position = rng.uniform(m / 2, m)
        else:
            source = rng.randrange(m)
            position = float(min(m, source + rng.randint(1, 50)))
        placed.append((max(position, source + 0.5), d + 1, copy.deepcopy(originals[source])))
    placed.sort(key=lambda item: (item[0], item[1]))
    return [record for _, _, record in placed]


def _split_sizes(n: int, parts: int) -> list[int]:
    base, extra = divmod(n, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


# --- command line ------------------------------------------------------------------------------------


def _parse_hour(text: str) -> datetime:
    try:
        return _floor_hour(datetime.strptime(text, "%Y-%m-%dT%H"))
    except ValueError:
        return _floor_hour(datetime.fromisoformat(text))


def main(argv: Sequence[str] | None = None) -> int:
    """Write sample Currents hours to a folder or an S3 bucket and print one summary line per hour.

    :param argv: the arguments; ``sys.argv[1:]`` when omitted.
    """
    parser = argparse.ArgumentParser(
        prog="python -m braze_currents.generator", description="Write sample Braze Currents Avro files."
    )
    parser.add_argument("--out", required=True, help="a folder, or s3://bucket/prefix")
    parser.add_argument("--endpoint-url", help="S3 endpoint, e.g. a local moto server")
    parser.add_argument("--hour", required=True, type=_parse_hour, help="first hour, e.g. 2026-12-01T04")
    parser.add_argument("--hours", type=int, default=1, help="how many consecutive hours (default 1)")
    parser.add_argument("--events-per-type", type=int, default=1000, help="records per type and hour")
    parser.add_argument("--types", help="comma-separated event types (default: all 51)")
    parser.add_argument("--codec", choices=CODECS, default="null")
    parser.add_argument("--layout", choices=LAYOUTS, default="version-env")
    parser.add_argument("--prefix", default="currents", help="folder prefix when --out is a folder")
    parser.add_argument("--max-events-per-file", type=int, default=15_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    event_types = (
        [name.strip() for name in args.types.split(",") if name.strip()]
        if args.types
        else sorted(field_lists())
    )
    if args.out.startswith("s3://"):
        import boto3

        bucket, _, prefix = args.out[len("s3://") :].partition("/")
        put = s3_put(boto3.client("s3", endpoint_url=args.endpoint_url), bucket)
    else:
        prefix = args.prefix
        put = dir_put(Path(args.out))

    for step in range(args.hours):
        hour = args.hour + timedelta(hours=step)
        files = write_window(
            put,
            prefix=prefix,
            hour=hour,
            event_types=event_types,
            events_per_type=args.events_per_type,
            seed=args.seed,
            max_events_per_file=args.max_events_per_file,
            codec=args.codec,
            layout=args.layout,
        )
        events = sum(file.n_records for file in files)
        unique = len({event_id for file in files for event_id in file.ids})
        size = sum(file.size for file in files)
        print(
            f"{partition_name(hour)}: {len(files)} files, {events} events "
            f"({events - unique} repeats), {size / 1e6:.1f} MB -> {args.out}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
