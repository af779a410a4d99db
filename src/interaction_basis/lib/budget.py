"""The working-memory budget of one job: how many bytes the largest intermediates of one call
(a chunk of pair terms, a block of Jacobian rows) may take (method §A.8).

A stage sets the budget once for its work (:func:`limit`); the closed forms and the generic path
read it (:func:`budget_bytes`) and chunk over positions, heads or output features to stay within
it. Chunking changes only the order of sums, never what is summed.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

#: The budget where no stage has set one (a library call, a test): 2 GiB.
DEFAULT_BYTES = 2 * 2**30

_BUDGET: ContextVar[int | None] = ContextVar("interaction_basis_memory_budget", default=None)


def budget_bytes() -> int:
    """The bytes the current call's largest intermediates may take."""
    value = _BUDGET.get()
    return DEFAULT_BYTES if value is None else value


@contextmanager
def limit(n_bytes: int) -> Iterator[None]:
    """Within the block, :func:`budget_bytes` is ``n_bytes``."""
    if n_bytes < 1:
        raise ValueError(f"A memory budget must be positive; got {n_bytes} bytes.")
    token = _BUDGET.set(int(n_bytes))
    try:
        yield
    finally:
        _BUDGET.reset(token)
