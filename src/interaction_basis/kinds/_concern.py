"""Looking up a kind's module of one concern, with the concern's defaults filled in."""

import importlib
import importlib.util
from types import SimpleNamespace
from typing import Any

from interaction_basis.kinds.registry import KINDS


def implementation(kind: str, concern: str, members: tuple[str, ...], defaults: Any = None) -> Any:
    """``kinds/<kind>/<concern>.py`` as a namespace of ``members``; a member the module lacks is
    taken from ``defaults`` (a module or namespace), and one missing from both is an error."""
    if kind not in KINDS:
        raise ValueError(f"Unknown model kind {kind!r}; supported: {', '.join(KINDS)}.")
    name = f"interaction_basis.kinds.{kind}.{concern}"
    module = importlib.import_module(name) if importlib.util.find_spec(name) else None
    found, missing = {}, []
    for member in members:
        if hasattr(module, member):
            found[member] = getattr(module, member)
        elif hasattr(defaults, member):
            found[member] = getattr(defaults, member)
        else:
            missing.append(member)
    if missing:
        raise TypeError(f"{name} does not implement the kinds' {concern} concern: {missing}.")
    return SimpleNamespace(**found)
