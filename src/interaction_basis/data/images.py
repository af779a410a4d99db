"""Image-classification datasets as flat float tensors (method §B.2).

Every loader returns an :class:`ImageDataset`: features of shape (N, C·H·W) in channel-first
order (what torchvision's ``ToTensor()`` then ``flatten`` gives), pixels scaled to [0, 1] as in
the paper (``normalize="none"``) or standardised per channel with the *training* mean and std
(``normalize="standardize"``), and int64 labels.

Sources:
- :func:`load_digits_dataset`: scikit-learn's 8×8 digits (shipped with scikit-learn, no
  download), split by a seeded permutation because the source has no fixed split.
- :func:`load_cifar10_archive`: the original ``cifar-10-python.tar.gz``.
- :func:`load_mnist_idx`: the four original ``*-idx?-ubyte.gz`` files.
- :func:`load_hub_image_dataset`: a Hugging Face dataset (``uoft-cs/cifar10``,
  ``ylecun/mnist``) through ``datasets.load_dataset``; offline it reads the local cache only.

Local files are checked against the published md5 by default (pass ``md5=None`` to skip, e.g.
for small test archives); unreadable or truncated files raise ``ValueError`` naming the file and
the fix instead of failing deep inside ``tarfile``, ``gzip`` or ``pickle``.
"""

import base64
import gzip
import hashlib
import io
import pickle
import tarfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

Normalization = Literal["none", "standardize"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

#: The original MNIST files and their md5 (as published by torchvision).
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

_IDX_UBYTE = 0x08


@dataclass(frozen=True)
class ImageDataset:
    """A train/test pair of flattened images.

    Attributes:
        x_train: (n_train, feature) float32 inputs, ``feature = prod(image_shape)``.
        y_train: (n_train,) int64 labels in ``[0, n_classes)``.
        x_test: (n_test, feature) float32 inputs.
        y_test: (n_test,) int64 labels.
        image_shape: ``(channels, height, width)`` of one image.
        class_names: one name per class.
        normalize: the normalisation applied.
        channel_mean: per-channel training mean subtracted (zeros for ``none``).
        channel_std: per-channel training std divided by (ones for ``none``).
        source: where the data came from (file and md5, or hub id and revision).
    """

    x_train: Float[Tensor, "n_train feature"]
    y_train: Int[Tensor, " n_train"]
    x_test: Float[Tensor, "n_test feature"]
    y_test: Int[Tensor, " n_test"]
    image_shape: tuple[int, ...]
    class_names: tuple[str, ...]
    normalize: str = "none"
    channel_mean: tuple[float, ...] = ()
    channel_std: tuple[float, ...] = ()
    source: str = ""

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_features(self) -> int:
        return int(np.prod(self.image_shape))


def _check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZATIONS:
        raise ValueError(
            f"Unknown normalize {normalize!r}; use one of {', '.join(NORMALIZATIONS)}."
        )


def _make_dataset(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    image_shape: tuple[int, ...],
    class_names: tuple[str, ...],
    normalize: str,
    source: str,
    scale: float = 255.0,
) -> ImageDataset:
    """Scale pixels to [0, 1], normalise with the training statistics and convert to tensors.

    ``x_*`` are raw pixels in ``[0, scale]`` with shape (N, *image_shape) or (N, feature). The
    pixels are kept in float32 (as ``ToTensor()``) and the statistics accumulated in float64.
    """
    _check_normalize(normalize)
    channels = image_shape[0]
    # np.array copies, so the in-place updates below never touch the caller's arrays.
    x_train = np.array(x_train, dtype=np.float32).reshape(len(x_train), channels, -1)
    x_test = np.array(x_test, dtype=np.float32).reshape(len(x_test), channels, -1)
    x_train /= np.float32(scale)
    x_test /= np.float32(scale)
    if normalize == "standardize":
        mean = x_train.mean(axis=(0, 2), dtype=np.float64)
        std = x_train.std(axis=(0, 2), dtype=np.float64)
        if not (std > 0).all():
            raise ValueError(
                f"Cannot standardize {source}: a channel of the training images is constant "
                f"(std {std.tolist()}); use normalize='none'."
            )
        for x in (x_train, x_test):
            x -= mean.astype(np.float32)[:, None]
            x /= std.astype(np.float32)[:, None]
    else:
        mean, std = np.zeros(channels), np.ones(channels)
    y_train, y_test = np.array(y_train, dtype=np.int64), np.array(y_test, dtype=np.int64)
    for split, y in (("train", y_train), ("test", y_test)):
        if y.size and (y.min() < 0 or y.max() >= len(class_names)):
            raise ValueError(
                f"{source}: {split} labels range over [{y.min()}, {y.max()}], expected "
                f"[0, {len(class_names) - 1}]."
            )
    return ImageDataset(
        x_train=torch.from_numpy(np.ascontiguousarray(x_train.reshape(len(x_train), -1))),
        y_train=torch.as_tensor(y_train, dtype=torch.int64),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test.reshape(len(x_test), -1))),
        y_test=torch.as_tensor(y_test, dtype=torch.int64),
        image_shape=tuple(int(s) for s in image_shape),
        class_names=tuple(class_names),
        normalize=normalize,
        channel_mean=tuple(float(m) for m in mean),
        channel_std=tuple(float(s) for s in std),
        source=source,
    )


