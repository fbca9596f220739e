"""Scalar formats of the deployment spec: durations (humantime), memory sizes, cron schedules, image references.

Each parser raises ``ValueError`` with a message a person can act on; the loader attaches the position and the
field path. No heavy imports here: ``zlayer validate`` pays only for what it uses.
"""

from __future__ import annotations

import re

__all__ = [
    "format_duration",
    "memory_to_bytes",
    "parse_cron",
    "parse_duration",
    "parse_image_ref",
    "parse_memory",
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
        total += int(m.group(1)) * _UNITS[unit]
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
_MEM_MULT = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def parse_memory(text: str) -> int:
    """``256Mi`` → bytes. Binary suffix required (Ki, Mi, Gi, Ti); the number must be a positive integer."""
    m = _MEM.match(text)
    if m is None:
        if not text.endswith(tuple(_MEM_MULT)):
            raise ValueError(f"invalid memory format: '{text}' (use Ki, Mi, Gi, or Ti suffix)")
        raise ValueError(f"invalid memory format: '{text}'")
    n = int(m.group(1))
    if n <= 0 or n >= 2**64:
        raise ValueError(f"invalid memory format: '{text}'")
    return n * _MEM_MULT[m.group(2)]


def memory_to_bytes(text: str) -> int:
    """Alias of :func:`parse_memory` (ZLayer's ``memory_string_to_bytes``)."""
    return parse_memory(text)


# --- cron (Rust `cron` crate: sec min hour dom month dow [year]) ---------------------------------------------------

_MONTHS = {
    m: i + 1 for i, m in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"])
}
_DAYS = {d: i + 1 for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
_CRON_FIELDS = (
    ("seconds", 0, 59, None),
    ("minutes", 0, 59, None),
    ("hours", 0, 23, None),
    ("days of month", 1, 31, None),
    ("months", 1, 12, _MONTHS),
    ("days of week", 1, 7, _DAYS),
    ("years", 1970, 2100, None),
)


def _cron_value(tok: str, name: str, lo: int, hi: int, names: dict[str, int] | None) -> int:
    if tok.isdigit():
        v = int(tok)
    else:
        key = tok.upper()
        if names is not None:
            for full, num in names.items():
                if key == full or (len(key) > 3 and full.startswith(key[:3]) and _full_name_ok(key)):
                    v = num
                    break
            else:
                raise ValueError(f"invalid {name} value '{tok}'")
        else:
            raise ValueError(f"invalid {name} value '{tok}'")
    if not lo <= v <= hi:
        raise ValueError(f"{name} value {v} out of range {lo}-{hi}")
    return v


_FULL_NAMES = {
    "JANUARY",
    "FEBRUARY",
    "MARCH",
    "APRIL",
    "JUNE",
    "JULY",
    "AUGUST",
    "SEPTEMBER",
    "OCTOBER",
    "NOVEMBER",
    "DECEMBER",
    "SUNDAY",
    "MONDAY",
    "TUESDAY",
    "WEDNESDAY",
    "THURSDAY",
    "FRIDAY",
    "SATURDAY",
}


def _full_name_ok(key: str) -> bool:
    return key in _FULL_NAMES


def _cron_field(text: str, name: str, lo: int, hi: int, names: dict[str, int] | None) -> None:
    for part in text.split(","):
        if not part:
            raise ValueError(f"empty item in {name} field '{text}'")
        base, slash, step = part.partition("/")
        if slash and (not step.isdigit() or int(step) == 0):
            raise ValueError(f"invalid step '{step}' in {name} field")
        if base in ("*", "?"):
            continue
        a, dash, b = base.partition("-")
        first = _cron_value(a, name, lo, hi, names)
        if dash:
            last = _cron_value(b, name, lo, hi, names)
            if last < first:
                raise ValueError(f"invalid range {base} in {name} field")


def parse_cron(text: str) -> None:
    """Check a cron schedule the way the Rust ``cron`` crate does: 6 or 7 fields, seconds first, names allowed."""
    if text.strip() in ("@yearly", "@monthly", "@weekly", "@daily", "@hourly"):
        return
    fields = text.split()
    if len(fields) not in (6, 7):
        raise ValueError(
            f"expected 6 or 7 fields (sec min hour day-of-month month day-of-week [year]), found {len(fields)}"
        )
    for tok, (name, lo, hi, names) in zip(fields, _CRON_FIELDS, strict=False):
        _cron_field(tok, name, lo, hi, names)


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


def parse_image_ref(text: str) -> dict[str, str | None]:
    """Split ``[host[:port]/]name[:tag][@digest]``; raises ``ValueError`` for an invalid OCI reference."""
    if not text:
        raise ValueError("invalid image reference '': repository name must have at least one component")
    m = _REF.match(text)
    if m is None:
        if any(c.isupper() for c in text.split("@")[0].split(":")[0].rsplit("/", 1)[-1]):
            raise ValueError(f"invalid image reference '{text}': repository name must be lowercase")
        raise ValueError(f"invalid image reference '{text}': invalid reference format")
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
