"""Typed parsing of JSON that comes from outside the running process (a bundle, a file read back
from disk): pydantic checks every field's type before any of it is used."""

from __future__ import annotations

import functools
from collections.abc import Hashable
from typing import Any, TypeVar, cast

from pydantic import TypeAdapter, ValidationError

from core.errors import InvalidInputError

T = TypeVar("T")


@functools.cache
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def parse(kind: type[T], data: Any, what: str) -> T:
    """`data` as a `kind` (a dataclass or pydantic model), or InvalidInputError naming the first
    field that is wrong."""
    try:
        return cast(T, _adapter(cast(Hashable, kind)).validate_python(data))
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the top level"
        raise InvalidInputError(
            f"{what} cannot be read: '{where[:80]}' {first['msg'].lower()[:120]}."
        ) from None
