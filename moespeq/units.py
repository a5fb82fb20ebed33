"""Parsing and printing of byte sizes (`40GiB`, `40GB`, `4e10`)."""

import re

from moespeq.errors import UserError

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int | float, what: str = "size") -> int:
    """Bytes from `40GiB`, `40GB`, `512MiB`, `4e10` or a number."""
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        match = _SIZE.match(text)
        if match is None:
            raise UserError(f"{what} {text!r} is not a size: write it like 40GiB, 40GB or 4e10")
        value, unit = float(match.group(1)), match.group(2).lower()
    if unit not in _UNITS:
        raise UserError(f"{what} {text!r} has unknown unit {unit!r}: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")
    if value <= 0:
        raise UserError(f"{what} {text!r} must be positive")
    return int(round(value * _UNITS[unit]))


def format_bytes(n_bytes: float) -> str:
    """`12.34 GiB` style, for tables."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n_bytes) >= size:
            return f"{n_bytes / size:.2f} {unit}"
    return f"{n_bytes:.0f} B"
