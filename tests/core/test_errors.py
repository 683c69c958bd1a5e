"""Errors in the user's words, and telling a full disk from other failures."""

import errno
import sqlite3

import pytest

from core import errors


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EDQUOT, "Disk quota exceeded"),
        sqlite3.OperationalError("database or disk is full"),
        RuntimeError("Chroma: no space left while writing"),
    ],
)
def test_a_full_disk_is_recognised_however_it_is_worded(error: BaseException) -> None:
    assert errors.is_disk_full(error)


def test_other_failures_are_not_a_full_disk() -> None:
    assert not errors.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not errors.is_disk_full(ValueError("bad value"))


def test_every_studio_error_is_one_kind_the_pages_catch() -> None:
    kinds = [
        errors.ModelNotAvailableError,
        errors.InvalidInputError,
        errors.GenerationError,
        errors.KnowledgeBaseError,
        errors.DocumentError,
        errors.ReadOnlyError,
    ]
    assert all(issubclass(kind, errors.StudioError) for kind in kinds)
    assert not issubclass(errors.StudioError, ValueError)  # never caught as a bad value
