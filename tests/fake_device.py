"""A second device for CPU-only tests: tensors "on the device" compute on the CPU, report the
device ``meta``, and may not meet a CPU tensor in an operation, as CUDA tensors may not.

Run with the stages' device resolved to :data:`DEVICE`, a stage computes exactly what it
computes on the CPU (the same kernels), while every tensor that reaches the model without its
``.to(device)`` raises :class:`DeviceMismatch` naming the operation, as it would on a GPU. The
rules follow CUDA's: a CPU tensor of zero dimensions (a scalar) may join a device operation,
index tensors may be on the CPU, copies (``.to``, ``.cpu()``, ``copy_``) cross freely, and a
device tensor must come back with ``.cpu()`` before NumPy reads it. :class:`Ledger` counts the
matrix products on each side, so that a test can also check that the work runs on the device
(a stage that never moves its model passes the mismatch check trivially).

``meta`` is only the label the tensors carry: torch moves tensors to it without a backend
(``cuda`` or ``xpu`` would try to initialise one) and it cannot be mistaken for the CPU.
"""

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

DEVICE = torch.device("meta")

aten = torch.ops.aten
#: Operations that move data between devices.
COPIES = {aten._to_copy.default, aten.copy_.default, aten.to.dtype_layout, aten.to.device}
#: Operations whose index tensors may stay on the CPU (CUDA moves them).
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default}
INDEXING |= {aten._index_put_impl_.default}
#: The matrix products, counted by the ledger (multiply-adds).
PRODUCTS = {
    aten.mm.default,
    aten.bmm.default,
    aten.addmm.default,
    aten.baddbmm.default,
    aten.dot.default,
    aten.mv.default,
}


class DeviceMismatch(RuntimeError):
    """A device tensor met a CPU tensor: on a GPU this operation fails."""


class OnDevice(torch.Tensor):
    """A CPU tensor (``inner``) that reports :data:`DEVICE`."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> "OnDevice":
        return torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined]
            cls,
            inner.shape,
            strides=inner.stride(),
            dtype=inner.dtype,
            device=DEVICE,
            requires_grad=inner.requires_grad,
        )

    def __init__(self, inner: torch.Tensor):
        self.inner = inner

    def __repr__(self) -> str:
        return f"OnDevice({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on a fake-device tensor outside fake_device()")


class Ledger:
    """Multiply-adds of the matrix products run on the device and on the CPU, by operation."""

    def __init__(self) -> None:
        self.device: Counter = Counter()
        self.cpu: Counter = Counter()
        #: The operand shapes of every product on the CPU.
        self.cpu_shapes: list[tuple[tuple[int, ...], ...]] = []

    def add(self, func, args, on_device: bool) -> None:
        shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
        # The product's multiply-adds: the left factor's size times the right's columns.
        a, b = shapes[-2], shapes[-1]
        flops = 1
        for n in (*a, b[-1] if len(b) > 1 else 1):
            flops *= n
        (self.device if on_device else self.cpu)[str(func)] += flops
        if not on_device:
            self.cpu_shapes.append(shapes)

    def share_on_device(self) -> float:
        total = sum(self.device.values()) + sum(self.cpu.values())
        return sum(self.device.values()) / total if total else 0.0


_PYTHON_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.Python) | torch._C.DispatchKeySet(
    torch._C.DispatchKey.PythonTLSSnapshot
)


def _map(fn, x):
    """``fn`` on the tensors of an operation's argument or result (a tensor, or a list or
    tuple of them, possibly with None): faster than torch's pytree, which this runs per op."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, list | tuple) and any(isinstance(t, torch.Tensor) for t in x):
        return type(x)(fn(t) if isinstance(t, torch.Tensor) else t for t in x)
    return x


def _is_device(device) -> bool:
    return device is not None and torch.device(device) == DEVICE


class _Mode(TorchDispatchMode):
    def __init__(self, ledger: Ledger):
        super().__init__()
        self.ledger = ledger

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        on_device, on_cpu = [], []

        def unwrap(x):
            if isinstance(x, OnDevice):
                on_device.append(x)
                return x.inner
            if isinstance(x, torch.Tensor) and x.device == DEVICE:
                raise RuntimeError(f"{func}: a real meta tensor; fake_device() missed its maker")
            if isinstance(x, torch.Tensor) and x.dim() > 0:
                on_cpu.append(x)
            return x

        plain_args = tuple(_map(unwrap, a) for a in args)
        if func in INDEXING:  # only the values (not the indices) must share the device
            on_cpu = [t for t in on_cpu if t.dtype not in (torch.long, torch.int, torch.bool)]
        plain_kwargs = {k: _map(unwrap, v) for k, v in kwargs.items()}
        target = plain_kwargs.get("device")
        to_device = _is_device(target)
        if to_device:
            plain_kwargs["device"] = torch.device("cpu")
            gen = plain_kwargs.get("generator")
            if gen is not None and gen.device.type == "cpu":
                raise DeviceMismatch(f"{func}: a CPU generator draws on the device")
        if on_device and on_cpu and func not in COPIES:
            shapes = [tuple(t.shape) for t in on_cpu]
            raise DeviceMismatch(
                f"{func}: device tensors meet CPU tensors of shapes {shapes}: a .to(device) "
                "is missing"
            )
        if func in PRODUCTS:
            self.ledger.add(func, plain_args, bool(on_device))
        out = func(*plain_args, **plain_kwargs)
        first = args[0] if args else None
        if func._schema.is_mutable and isinstance(first, torch.Tensor):
            # In place: the tensor written to keeps its device (and its identity).
            inner = first.inner if isinstance(first, OnDevice) else first
            if isinstance(first, OnDevice) and (
                first.shape != inner.shape or first.stride() != inner.stride()
            ):
                # The shape changed (the squeeze_ of matmul's decomposition): the same op on
                # the wrapper itself, run by the meta kernels (shapes only).
                with torch._C._ExcludeDispatchKeyGuard(_PYTHON_KEYS):
                    func(first, *args[1:], **kwargs)
            return first
        leaves_device = target is not None and not to_device
        wrap = to_device or (bool(on_device) and not leaves_device)
        return _map(OnDevice, out) if wrap else out


#: Constructors from data, which move to their device below the dispatcher: made on the CPU,
#: then moved through the dispatcher.
FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray}


class _Constructors(TorchFunctionMode):
    """Constructors from data, and NumPy and list conversions, as on a GPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in FROM_DATA and _is_device(kwargs.get("device")):
            del kwargs["device"]
            return func(*args, **kwargs).to(DEVICE)
        if func is torch.Tensor.numpy and isinstance(args[0], OnDevice):
            raise TypeError(  # CUDA's words
                "can't convert a device tensor to numpy. Use Tensor.cpu() to copy the tensor "
                "to host memory first."
            )
        if func is torch.Tensor.tolist and isinstance(args[0], OnDevice):
            return args[0].inner.tolist()  # as CUDA tensors do
        return func(*args, **kwargs)


@contextmanager
def fake_device() -> Iterator[Ledger]:
    """Tensors moved to :data:`DEVICE` inside the block are checked as described above."""
    ledger = Ledger()
    with _Constructors(), _Mode(ledger):
        yield ledger
