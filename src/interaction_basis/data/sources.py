"""Which model and dataset sources are local paths (light: the planner reads it too)."""

import os


def looks_like_path(source: str) -> bool:
    """Whether ``source`` names a local path rather than a hub id (``org/name``): absolute,
    ``./``, ``../``, ``~``, more than one ``/``, or a backslash. Such a source is never sent to
    the hub, so a missing one is an error."""
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or source.count("/") > 1
        or "\\" in source
    )
