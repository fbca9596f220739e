"""Scalar formats of the deployment spec: durations (humantime), memory sizes, cron schedules, image references.

Each parser raises ``ValueError`` with a message a person can act on; the loader attaches the position and the
field path. No heavy imports here: ``zlayer validate`` pays only for what it uses.
"""

from __future__ import annotations

import re
from collections import namedtuple
from datetime import UTC, datetime, timedelta

from zlayer.errors import shown

__all__ = [
    "CronSchedule",
    "format_duration",
    "memory_to_bytes",
    "parse_cron",
    "parse_duration",
    "parse_image_ref",
    "parse_memory",
    "parse_size",
]

# --- durations (Rust humantime::parse_duration compatible) --------------------------------------------------------

_NS = 1_000_000_000
_UNITS: dict[str, int] = {}
for _names, _ns in (
    (("nanos", "nsec", "ns"), 1),
    (("usec", "us", "µs"), 1_000),
    (("millis", "msec", "ms"), 1_000_000),
    (("seconds", "second", "secs", "sec", "s"), _NS),
    (("minutes", "minute", "mins", "min", "m"), 60 * _NS),
    (("hours", "hour", "hrs", "hr", "h"), 3600 * _NS),
    (("days", "day", "d"), 86400 * _NS),
    (("weeks", "week", "w"), 7 * 86400 * _NS),
    (("months", "month", "M"), 2_630_016 * _NS),
    (("years", "year", "y"), 31_557_600 * _NS),
):
    for _n in _names:
        _UNITS[_n] = _ns


def _decimal(digits: str) -> int:
    """ASCII digits as an integer; more than a 128-bit integer has is "number is too large" (``int()`` would refuse
    past 4300 digits with advice about ``sys.set_int_max_str_digits()``)."""
    if len(digits) > 39:
        raise ValueError("number is too large")
    return int(digits)


def _is_decimal(text: str) -> bool:
    return text.isascii() and text.isdigit()  # str.isdigit() alone takes '²' and '٣'


_DUR_PART = re.compile(r"([0-9]+)\s*([A-Za-zµ]+)")


def parse_duration_ns(text: str) -> int:
    """Parse ``30s``, ``1h30m``, ``1h 30m``, ``500ms`` into nanoseconds. A unit is required; integers only."""
    s = text.strip()
    if not s:
        raise ValueError("value was empty")
    pos = 0
    total = 0
    while pos < len(s):
        if s[pos].isspace():
            pos += 1
            continue
        m = _DUR_PART.match(s, pos)
        if m is None:
            if s[pos].isdigit():
                end = pos
                while end < len(s) and s[end].isdigit():
                    end += 1
                if end == len(s):
                    raise ValueError("time unit needed, for example 30sec or 30s")
                raise ValueError(f"invalid character at {end}")
            raise ValueError(f"expected number at {pos}")
        unit = m.group(2)
        if unit not in _UNITS:
            raise ValueError(
                f"unknown time unit {unit!r}, supported units: ns, us, ms, sec, min, hours, days, "
                "weeks, months, years (and few variations)"
            )
        total += _decimal(m.group(1)) * _UNITS[unit]
        pos = m.end()
    if total >= 2**64 * _NS:
        raise ValueError("number is too large")
    return total


def parse_duration(text: str) -> float:
    """Duration text (humantime) → seconds as a float."""
    return parse_duration_ns(text) / _NS


def format_duration(seconds: float) -> str:
    """Seconds → humantime's canonical text (``5m``, ``1h 30m``, ``2days``); ``0s`` for zero."""
    ns = round(seconds * _NS)
    if ns <= 0:
        return "0s"
    secs, nanos = divmod(ns, _NS)
    years, secs = divmod(secs, 31_557_600)
    months, secs = divmod(secs, 2_630_016)
    days, secs = divmod(secs, 86400)
    hours, secs = divmod(secs, 3600)
    minutes, secs = divmod(secs, 60)
    millis, nanos = divmod(nanos, 1_000_000)
    micros, nanos = divmod(nanos, 1_000)
    out: list[str] = []
    for value, one, many in (
        (years, "year", "years"),
        (months, "month", "months"),
        (days, "day", "days"),
        (hours, "h", "h"),
        (minutes, "m", "m"),
        (secs, "s", "s"),
        (millis, "ms", "ms"),
        (micros, "us", "us"),
        (nanos, "ns", "ns"),
    ):
        if value:
            out.append(f"{value}{one if value == 1 else many}")
    return " ".join(out)


# --- memory ----------------------------------------------------------------------------------------------------------

_MEM = re.compile(r"^\+?([0-9]+)(Ki|Mi|Gi|Ti)$")  # Rust u64::from_str takes a leading +
_MEM_SUFFIXES = ("Ki", "Mi", "Gi", "Ti")


