"""Errors whose messages are written for the person using the studio, not for a developer."""


class StudioError(Exception):
    """Base class: `str(error)` is a complete, plain sentence that says what to do."""


class ModelNotAvailableError(StudioError):
    """The configured model cannot be found or loaded on this machine."""


class InvalidInputError(StudioError):
    """Something the user typed or uploaded cannot be used as it is."""


class GenerationError(StudioError):
    """The model could not finish an answer, for a reason the user can act on."""


class KnowledgeBaseError(StudioError):
    """A knowledge base cannot be created, opened or changed as asked."""


class DocumentError(StudioError):
    """One uploaded document cannot be added; the others carry on."""


class ReadOnlyError(StudioError):
    """A change was asked of a studio that presents a demo read-only."""


def is_disk_full(error: BaseException) -> bool:
    """An OSError for a full disk or quota, wherever it was raised (Chroma words it its own way)."""
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error).lower()
    return "no space left" in text or "disk is full" in text  # SQLite: "database or disk is full"


class BusyError(GenerationError):
    """Too many answers are already waiting for the model: ask again in a moment."""
