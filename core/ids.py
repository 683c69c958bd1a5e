"""Identifiers that become file names: made here, and checked here before any path is built."""

from __future__ import annotations

import re
import uuid

from core.errors import InvalidInputError

# Lower-case letters and digits only: no separator, dot or drive can hide in one.
ID_PATTERN = r"^[0-9a-z]{1,64}$"
_ID = re.compile(ID_PATTERN)


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def is_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def check_id(value: object, what: str = "item") -> str:
    """`value` when it is a safe identifier; InvalidInputError otherwise."""
    if not is_id(value):
        raise InvalidInputError(f"That is not a saved {what}: its identifier is not valid.")
    return str(value)