_SIZE = re.compile(r"(\d+)\s*([kKmMgGtT]?)(i?[bB]?)")
_SIZE_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """A size as Docker reads one (``512Mi``, ``512M``, ``1g``, ``64KiB``, ``1048576``) → bytes; multiples are
    binary. The one size parser: :func:`parse_memory` is its stricter ZLayer form."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r}: expected a size such as 512Mi, 2Gi or a number of bytes")
    return int(m.group(1)) * _SIZE_MULT[m.group(2).lower()]


def parse_memory(text: str) -> int:
    """``256Mi`` → bytes. Binary suffix required (Ki, Mi, Gi, Ti); the number must be a positive integer."""
    m = _MEM.match(text)
    if m is None:
        if not text.endswith(_MEM_SUFFIXES):
            raise ValueError(f"invalid memory format: '{shown(text)}' (use Ki, Mi, Gi, or Ti suffix)")
        raise ValueError(f"invalid memory format: '{shown(text)}'")
    n = int(m.group(1)) if len(m.group(1)) <= 20 else 2**64
    if n <= 0 or n >= 2**64:
        raise ValueError(f"invalid memory format: '{shown(text)}'")
    return parse_size(text.lstrip("+"))


def memory_to_bytes(text: str) -> int:
    """Alias of :func:`parse_memory` (ZLayer's ``memory_string_to_bytes``)."""
    return parse_memory(text)


# --- cron (Rust `cron` crate: sec min hour dom month dow [year]) ---------------------------------------------------

_MONTH_NAMES = ("JANUARY", "FEBRUARY", "MARCH", "APRIL", "MAY", "JUNE", "JULY", "AUGUST", "SEPTEMBER", "OCTOBER",
                "NOVEMBER", "DECEMBER")  # fmt: skip
_DAY_NAMES = ("SUNDAY", "MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY")
_CRON_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("seconds", 0, 59, ()),
    ("minutes", 0, 59, ()),
    ("hours", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTH_NAMES),
    ("day of week", 1, 7, _DAY_NAMES),
    ("year", 1970, 2100, ()),
)
_CRON_SHORTHANDS = {
    "@yearly": "0 0 0 1 1 * *",
    "@monthly": "0 0 0 1 * * *",
    "@weekly": "0 0 0 * * 1 *",
    "@daily": "0 0 0 * * * *",
    "@hourly": "0 0 * * * * *",
}


def _cron_value(tok: str, what: str, lo: int, hi: int, names: tuple[str, ...]) -> int:
    if _is_decimal(tok):
        v = _decimal(tok)
    else:
        key = tok.upper()
        # A name is its first three letters or the whole word (MON, MONDAY), as the cron crate reads it.
        hits = [i for i, full in enumerate(names) if key == full[:3] or key == full]
        if not hits:
            raise ValueError(f"{tok!r} is not a valid {what}")
        v = hits[0] + 1
    if not lo <= v <= hi:
        raise ValueError(f"{what} {v} is outside {lo}-{hi}")
    return v


def _cron_field(text: str, what: str, lo: int, hi: int, names: tuple[str, ...]) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError(f"empty item in the {what} field {text!r}")
        base, slash, step_s = part.partition("/")
        step = 1
        if slash:
            if not _is_decimal(step_s) or _decimal(step_s) == 0:
                raise ValueError(f"bad step {shown(step_s)!r} in the {what} field")
            step = _decimal(step_s)
        if base in ("*", "?"):
            a, b = lo, hi
        elif "-" in base:
            x, _, y = base.partition("-")
            a, b = _cron_value(x, what, lo, hi, names), _cron_value(y, what, lo, hi, names)
            if a > b:
                raise ValueError(f"range {base} in the {what} field runs backwards")
        else:
            a = _cron_value(base, what, lo, hi, names)
            b = hi if slash else a
        out.update(range(a, b + 1, step))
    return frozenset(out)


TYPE_CHECKING = False  # (typing is imported for the type checker only: `zlayer validate` never loads it)
if TYPE_CHECKING:
    from typing import NamedTuple

    class _CronFields(NamedTuple):
        expr: str
        seconds: frozenset[int]
        minutes: frozenset[int]
        hours: frozenset[int]
        days: frozenset[int]
        months: frozenset[int]
        weekdays: frozenset[int]
        years: frozenset[int]

else:
    _CronFields = namedtuple("_CronFields", "expr seconds minutes hours days months weekdays years")