def compute_split(
    n_samples: int, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Int[Tensor, " train"], Int[Tensor, " test"]]:
    """A seeded random split: the test indices are the first ``round(test_fraction·n)`` entries
    of ``randperm(n)`` with ``Generator().manual_seed(seed)``, the train indices the rest.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    n_test = round(test_fraction * n_samples)
    if not 0 < n_test < n_samples:
        raise ValueError(
            f"test_fraction {test_fraction} of {n_samples} samples leaves an empty split."
        )
    perm = torch.randperm(n_samples, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:], perm[:n_test]


def load_digits_dataset(
    *, test_fraction: float = 0.2, seed: int = 0, normalize: Normalization = "none"
) -> ImageDataset:
    """scikit-learn's 1797 8×8 handwritten digits, pixels scaled from [0, 16] to [0, 1].

    Args:
        test_fraction: share of the samples in the test split.
        seed: seed of the split (see :func:`compute_split`).
        normalize: ``none`` or ``standardize`` (training mean and std).
    """
    from sklearn.datasets import load_digits  # ships its data; imported lazily (slow import)

    digits = load_digits()
    x = np.asarray(digits.data, dtype=np.float32)
    y = np.asarray(digits.target, dtype=np.int64)
    train_idx, test_idx = compute_split(len(x), test_fraction, seed)
    train, test = train_idx.numpy(), test_idx.numpy()
    return _make_dataset(
        x[train],
        y[train],
        x[test],
        y[test],
        (1, 8, 8),
        tuple(str(i) for i in range(10)),
        normalize,
        f"sklearn.datasets.load_digits (test_fraction={test_fraction}, seed={seed})",
        scale=16.0,
    )


def compute_md5(path: str | Path, chunk_bytes: int = 2**20) -> str:
    """The md5 hex digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _require_file(path: Path, what: str, url: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} not found at {path}. Download it from {url} into {path.parent} (the "
            "workflow's dataset download rule does this on the login node)."
        )


def _verify_md5(path: Path, expected: str | None, url: str) -> None:
    if expected is None:
        return
    actual = compute_md5(path)
    if actual != expected.lower():
        raise ValueError(
            f"{path} has md5 {actual}, expected {expected} ({path.stat().st_size} bytes): the "
            f"file is truncated, corrupt or not the original. Delete it and download it again "
            f"from {url}; pass md5=None only for your own (test) files."
        )


