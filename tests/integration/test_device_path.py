"""The device path of every model-running stage, without a GPU (tests/gpu/ has the GPU run).

Each stage of the tiny GPT-2 runs twice from the same inputs: with ``extract.device: cpu``,
and with ``extract.device: cuda`` resolved to the fake device of ``fake_device`` (tensors that
compute on the CPU but may not meet CPU tensors, as CUDA tensors may not). The second run must
write exactly the same numbers (it runs the same CPU kernels), raise nothing (every tensor the
model meets was moved to the device), and do its products on the device (the CPU does only the
basis solves, on matrices of a layer's width).
"""

import numpy as np
import pytest
import torch

import lm_stages
from fake_device import DEVICE, DeviceMismatch, fake_device
from interaction_basis import storage
from interaction_basis.stages import common

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The LM, the CPU run of every stage, and where the fake-device run writes."""
    root = tmp_path_factory.mktemp("device_path")
    lm = lm_stages.write_gpt2(root, n_ctx=12)
    cpu = lm_stages.paths(root / "cpu")
    settings = lm_stages.settings(lm, "cpu")
    for _, stage in lm_stages.STAGES:
        stage(lm, settings, cpu, cpu)
    return lm, cpu, lm_stages.paths(root / "device")


@pytest.fixture
def fake_resolver(monkeypatch):
    """``resolve_device`` of every stage module: ``cuda`` is the fake device; the settings
    each stage asked for are recorded."""
    asked: list[str] = []

    def resolve(setting: str, kind: str) -> torch.device:
        asked.append(setting)
        return DEVICE if setting == "cuda" else common.resolve_device(setting, kind)

    for module in lm_stages.STAGE_MODULES:
        monkeypatch.setattr(module, "resolve_device", resolve)
    return asked


def _assert_same(expected: dict, got: dict, stage: str) -> None:
    assert expected.keys() == got.keys()
    for key, want in expected.items():
        have = got[key]
        if isinstance(want, torch.Tensor):
            assert type(have) is torch.Tensor and have.device.type == "cpu", key
            assert torch.equal(have, want), f"{stage}: {key} differs on the device"
        elif isinstance(want, np.ndarray):
            np.testing.assert_array_equal(have, want, err_msg=f"{stage}: {key}")
        else:
            assert have == want, f"{stage}: {key} differs on the device"


@pytest.mark.parametrize("stage", [name for name, _ in lm_stages.STAGES])
def test_stage_runs_on_the_device_with_the_cpu_results(runs, fake_resolver, stage):
    lm, cpu, device_out = runs
    run = dict(lm_stages.STAGES)[stage]
    with fake_device() as ledger:
        run(lm, lm_stages.settings(lm, "cuda"), device_out, cpu)
    assert fake_resolver and set(fake_resolver) == {"cuda"}  # every job read the setting
    read = lm_stages.READERS[stage]
    _assert_same(read(cpu), read(device_out), stage)
    assert ledger.device, f"{stage}: no product ran on the device"
    # A CPU product with an operand longer than the widest node layer reads activations.
    widest = max(len(s.mean) for s in storage.read_stats(cpu.acts).values())
    assert lm_stages.settings(lm, "cpu").extract.batch_size * lm.n_ctx > widest
    too_big = [s for s in ledger.cpu_shapes if max(max(shape) for shape in s) > widest]
    assert not too_big, f"{stage}: products on activations ran on the CPU: {too_big[:3]}"
    if stage != "bases":  # the basis solves are the only work on the CPU
        assert not ledger.cpu, f"{stage}: products on the CPU: {dict(ledger.cpu)}"


def test_cuda_without_a_gpu_stops_every_stage_naming_the_setting(runs, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lm, cpu, _ = runs
    settings = lm_stages.settings(lm, "cuda")
    out = lm_stages.paths(tmp_path)
    for name, stage in lm_stages.STAGES:
        with pytest.raises(ValueError, match="extract.device is 'cuda' but torch sees no CUDA"):
            stage(lm, settings, out, cpu)
        assert not any(p.exists() for p in tmp_path.rglob("*.zarr")), name


def test_the_fake_device_catches_a_missing_move():
    weights = torch.randn(3, 2, dtype=torch.float64)
    inputs = torch.randn(4, 3, dtype=torch.float64)
    expected = inputs @ weights
    with fake_device() as ledger:
        x = inputs.to(DEVICE)
        with pytest.raises(DeviceMismatch, match="a .to\\(device\\) is missing"):
            _ = x @ weights
        on = weights.to(x.device)
        y = x @ on + torch.zeros(2, dtype=x.dtype, device=x.device)
        assert y.device == DEVICE and torch.equal(y.cpu(), expected)
        with pytest.raises(TypeError):
            y.numpy()  # NumPy reads only what came back with .cpu()
        assert y[torch.tensor([0, 2])].shape == (2, 2)  # indices may stay on the CPU
        assert ledger.device and not ledger.cpu
