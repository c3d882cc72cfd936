"""Splitting a training set among clients: Flower Datasets' partitioners on in-memory data.

``partitioner`` names the split, with its parameters as run-config keys:

- ``iid`` (default): a seeded shuffle cut into near-equal parts (this project's own; kept so that
  every run and result measured before the partitioners came keeps its split);
- ``dirichlet`` (``dirichlet-alpha``): per class, proportions from Dir(alpha) (Flower Datasets'
  ``DirichletPartitioner``, at least 10 samples a client, or half the mean where that is fewer);
- ``pathological`` (``pathological-classes``): each client holds that many classes
  (``PathologicalPartitioner``);
- ``shard`` (``shard-count``): the label-sorted data cut into shards, that many a client
  (``ShardPartitioner``, McMahan et al. 2017);
- ``linear``, ``square``, ``exponential``: client i holds a share proportional to i, i^2 or e^i
  of the seeded-shuffled data (unequal sizes: ``LinearPartitioner`` and its kin);
- ``natural-id``: one client per value of an id column (``NaturalIdPartitioner``); the offline
  datasets have none, so it is refused for them by name.

The partitioners run on a ``datasets.Dataset`` of two columns (label, row index) built in memory,
so nothing is downloaded; a client's rows are looked up once per process (clients are built
lazily, so a population of 10,000 computes only the partitions it samples, after the split's
one-off assignment).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

PARTITIONERS = ("iid", "dirichlet", "pathological", "shard", "linear", "square", "exponential", "natural-id")


@dataclass(frozen=True, kw_only=True)
class PartitionSpec:
    """A partitioner and its parameters (the run-config keys of the module docstring)."""

    name: str = "iid"
    seed: int = 0
    dirichlet_alpha: float = 0.5
    pathological_classes: int = 2
    shard_count: int = 2

    def __post_init__(self) -> None:
        if self.name not in PARTITIONERS:
            raise ValueError(f"unknown partitioner {self.name!r}; choose one of {', '.join(PARTITIONERS)}")
        if not self.dirichlet_alpha > 0:
            raise ValueError(f"dirichlet-alpha must be positive, got {self.dirichlet_alpha}")
        if self.pathological_classes < 1:
            raise ValueError(f"pathological-classes must be >= 1, got {self.pathological_classes}")
        if self.shard_count < 1:
            raise ValueError(f"shard-count must be >= 1, got {self.shard_count}")


def iid_partition(num_samples: int, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Shuffle with ``seed`` and cut into ``num_partitions`` near-equal parts."""
    _check_partitions(num_samples, num_partitions)
    order = np.random.default_rng(seed).permutation(num_samples)
    return [np.sort(part) for part in np.array_split(order, num_partitions)]


def _check_partitions(num_samples: int, num_partitions: int) -> None:
    if num_partitions < 1:
        raise ValueError(f"number of partitions must be >= 1, got {num_partitions}")
    if num_partitions > num_samples:
        raise ValueError(f"{num_partitions} partitions for only {num_samples} samples")


def partitions(
    labels: np.ndarray, num_partitions: int, spec: PartitionSpec, groups: np.ndarray | None = None
) -> Callable[[int], np.ndarray]:
    """``partition_id -> sorted row indices`` of the split; ValueError (naming the key) for a split
    these labels cannot give (an empty partition, more partitions than samples, no id column).
    ``groups`` are the rows' natural client ids, for ``natural-id``."""
    labels = np.asarray(labels)
    _check_partitions(len(labels), num_partitions)
    if spec.name == "iid":
        parts = iid_partition(len(labels), num_partitions, spec.seed)
        return parts.__getitem__
    rows = np.arange(len(labels))
    if spec.name == "natural-id":
        if groups is None:
            raise ValueError(
                "partitioner 'natural-id' needs a dataset with a client-id column (set id-column); the offline datasets have none"
            )
        ids = np.unique(groups)
        if len(ids) != num_partitions:
            raise ValueError(f"natural-id gives one client per id: the data has {len(ids)} ids, num-clients is {num_partitions}")
        from flwr_datasets.partitioner import NaturalIdPartitioner

        partitioner: Any = NaturalIdPartitioner(partition_by="group")
        partitioner.dataset = _label_dataset(labels, rows, groups=groups)
    else:
        partitioner = _flower_partitioner(spec, num_partitions, int(labels.max()) + 1, len(labels))
        if spec.name in ("linear", "square", "exponential"):
            rows = np.random.default_rng(spec.seed).permutation(len(labels))  # sizes by id, contents shuffled
        partitioner.dataset = _label_dataset(labels[rows], rows)

    @cache
    def lookup(partition_id: int) -> np.ndarray:
        if not 0 <= partition_id < num_partitions:
            raise ValueError(f"partition-id {partition_id} outside [0, {num_partitions})")
        try:
            part = np.sort(np.asarray(partitioner.load_partition(partition_id)["row"], dtype=np.int64))
        except (ValueError, IndexError, KeyError, ArithmeticError) as err:  # Flower Datasets' own failures
            raise ValueError(
                f"partitioner {spec.name!r} cannot split {len(labels)} samples into {num_partitions}: {err}"
            ) from None
        if len(part) == 0:
            raise ValueError(f"partitioner {spec.name!r} leaves partition {partition_id} of {num_partitions} empty")
        return part

    return lookup


def _label_dataset(labels: np.ndarray, rows: np.ndarray, groups: np.ndarray | None = None) -> Any:
    from datasets import Dataset

    columns: dict[str, Any] = {"label": labels, "row": rows}
    if groups is not None:
        columns["group"] = groups
    return Dataset.from_dict(columns)


def _flower_partitioner(spec: PartitionSpec, num_partitions: int, num_classes: int, num_samples: int) -> Any:
    from flwr_datasets import partitioner as fp

    if spec.name == "dirichlet":
        # at least 10 samples a client, or half the mean where clients are smaller than 20 on average
        smallest = max(1, min(10, num_samples // (2 * num_partitions)))
        return fp.DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=spec.dirichlet_alpha,
            seed=spec.seed,
            min_partition_size=smallest,
        )
    if spec.name == "pathological":
        if spec.pathological_classes > num_classes:
            raise ValueError(f"pathological-classes {spec.pathological_classes} > the dataset's {num_classes} classes")
        return fp.PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=spec.pathological_classes,
            seed=spec.seed,
        )
    if spec.name == "shard":
        shards = num_partitions * spec.shard_count
        if shards > num_samples:
            raise ValueError(
                f"shard-count {spec.shard_count} x {num_partitions} clients = {shards} shards for only {num_samples} samples"
            )
        return fp.ShardPartitioner(
            num_partitions=num_partitions, partition_by="label", num_shards_per_partition=spec.shard_count, seed=spec.seed
        )
    sizes = {"linear": fp.LinearPartitioner, "square": fp.SquarePartitioner, "exponential": fp.ExponentialPartitioner}
    return sizes[spec.name](num_partitions=num_partitions)