def _corrupt(path: Path, reason: str, url: str) -> ValueError:
    return ValueError(
        f"{path} is not a readable {path.name} ({reason}). The file is probably truncated or "
        f"corrupt: delete it and download it again from {url}."
    )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and lists only: CIFAR batches need nothing else, and
    refusing every other global keeps a tampered archive from running code."""

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        # Python 2 era pickles (the original archive) name numpy.core, renamed numpy._core.
        if module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core") :]
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _unpickle(blob: bytes) -> object:
    return _ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()


def _parse_cifar_batch(blob: bytes, member: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _unpickle(blob)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise _corrupt(path, f"member {member} does not unpickle: {err}", CIFAR10_URL) from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise _corrupt(
            path,
            f"member {member} is not a batch dict with b'data' and b'labels' ({keys})",
            CIFAR10_URL,
        )
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _corrupt(
            path,
            f"member {member} has data {data.dtype} {data.shape}, expected uint8 (n, 3072)",
            CIFAR10_URL,
        )
    if labels.shape != (len(data),):
        raise _corrupt(
            path, f"member {member} has {labels.size} labels for {len(data)} images", CIFAR10_URL
        )
    return data, labels


def read_cifar10_archive(
    path: str | Path, *, md5: str | None = CIFAR10_MD5
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """The raw uint8 images (N, 3072) and labels of ``cifar-10-python.tar.gz``.

    Returns:
        ``(x_train, y_train, x_test, y_test, class_names)``; the train split concatenates
        ``data_batch_1`` … ``data_batch_5`` in order.
    """
    path = Path(path)
    _require_file(path, "The CIFAR-10 archive", CIFAR10_URL)
    _verify_md5(path, md5, CIFAR10_URL)
    wanted = {f"{CIFAR10_FOLDER}/{n}" for n in (*CIFAR10_TRAIN_BATCHES, "test_batch")}
    meta_name = f"{CIFAR10_FOLDER}/batches.meta"
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if (name in wanted or name == meta_name) and member.isfile():
                    f = tar.extractfile(member)
                    if f is not None:
                        blobs[name] = f.read()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise _corrupt(path, f"{type(err).__name__}: {err}", CIFAR10_URL) from err
    missing = sorted(wanted - set(blobs))
    if missing:
        raise _corrupt(
            path,
            f"missing member(s) {', '.join(missing)}; expected the "
            f"{CIFAR10_FOLDER}/ layout of the python version",
            CIFAR10_URL,
        )
    train = [
        _parse_cifar_batch(blobs[f"{CIFAR10_FOLDER}/{n}"], n, path) for n in CIFAR10_TRAIN_BATCHES
    ]
    x_test, y_test = _parse_cifar_batch(blobs[f"{CIFAR10_FOLDER}/test_batch"], "test_batch", path)
    class_names: tuple[str, ...] = CIFAR10_CLASSES
    if meta_name in blobs:
        try:
            meta = _unpickle(blobs[meta_name])
            names = meta[b"label_names"] if isinstance(meta, dict) else None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
            raise _corrupt(path, f"batches.meta does not unpickle: {err}", CIFAR10_URL) from err
        if names:
            class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test, class_names


def load_cifar10_archive(
    root: str | Path,
    *,
    md5: str | None = CIFAR10_MD5,
    normalize: Normalization = "none",
) -> ImageDataset:
    """CIFAR-10 from the original python-format archive (50000 train, 10000 test, 3×32×32).

    Args:
        root: the folder holding ``cifar-10-python.tar.gz``, or the archive itself.
        md5: expected md5 of the archive (default: the published one); ``None`` skips the
            check, for small test archives.
        normalize: ``none`` (pixels in [0, 1], as in the paper) or ``standardize``.

    Raises:
        FileNotFoundError: if the archive is missing (the message says where to get it).
        ValueError: on a checksum mismatch, or an archive that is truncated, corrupt or not in
            the ``cifar-10-batches-py/`` layout.
    """
    root = Path(root)
    path = root if root.is_file() else root / CIFAR10_ARCHIVE
    x_train, y_train, x_test, y_test, names = read_cifar10_archive(path, md5=md5)
    source = f"{path} (md5 {md5})" if md5 else str(path)
    return _make_dataset(x_train, y_train, x_test, y_test, (3, 32, 32), names, normalize, source)


def read_idx_file(path: str | Path, *, ndim: int, md5: str | None = None) -> np.ndarray:
    """A gzipped uint8 idx file (``0x00000803`` images, ``0x00000801`` labels) as an array.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: on a checksum mismatch, a bad gzip stream, a wrong magic number or a payload
            that does not match the header's dimensions.
    """
    path = Path(path)
    _require_file(path, "The MNIST file", MNIST_URL + path.name)
    _verify_md5(path, md5, MNIST_URL + path.name)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise _corrupt(path, f"{type(err).__name__}: {err}", MNIST_URL + path.name) from err
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    expected_magic = (_IDX_UBYTE << 8) | ndim
    if magic != expected_magic:
        found = "a file shorter than 4 bytes" if magic is None else f"magic 0x{magic:08x}"
        raise _corrupt(
            path,
            f"found {found}, expected the idx magic 0x{expected_magic:08x} (uint8, {ndim}-d)",
            MNIST_URL + path.name,
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _corrupt(path, "the idx header is truncated", MNIST_URL + path.name)
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    n_bytes = int(np.prod(dims))
    if len(raw) - header != n_bytes:
        raise _corrupt(
            path,
            f"the header promises {dims} = {n_bytes} bytes but the payload has {len(raw) - header}",
            MNIST_URL + path.name,
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist_idx(
    root: str | Path,
    *,
    md5: Mapping[str, str] | None = MNIST_FILES,
    normalize: Normalization = "none",
) -> ImageDataset:
    """MNIST from the four original idx gz files in ``root`` (60000 train, 10000 test, 1×28×28).

    Args:
        root: folder with ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
            ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``.
        md5: expected md5 per file name (default: the published ones); ``None`` skips the
            checks, for small test files.
        normalize: ``none`` (pixels in [0, 1]) or ``standardize``.
    """
    root = Path(root)

    def read(name: str, ndim: int) -> np.ndarray:
        return read_idx_file(root / name, ndim=ndim, md5=None if md5 is None else md5.get(name))

    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read(f"{prefix}-images-idx3-ubyte.gz", 3)
        labels = read(f"{prefix}-labels-idx1-ubyte.gz", 1)
        if len(images) != len(labels):
            raise ValueError(
                f"{root}: the MNIST {split} split has {len(images)} images but {len(labels)} "
                "labels; the files come from different downloads. Download them again from "
                f"{MNIST_URL}."
            )
        splits[split] = (images, labels)
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"{root}: MNIST train images are {x_train.shape[1:]} but test images "
            f"{x_test.shape[1:]}."
        )
    source = f"{root} (MNIST idx, md5 {'checked' if md5 else 'not checked'})"
    return _make_dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        (1, *x_train.shape[1:]),
        tuple(str(i) for i in range(10)),
        normalize,
        source,
    )


def _hub_split_to_arrays(split, image_column: str, label_column: str, name: str):
    """(N, C, H, W) uint8 images and labels of one ``datasets.Dataset`` split."""
    images = [np.asarray(im) for im in split[image_column]]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"{name}: images of different shapes {sorted(shapes)[:4]}.")
    x = np.stack(images)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)  # HW(C) → CHW
    if x.dtype != np.uint8:
        raise ValueError(f"{name}: expected 8-bit images, got {x.dtype}.")
    return x, np.asarray(split[label_column], dtype=np.int64)


def load_hub_image_dataset(
    name: str,
    *,
    revision: str | None = None,
    image_column: str | None = None,
    label_column: str = "label",
    train_split: str = "train",
    test_split: str = "test",
    cache_dir: str | Path | None = None,
    normalize: Normalization = "none",
) -> ImageDataset:
    """An image-classification dataset from the Hugging Face hub, e.g. ``uoft-cs/cifar10``.

    Offline (``HF_DATASETS_OFFLINE=1``, the default outside download rules) this reads the
    local cache only. A local dataset folder (e.g. parquet files per split) also works.

    Args:
        name: hub repo id or local folder.
        revision: commit SHA to pin (recorded in ``source``).
        image_column: column holding the images; default the first ``datasets.Image`` column.
        label_column: column holding the integer labels.
        train_split, test_split: split names.
        cache_dir: the ``datasets`` cache folder.
        normalize: ``none`` (pixels in [0, 1]) or ``standardize``.
    """
    import datasets  # heavy import, only needed here

    try:
        ds = datasets.load_dataset(
            name, revision=revision, cache_dir=None if cache_dir is None else str(cache_dir)
        )
    except (ConnectionError, FileNotFoundError) as err:
        raise FileNotFoundError(
            f"Could not load the dataset {name!r} (revision {revision}): {err}. Outside the "
            "download rules everything runs offline: download it first (the workflow's dataset "
            "download rule, on a node with internet) into the same cache_dir."
        ) from err
    for split in (train_split, test_split):
        if split not in ds:
            raise ValueError(f"{name}: no split {split!r}; it has {sorted(ds)}.")
    features = ds[train_split].features
    if image_column is None:
        candidates = [c for c, f in features.items() if isinstance(f, datasets.Image)]
        if not candidates:
            raise ValueError(f"{name}: no image column among {sorted(features)}.")
        image_column = candidates[0]
    for col in (image_column, label_column):
        if col not in features:
            raise ValueError(f"{name}: no column {col!r}; it has {sorted(features)}.")
    x_train, y_train = _hub_split_to_arrays(ds[train_split], image_column, label_column, name)
    x_test, y_test = _hub_split_to_arrays(ds[test_split], image_column, label_column, name)
    label_feature = features[label_column]
    if isinstance(label_feature, datasets.ClassLabel):
        class_names = tuple(label_feature.names)
    else:
        class_names = tuple(str(i) for i in range(int(max(y_train.max(), y_test.max())) + 1))
    return _make_dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        tuple(x_train.shape[1:]),
        class_names,
        normalize,
        f"{name}@{revision or 'default'}",
    )


def thumbnail_uri(image: np.ndarray) -> str:
    """A PNG data URI of one image ``(channels, height, width)``, min-max scaled."""
    import matplotlib.image

    img = np.asarray(image, dtype=np.float64)
    img = (img - img.min()) / max(img.max() - img.min(), 1e-12)
    img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    buf = io.BytesIO()
    matplotlib.image.imsave(buf, img, cmap="gray", format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
