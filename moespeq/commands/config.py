"""Building validated config objects from parsed flags: a ValueError from a config is the user's to fix."""

from typing import Any, TypeVar

from moespeq.errors import UserError

T = TypeVar("T")


def make_config(cls: type[T], **fields: Any) -> T:
    """cls(**fields), with its __post_init__ ValueError turned into a one-line UserError."""
    try:
        return cls(**fields)
    except ValueError as exc:
        raise UserError(str(exc)) from None
