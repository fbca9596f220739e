"""Cron schedules as ZLayer's spec defines them: ``sec min hour day-of-month month day-of-week [year]``, in UTC.

Fields take ``*``, numbers, ranges ``a-b``, steps ``*/n`` and ``a-b/n``, lists ``a,b`` and English names (``JAN``,
``MON``). Day of week counts ``1`` = Sunday to ``7`` = Saturday, as the Rust ``cron`` crate ZLayer uses; day of month
and day of week must both match.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from zlayer.errors import SpecError

_MONTHS = {
    m: i + 1 for i, m in enumerate(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"])
}
_DAYS = {d: i + 1 for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("seconds", 0, 59, {}),
    ("minutes", 0, 59, {}),
    ("hours", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 1, 7, _DAYS),
    ("year", 1970, 2099, {}),
)


def _value(text: str, names: dict[str, int], lo: int, hi: int, what: str, expr: str) -> int:
    key = text.upper()[:3]
    if text.isdigit():
        v = int(text)
    elif key in names and text.isalpha():
        v = names[key]
    else:
        raise SpecError(f"invalid cron schedule {expr!r}: {text!r} is not a valid {what}")
    if not lo <= v <= hi:
        raise SpecError(f"invalid cron schedule {expr!r}: {what} {v} is outside {lo}-{hi}")
    return v


def _field(text: str, lo: int, hi: int, names: dict[str, int], what: str, expr: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        base, _, step_s = part.partition("/")
        step = 1
        if step_s:
            if not step_s.isdigit() or int(step_s) == 0:
                raise SpecError(f"invalid cron schedule {expr!r}: bad step {step_s!r} in the {what} field")
            step = int(step_s)
        if base in ("*", "?"):
            a, b = lo, hi
        elif "-" in base:
            x, _, y = base.partition("-")
            a, b = _value(x, names, lo, hi, what, expr), _value(y, names, lo, hi, what, expr)
            if a > b:
                raise SpecError(f"invalid cron schedule {expr!r}: range {base} in the {what} field runs backwards")
        else:
            a = _value(base, names, lo, hi, what, expr)
            b = hi if step_s else a
        out.update(range(a, b + 1, step))
    return frozenset(out)


@dataclass(frozen=True)
class CronSchedule:
    expr: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    years: frozenset[int]

    @classmethod
    def parse(cls, expr: str) -> CronSchedule:
        """Parse a 6- or 7-field schedule; errors say which field is wrong."""
        parts = expr.split()
        if len(parts) not in (6, 7):
            raise SpecError(
                f"invalid cron schedule {expr!r}: expected 6 or 7 fields (sec min hour day month weekday [year]),"
                f" got {len(parts)}"
            )
        if len(parts) == 6:
            parts.append("*")
        sets = [_field(p, lo, hi, names, what, expr) for p, (what, lo, hi, names) in zip(parts, _FIELDS, strict=True)]
        return cls(expr, *sets)

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


__all__ = ["CronSchedule"]