class CronSchedule(_CronFields):
    """A parsed schedule: the set of values each field matches. Day of week counts ``1`` = Sunday to ``7`` =
    Saturday, as the cron crate does; day of month and day of week must both match. Times are UTC. (A named tuple:
    a dataclass, or typing's NamedTuple, would cost every `zlayer validate` a sixth of its start-up.)"""

    __slots__ = ()

    @classmethod
    def parse(cls, expr: str) -> CronSchedule:
        """:func:`parse_cron`, raising :class:`zlayer.errors.SpecError` that names the schedule."""
        from zlayer.errors import SpecError

        try:
            return parse_cron(expr)
        except ValueError as e:
            raise SpecError(f"invalid cron schedule {expr!r}: {e}") from None

    def next_after(self, after: datetime) -> datetime | None:
        """The first time strictly after ``after`` (UTC) the schedule fires, or None if it never does again."""
        t = after.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
        day = datetime(t.year, t.month, t.day, tzinfo=UTC)
        last_year = max(self.years)
        while day.year <= last_year:
            if day.year not in self.years:
                day = datetime(day.year + 1, 1, 1, tzinfo=UTC)
                continue
            if day.month not in self.months:
                day = datetime(day.year + (day.month == 12), day.month % 12 + 1, 1, tzinfo=UTC)
                continue
            weekday = (day.weekday() + 1) % 7 + 1  # Python counts Monday=0; the spec counts Sunday=1
            if day.day in self.days and weekday in self.weekdays:
                for h in sorted(self.hours):
                    for m in sorted(self.minutes):
                        for s in sorted(self.seconds):
                            cand = day.replace(hour=h, minute=m, second=s)
                            if cand >= t:
                                return cand
            day += timedelta(days=1)
        return None


def parse_cron(text: str) -> CronSchedule:
    """A cron schedule as the Rust ``cron`` crate reads it: 6 or 7 fields, seconds first, ``*``, ``?``, numbers,
    ranges, steps, lists and English names, or a shorthand (``@daily`` ...). Raises ``ValueError`` saying which
    field is wrong."""
    fields = _CRON_SHORTHANDS.get(text.strip(), text).split()
    if len(fields) not in (6, 7):
        raise ValueError(
            f"expected 6 or 7 fields (sec min hour day-of-month month day-of-week [year]), found {len(fields)}"
        )
    if len(fields) == 6:
        fields.append("*")
    sets = [_cron_field(tok, *spec) for tok, spec in zip(fields, _CRON_FIELDS, strict=True)]
    return CronSchedule(text, *sets)


# --- OCI image references --------------------------------------------------------------------------------------------

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN_COMP = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMP}(?:\.{_DOMAIN_COMP})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_COMPONENT_RE = re.compile(rf"^{_COMPONENT}$")
_REF = re.compile(
    rf"^(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)


def _ref_problem(text: str) -> str:
    """Why ``text`` is not a reference, as precisely as can be said."""
    if not text or text != text.strip():
        return "empty or surrounded by spaces"
    rest, at, digest = text.partition("@")
    if at and re.fullmatch(_DIGEST, digest) is None:
        return f"bad digest {digest!r}"
    last = rest.rpartition("/")[2]
    if ":" in last:
        tag = last.rpartition(":")[2]
        if re.fullmatch(_TAG, tag) is None:
            return f"bad tag {tag!r}"
        rest = rest[: len(rest) - len(tag) - 1]
    repo = rest.split("/", 1)[1] if "/" in rest and re.fullmatch(_DOMAIN, rest.split("/", 1)[0]) else rest
    if any(c.isupper() for c in repo):
        return "repository name must be lowercase"
    return f"repository {repo!r} must be lowercase letters and digits with '.', '_', '__' or '-' between them"


def parse_image_ref(text: str) -> dict[str, str | None]:
    """Split ``[host[:port]/]name[:tag][@digest]`` (the OCI distribution grammar, as the Rust ``docker_reference``
    crate ZLayer uses) into ``registry`` (None when the name has no host part), ``repository``, ``tag`` and
    ``digest``; no defaults are filled in. Raises ``ValueError`` saying what is wrong. The one parser of image
    references: :func:`zlayer.images.parse_reference` adds Docker Hub's defaults on top of it."""
    m = _REF.match(text)
    if m is None or text != text.strip():
        raise ValueError(f"invalid image reference '{text}': {_ref_problem(text)}")
    name = m.group("name")
    if len(name) > 255:
        raise ValueError(f"invalid image reference '{text}': repository name must not be more than 255 characters")
    domain = m.group("domain")
    first = name.split("/", 1)[0]
    if domain is not None and not ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if _COMPONENT_RE.match(first) is None:
            raise ValueError(f"invalid image reference '{text}': repository name must be lowercase")
        domain = None
    return {
        "registry": domain,
        "repository": name if domain is None else name[len(domain) + 1 :],
        "tag": m.group("tag"),
        "digest": m.group("digest"),
    }
