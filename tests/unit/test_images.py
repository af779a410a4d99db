"""Image datasets from tiny files written in the real formats (no network, no downloads)."""

import gzip
import io
import pickle
import struct
import tarfile
from functools import partial

import numpy as np
import pytest
import torch

from interaction_basis.data.images import (
    CIFAR10_ARCHIVE,
    CIFAR10_CLASSES,
    CIFAR10_URL,
    MNIST_FILES,
    compute_md5,
    compute_split,
    load_cifar10_archive,
    load_digits_dataset,
    load_hub_image_dataset,
    load_mnist_idx,
)

# ---- CIFAR-10 python format -------------------------------------------------------------

LABEL_NAMES = [name.encode() for name in CIFAR10_CLASSES]


def _str(b: bytes) -> bytes:
    """A Python 2 ``str``: SHORT_BINSTRING or BINSTRING."""
    if len(b) < 256:
        return b"U" + bytes([len(b)]) + b
    return b"T" + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:
    if 0 <= i < 256:
        return b"K" + bytes([i])
    if 0 <= i < 65536:
        return b"M" + struct.pack("<H", i)
    return b"J" + struct.pack("<i", i)


def _obj(v) -> bytes:
    if isinstance(v, bytes):
        return _str(v)
    if isinstance(v, int):
        return _int(v)
    if isinstance(v, list):
        return b"](" + b"".join(_obj(x) for x in v) + b"e"
    if isinstance(v, np.ndarray):
        shape = b"(" + b"".join(_int(s) for s in v.shape) + b"t"
        return (
            b"cnumpy.core.multiarray\n_reconstruct\n"
            + b"cnumpy\nndarray\n"
            + _int(0)
            + b"\x85"
            + _str(b"b")
            + b"\x87R("
            + _int(1)
            + shape
            + b"cnumpy\ndtype\n"
            + _str(b"u1")
            + _int(0)
            + _int(1)
            + b"\x87R"
            + b"("
            + _int(3)
            + _str(b"|")
            + b"NNN"
            + _int(-1)
            + _int(-1)
            + _int(0)
            + b"tb"
            + b"\x89"
            + _str(v.tobytes())
            + b"tb"
        )
    raise TypeError(type(v))


def py2_pickle(d: dict) -> bytes:
    """A dict pickled the way Python 2's cPickle (protocol 2) wrote the original batches:
    byte strings as ``str`` opcodes and uint8 arrays through ``numpy.core.multiarray``."""
    return b"\x80\x02}(" + b"".join(_obj(k) + _obj(v) for k, v in d.items()) + b"u."


