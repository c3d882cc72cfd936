"""What both sides of a run share: its data partitions, its model and its seeded randomness."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

from fl_dp.config import ConfigError, RunConfig
from fl_dp.data import ArrayDataset, RowView, TrainTest, is_schema, load_dataset
from fl_dp.models import build_model
from fl_dp.partitioning import partitions
from fl_dp.seeding import seed_of


@lru_cache(maxsize=8)
def _partitions(cfg_key: tuple) -> tuple[ArrayDataset, Callable[[int], np.ndarray]]:
    dataset, data_dir, seed, max_train, num_clients, spec, label_column, id_column = cfg_key
    train = load_dataset(dataset, data_dir or None, seed, label_column, id_column).train
    if 0 < max_train < len(train):
        train = train.subset(np.sort(np.random.default_rng(seed).permutation(len(train))[:max_train]))
    return train, partitions(train.y.numpy(), num_clients, spec, train.groups)


def dataset_of(cfg: RunConfig) -> TrainTest:
    """The run's train and test splits (cached per process)."""
    return load_dataset(cfg.dataset, cfg.data_dir or None, cfg.seed, cfg.label_column, cfg.id_column)


def release_training_data() -> None:
    """Drop this process's cached datasets and client splits, for a process that trains no client
    (a ServerApp's): what its evaluator tests on stays held by the evaluator, and a later use loads
    them again."""
    _partitions.cache_clear()
    load_dataset.cache_clear()


def _split_key(cfg: RunConfig) -> tuple:
    return (
        cfg.dataset,
        cfg.data_dir,
        cfg.seed,
        cfg.max_train_samples,
        cfg.num_clients,
        cfg.partition_spec,
        cfg.label_column,
        cfg.id_column,
    )


def partition_lookup(cfg: RunConfig) -> Callable[[int], np.ndarray]:
    """``partition_id -> row indices`` of the run's split (one split per process and run)."""
    try:
        return _partitions(_split_key(cfg))[1]
    except ValueError as err:
        raise ConfigError(f"partitioner {cfg.partitioner!r}: {err}") from None


def client_dataset(cfg: RunConfig, partition_id: int) -> RowView:
    """The training samples of client ``partition_id``: its rows of the run's training split, which
    is loaded once per process."""
    if not 0 <= partition_id < cfg.num_clients:
        raise ConfigError(f"partition-id {partition_id} outside [0, num-clients={cfg.num_clients})")
    if is_schema(cfg.dataset):
        raise ConfigError(
            f"dataset {cfg.dataset!r} names the data's shape only: every client of this run needs its own data "
            "(node config data-path)"
        )
    train, _ = _partitions(_split_key(cfg))
    try:
        rows = partition_lookup(cfg)(partition_id)
    except ValueError as err:
        raise ConfigError(f"partitioner {cfg.partitioner!r}: {err}") from None
    return train.rows(rows)


def device_for(cfg: RunConfig) -> torch.device:
    """The device this process computes on: ``device``, where "auto" is the first CUDA device this
    process sees (a Ray actor sees one only when its client resources include a GPU), else the CPU."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {cfg.device!r}: this process sees no CUDA device (use device = 'auto' or 'cpu')")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {cfg.device!r}: this process sees {torch.cuda.device_count()} CUDA device(s)")
    return device


def model_for(cfg: RunConfig) -> torch.nn.Module:
    """A fresh model of the run (its initial parameters are the run's x_0)."""
    data = dataset_of(cfg)
    return build_model(cfg.model, data.train.input_shape, data.train.num_classes, cfg.seed)


_client_models = threading.local()


def shared_client_model(cfg: RunConfig) -> torch.nn.Module:
    """One model per architecture and thread, shared by the clients this thread serves.

    A client overwrites the parameters from x before every use, so clients handled
    one after another can share it; a Ray actor serving 1000 partitions then holds
    one model, not 1000. Per thread, so that concurrent clients never share one.
    A model with buffers (e.g. BatchNorm statistics) would carry one client's data
    into the next, so such a model is never shared.
    """
    models = _client_models.__dict__.setdefault("models", {})
    device = device_for(cfg)
    key = (cfg.model, cfg.dataset, cfg.data_dir, cfg.seed, device)
    if key not in models:
        model = model_for(cfg).to(device)
        if any(True for _ in model.buffers()):
            return model
        models[key] = model
    return models[key]


#: the stream of the server's own draws (central noise), apart from every client's (partition ids >= 0)
SERVER_STREAM = 0x5E4


def make_generator(cfg: RunConfig, *stream: int) -> torch.Generator:
    """A torch generator for (seed, *stream), or from the OS with ``os-randomness`` (deployments)."""
    generator = torch.Generator()
    generator.manual_seed(secrets.randbits(63) if cfg.os_randomness else seed_of(cfg.seed, *stream))
    return generator
