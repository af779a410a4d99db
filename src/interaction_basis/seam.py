"""The one seam between a Snakemake rule and its stage function.

A rule's script is two lines: ``run_stage(snakemake, <stage function>)``. The stage function's
parameters are filled by name from the rule's ``output``, ``input``, ``params`` and
``wildcards`` (and ``threads``), converted by their annotations: a pydantic config class is
validated from the params dict, ``list[str]`` takes every file of a named input, ``str | None``
is None for an empty input (a rule's optional input), ``int`` parses a wildcard. Inputs without a
parameter (the code inputs) are not passed.
"""

import inspect
import logging
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from interaction_basis.stages.common import set_threads
from interaction_basis.storage import CannotWriteError

_SOURCES = ("output", "input", "params", "wildcards")


def run_stage(smk: Any, stage: Callable[..., None]) -> None:
    """Log into the rule's log (with progress and uncaught errors), set the threads, and call
    ``stage`` with the rule's files and settings."""
    try:
        logging.basicConfig(
            filename=smk.log[0], level=logging.INFO, format="%(asctime)s %(message)s"
        )
    except OSError as err:  # the log cannot be written (full disk, read-only folder)
        sys.exit(str(CannotWriteError(smk.log[0], err)))
    set_threads(smk.threads)
    stage(**stage_arguments(smk, stage))


def stage_arguments(smk: Any, stage: Callable[..., None]) -> dict[str, Any]:
    """``stage``'s keyword arguments from the rule's named inputs, outputs, params and
    wildcards; a TypeError names a parameter the rule does not provide, or provides twice."""
    hints = typing.get_type_hints(stage)
    kwargs = {}
    for name, param in inspect.signature(stage).parameters.items():
        if name == "threads":
            kwargs[name] = int(smk.threads)
            continue
        found = [where for where in _SOURCES if name in getattr(smk, where).keys()]
        if len(found) > 1:
            raise TypeError(f"rule {smk.rule}: {name!r} is in both {found[0]} and {found[1]}.")
        if not found:
            if param.default is inspect.Parameter.empty:
                raise TypeError(
                    f"rule {smk.rule} has no output, input, param or wildcard named {name!r}, "
                    f"which {stage.__module__}.{stage.__name__} needs."
                )
            continue
        kwargs[name] = _convert(getattr(getattr(smk, found[0]), name), hints.get(name))
    return kwargs


def _convert(value: Any, annotation: Any) -> Any:
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(annotation)
    if optional:
        if value is None or (not isinstance(value, str) and len(value) == 0):
            return None
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.model_validate(value)
    if typing.get_origin(annotation) is list:
        return [str(v) for v in value] if not isinstance(value, str) else [value]
    if annotation is int:
        return int(value)
    if annotation is str:
        return str(value)
    return value