def test_py2_pickle_helper_matches_the_stdlib():
    d = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"labels": [1, 2, 300]}
    out = pickle.loads(py2_pickle(d), encoding="bytes")
    assert np.array_equal(out[b"data"], d[b"data"]) and out[b"labels"] == [1, 2, 300]


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_cifar_archive(path, n_train=3, n_test=4, seed=0, skip=(), extra=None, py2=True):
    """A tiny ``cifar-10-python.tar.gz``: pickled batch dicts under ``cifar-10-batches-py/``,
    as Python 2 wrote them (``py2``) or as Python 3 re-pickles them (bytes keys, protocol 2).

    Returns:
        (x_train, y_train, x_test, y_test) as written, uint8 (N, 3072) and int labels.
    """
    rng = np.random.default_rng(seed)
    batches = {}
    for i in range(1, 6):
        batches[f"data_batch_{i}"] = (
            rng.integers(0, 256, (n_train, 3072), dtype=np.uint8),
            rng.integers(0, 10, n_train).tolist(),
        )
    batches["test_batch"] = (
        rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
        rng.integers(0, 10, n_test).tolist(),
    )
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(_dir_info("cifar-10-batches-py"))
        dumps = py2_pickle if py2 else partial(pickle.dumps, protocol=2)
        meta = {b"num_cases_per_batch": n_train, b"label_names": LABEL_NAMES, b"num_vis": 3072}
        _add(tar, "cifar-10-batches-py/batches.meta", dumps(meta))
        for name, (data, labels) in batches.items():
            if name in skip:
                continue
            d = {
                b"batch_label": name.encode(),
                b"labels": labels,
                b"data": data,
                b"filenames": [f"img_{j}.png".encode() for j in range(len(labels))],
            }
            _add(tar, f"cifar-10-batches-py/{name}", dumps(d))
        _add(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
        for name, payload in (extra or {}).items():
            _add(tar, f"cifar-10-batches-py/{name}", payload)
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    return (
        np.concatenate([d for d, _ in train]),
        np.concatenate([lab for _, lab in train]),
        batches["test_batch"][0],
        np.asarray(batches["test_batch"][1]),
    )


def _dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info


@pytest.fixture(params=[True, False], ids=["py2_pickles", "py3_pickles"])
def cifar(tmp_path, request):
    path = tmp_path / CIFAR10_ARCHIVE
    return path, write_cifar_archive(path, py2=request.param)


def test_cifar_archive_loads_in_channel_first_order(cifar):
    path, (x_train, y_train, x_test, y_test) = cifar
    ds = load_cifar10_archive(path.parent, md5=None)
    assert ds.x_train.shape == (15, 3072) and ds.x_test.shape == (4, 3072)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.image_shape == (3, 32, 32) and ds.n_features == 3072
    assert ds.class_names == CIFAR10_CLASSES and ds.n_classes == 10
    # ToTensor() semantics: uint8 / 255 in float32, the stored (R, G, B planes) order kept.
    torch.testing.assert_close(ds.x_train, torch.from_numpy(x_train).float() / 255, rtol=0, atol=0)
    torch.testing.assert_close(ds.x_test, torch.from_numpy(x_test).float() / 255, rtol=0, atol=0)
    assert ds.y_train.tolist() == y_train.tolist() and ds.y_test.tolist() == y_test.tolist()
    assert ds.x_train.min() >= 0 and ds.x_train.max() <= 1
    # The archive itself works as root too.
    assert torch.equal(load_cifar10_archive(path, md5=None).x_test, ds.x_test)


def test_cifar_md5_is_checked(cifar):
    path, _ = cifar
    ds = load_cifar10_archive(path, md5=compute_md5(path))
    assert compute_md5(path) in ds.source
    with pytest.raises(
        ValueError, match=rf"{path.name} has md5 .* expected c58f3010.*{CIFAR10_URL}"
    ):
        load_cifar10_archive(path)  # the default: the published md5 of the full archive


def test_cifar_standardize_uses_train_channel_statistics(cifar):
    path, (x_train, *_) = cifar
    ds = load_cifar10_archive(path, md5=None, normalize="standardize")
    per_channel = ds.x_train.reshape(-1, 3, 1024).double()
    torch.testing.assert_close(
        per_channel.mean((0, 2)), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(
        per_channel.std((0, 2), correction=0), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-5
    )
    raw = x_train.reshape(-1, 3, 1024) / 255.0
    np.testing.assert_allclose(ds.channel_mean, raw.mean((0, 2)), rtol=1e-6)
    raw_test = load_cifar10_archive(path, md5=None).x_test.reshape(-1, 3, 1024).double()
    mean, std = torch.tensor(ds.channel_mean)[:, None], torch.tensor(ds.channel_std)[:, None]
    expected = (raw_test - mean) / std
    torch.testing.assert_close(ds.x_test.reshape(-1, 3, 1024).double(), expected, rtol=0, atol=1e-5)


def test_missing_cifar_archive_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{CIFAR10_ARCHIVE}.*{CIFAR10_URL}"):
        load_cifar10_archive(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not_gzip"])
def test_corrupt_cifar_archive_raises_a_clear_error(cifar, damage):
    path, _ = cifar
    blob = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(
            blob[:100] + bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8))
        )
    else:
        path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(
        ValueError,
        match=rf"{path.name} .*truncated or corrupt.*download it again from {CIFAR10_URL}",
    ):
        load_cifar10_archive(path, md5=None)


def test_cifar_archive_with_a_missing_batch(tmp_path):
    path = tmp_path / CIFAR10_ARCHIVE
    write_cifar_archive(path, skip=("data_batch_4",))
    with pytest.raises(ValueError, match=r"missing member\(s\) cifar-10-batches-py/data_batch_4"):
        load_cifar10_archive(path, md5=None)


def test_cifar_batch_with_wrong_contents(tmp_path):
    path = tmp_path / CIFAR10_ARCHIVE
    bad = pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2)
    write_cifar_archive(path, skip=("test_batch",), extra={"test_batch": bad})
    with pytest.raises(ValueError, match=r"test_batch has data uint8 \(2, 100\)"):
        load_cifar10_archive(path, md5=None)


class _Exploit:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_cifar_pickles_cannot_run_code(tmp_path, capsys):
    path = tmp_path / CIFAR10_ARCHIVE
    evil = pickle.dumps({b"data": _Exploit(), b"labels": []}, protocol=2)
    write_cifar_archive(path, skip=("test_batch",), extra={"test_batch": evil})
    with pytest.raises(ValueError, match=r"refusing to load global (__builtin__|builtins)\.print"):
        load_cifar10_archive(path, md5=None)
    assert "unpickled code ran" not in capsys.readouterr().out


# ---- MNIST idx ---------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx format: magic 0x0000 08 ndim (uint8), big-endian dims, then the raw bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(folder, n_train=6, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        (folder / name).write_bytes(gzip.compress(idx_bytes(array)))
    return arrays


def test_mnist_idx_loads(tmp_path):
    arrays = write_mnist(tmp_path)
    ds = load_mnist_idx(tmp_path, md5=None)
    assert ds.x_train.shape == (6, 784) and ds.x_test.shape == (4, 784)
    assert ds.image_shape == (1, 28, 28) and ds.n_classes == 10
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte.gz"].reshape(6, -1)).float()
    torch.testing.assert_close(ds.x_train, expected / 255, rtol=0, atol=0)
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte.gz"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte.gz"].tolist()
    own = {name: compute_md5(tmp_path / name) for name in MNIST_FILES}
    assert torch.equal(load_mnist_idx(tmp_path, md5=own).x_test, ds.x_test)


def test_mnist_md5_is_checked_by_default(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"train-images-idx3-ubyte\.gz has md5 .* expected f68b3c2d",
    ):
        load_mnist_idx(tmp_path)


def test_missing_mnist_file(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\.gz.*ossci-datasets"):
        load_mnist_idx(tmp_path, md5=None)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("truncated_gzip", "truncated or corrupt"),
        ("not_gzip", "truncated or corrupt"),
        ("wrong_magic", r"magic 0x00000801, expected the idx magic 0x00000803"),
        ("short_payload", r"header promises \(6, 28, 28\) = 4704 bytes but the payload has 4000"),
    ],
)
def test_corrupt_mnist_file_raises_a_clear_error(tmp_path, damage, message):
    arrays = write_mnist(tmp_path)
    name = "train-images-idx3-ubyte.gz"
    path = tmp_path / name
    if damage == "truncated_gzip":
        blob = path.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "not_gzip":
        path.write_bytes(idx_bytes(arrays[name]))  # uncompressed
    elif damage == "wrong_magic":
        path.write_bytes(gzip.compress(idx_bytes(arrays["train-labels-idx1-ubyte.gz"])))
    else:
        path.write_bytes(gzip.compress(idx_bytes(arrays[name])[: 16 + 4000]))
    with pytest.raises(ValueError, match=rf"{name}.*{message}"):
        load_mnist_idx(tmp_path, md5=None)


def test_mnist_label_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    labels = np.zeros(5, np.uint8)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(ValueError, match="train split has 6 images but 5 labels"):
        load_mnist_idx(tmp_path, md5=None)


# ---- digits and the seeded split ---------------------------------------------------------


def test_digits_shapes_and_range():
    ds = load_digits_dataset()
    assert ds.x_train.shape == (1438, 64) and ds.x_test.shape == (359, 64)
    assert ds.y_train.shape == (1438,) and ds.y_test.shape == (359,)
    assert ds.image_shape == (1, 8, 8) and ds.n_classes == 10
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert set(ds.y_test.tolist()) == set(range(10))


def test_digits_split_is_seeded():
    a, b = load_digits_dataset(seed=3), load_digits_dataset(seed=3)
    c = load_digits_dataset(seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_test, c.y_test)
    assert load_digits_dataset(test_fraction=0.5).x_test.shape == (898, 64)


def test_compute_split_partitions_the_indices():
    train, test = compute_split(100, 0.25, seed=7)
    assert len(test) == 25 and len(train) == 75
    assert sorted(torch.cat([train, test]).tolist()) == list(range(100))
    again = compute_split(100, 0.25, seed=7)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    with pytest.raises(ValueError, match="test_fraction"):
        compute_split(100, 1.5)


def test_digits_standardize():
    ds = load_digits_dataset(normalize="standardize")
    assert abs(float(ds.x_train.double().mean())) < 1e-6
    assert float(ds.x_train.double().std(correction=0)) == pytest.approx(1.0, abs=1e-6)
    raw = load_digits_dataset()
    expected = (raw.x_test.double() - ds.channel_mean[0]) / ds.channel_std[0]
    torch.testing.assert_close(ds.x_test.double(), expected, rtol=0, atol=1e-5)
    with pytest.raises((ValueError, TypeError), match="normalize|minmax"):
        load_digits_dataset(normalize="minmax")


# ---- Hugging Face datasets: a local folder through the same loader -----------------------


def test_hub_loader_on_a_local_parquet_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rng = np.random.default_rng(0)
    names = ["cat", "dog", "eel"]
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=names)}
    )
    raw = {}
    for split, n in (("train", 5), ("test", 3)):
        pixels = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
        labels = rng.integers(0, 3, n).tolist()
        ds = datasets.Dataset.from_dict(
            {"img": [Image.fromarray(p) for p in pixels], "label": labels}, features=features
        )
        (tmp_path / "data").mkdir(exist_ok=True)
        ds.to_parquet(str(tmp_path / "data" / f"{split}-00000-of-00001.parquet"))
        raw[split] = (pixels, labels)
    out = load_hub_image_dataset(str(tmp_path), cache_dir=tmp_path / "cache")
    assert out.image_shape == (3, 4, 4) and out.class_names == tuple(names)
    pixels, labels = raw["train"]
    chw = torch.from_numpy(pixels.transpose(0, 3, 1, 2).reshape(5, -1)).float() / 255
    torch.testing.assert_close(out.x_train, chw, rtol=0, atol=0)
    assert out.y_train.tolist() == labels and out.y_test.tolist() == raw["test"][1]
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_hub_image_dataset(str(tmp_path), cache_dir=tmp_path / "cache", test_split="validation")


def test_hub_loader_offline_without_a_cache_names_the_fix(tmp_path):
    # conftest sets HF_DATASETS_OFFLINE=1, so this never reaches the network.
    pytest.importorskip("datasets")
    with pytest.raises(FileNotFoundError, match="uoft-cs/cifar10.*download it first"):
        load_hub_image_dataset("uoft-cs/cifar10", cache_dir=tmp_path / "cache")
