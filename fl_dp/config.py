"""The run configuration: every key of ``[tool.flwr.app.config]`` as one frozen, validated dataclass."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fl_dp.data import DATASETS, TORCHVISION_DATASETS, is_schema, parse_schema
from fl_dp.errors import ConfigError
from fl_dp.external_data import is_external
from fl_dp.models import MODELS
from fl_dp.partitioning import PARTITIONERS, PartitionSpec
from fl_dp.privacy import MAX_NOISE_MULTIPLIER, MAX_TARGET_EPSILON, MIN_NOISE_MULTIPLIER, NOISE_BELOW_USE
from fl_dp.registry import PRIVACY_KEYS, PRIVACY_MODELS, REGISTRY, STRATEGIES, spec_of
from fl_dp.robustness import AGGREGATORS, BYZANTINE_ATTACKS, NOISE_KINDS
from fl_dp.rules.sign import SIGN_COMPRESSORS

#: strategies whose client message is a norm-bounded vector that the server may sum and noise once
CENTRAL_DP_STRATEGIES = tuple(key for key, spec in REGISTRY.items() if "central" in spec.privacy_models)
COMPRESSORS = ("identity", "top-k", "rand-k", "rand-k-unbiased")
EVALUATIONS = ("central", "federated")
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
#: run-name names a folder under results-dir and a SuperNode's state-dir: one plain name, never a path
RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
#: keys that multiply the model's float32 vectors (steps, bounds, scales): above float32's largest
#: value each is inf there, and every message NaN (a run of skipped rounds instead of an error)
FLOAT32_SCALES = ("client_lr", "server_lr", "alpha", "beta", "clip", "regularizer_lambda", "sto_sign_bound", "grad_noise_scale")
FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Flower's run config and records carry signed 64-bit integers (a larger one breaks a run only
#: when it is serialised or a model is seeded)
MAX_SEED = 2**63 - 1

__all__ = ["CENTRAL_DP_STRATEGIES", "COMPRESSORS", "ConfigError", "PRIVACY_MODELS", "RunConfig", "STRATEGIES"]


@dataclass(frozen=True)
class RunConfig:
    """One run. Field ``foo_bar`` is the run-config key ``foo-bar``.

    ``target-epsilon = 0`` means non-private (no noise) unless ``noise-multiplier``
    is set; ``noise-multiplier > 0`` is the noise instead of a calibrated one (set one of the
    two). ``num-clients = 0`` (the Flower app's default) is every SuperNode of the federation and
    ``clients-per-round = 0`` every client: :meth:`for_federation` resolves both; the in-process
    loop needs them set. A key the run would not read stays at its default (``docs/usage.md``).
    """

    strategy: str = "alpha-normec"
    num_server_rounds: int = 100
    num_clients: int = 10
    clients_per_round: int = 10
    dataset: str = "fashion-mnist"
    data_dir: str = ""
    partitioner: str = "iid"
    dirichlet_alpha: float = 0.5
    # classes a client holds (pathological) and shards a client holds (shard)
    pathological_classes: int = 2
    shard_count: int = 2
    # hub:<name> / files:<path> datasets: the label column, and the id column of natural-id clients
    label_column: str = "label"
    id_column: str = ""
    max_train_samples: int = 0
    eval_samples: int = 2000
    model: str = "cnn"
    # where this process trains and evaluates: "auto" (CUDA where this process sees a GPU, e.g. a Ray
    # actor given client-resources-num-gpus, else the CPU), "cpu", "cuda" or "cuda:N"
    device: str = "auto"
    seed: int = 0
    # local training (fedavg, dp-fedavg)
    client_lr: float = 0.05
    local_epochs: int = 1
    momentum: float = 0.0
    # gradient oracle: minibatch size, 0 = full local batch
    batch_size: int = 64
    # server step size gamma (0 = the strategy's theory step size, where it has one)
    server_lr: float = 0.5
    # alpha-NormEC / Clip21 / DP-FedAvg
    alpha: float = 0.1
    beta: float = 1.0
    clip: float = 1.0
    # privacy: who adds the noise (local: every client; central: the trusted server, once per round)
    privacy_model: str = "local"
    target_epsilon: float = 0.0
    delta: float = 1e-5
    noise_multiplier: float = 0.0
    # distributed: ring Z_(2^bits) of the noise shares; the noise is calibrated for
    # ceil(secagg-survivors * clients-per-round) surviving shares; SecAgg+ neighbours per client
    secagg_bits: int = 20
    secagg_survivors: float = 0.8
    secagg_num_shares: int = 7
    # compression (EF21 family)
    compressor: str = "top-k"
    compress_k: int = 0
    compress_ratio: float = 0.01
    sgdm_eta: float = 0.1
    # alpha-NormEC variants: K local steps of client-lr (Fed-alpha-NormEC), normalized server step
    local_steps: int = 1
    server_normalize: bool = False
    regularizer_lambda: float = 0.0
    # sign methods
    sign_compressor: str = "sign"
    sto_sign_bound: float = 1.0
    round_epsilon: float = 0.0
    # robustness experiments
    grad_noise: str = "none"
    grad_noise_kappa: float = 1.5
    grad_noise_scale: float = 1.0
    byzantine_fraction: float = 0.0
    byzantine_attack: str = "sign-flip"
    # server aggregation of local-model rounds: mean (the algorithm's own), or a robust one
    aggregator: str = "mean"
    trim_fraction: float = 0.1
    # DP-SGD with random sparsification: final rate r* of gradual cooling
    rs_final_rate: float = 0.7
    # output
    # draw noise, minibatches and cohorts from the OS instead of the seed (deployments: an
    # adversary who knows the seed would know the noise, and whom sampling hid)
    os_randomness: bool = False
    results_dir: str = "results"
    run_name: str = ""
    # Flower's and Ray's own log lines on the console too (always in results-dir/<run>/flower.log)
    verbose: bool = False
    node_wait_timeout: float = 120.0
    # evaluate the global model every k rounds (and after the last)
    eval_every: int = 1
    # central: on the server's test split; federated: each client on a held-out share of its own
    # data, evaluation-clients of them (0: all connected) reporting (non-private runs only)
    evaluation: str = "central"
    evaluation_clients: int = 0
    held_out_fraction: float = 0.2
    # faults: a round needs this many connected clients (and, without central DP, accepted
    # replies) within round-timeout seconds, else it is skipped with its reason
    min_clients_per_round: int = 1
    round_timeout: float = 600.0
    # write results-dir/run-name/checkpoint every k rounds (0: never); resume continues from it
    checkpoint_every: int = 0
    resume: bool = False
    # clients keep their state (g_i, m_i, own ledger) in a file per run under this directory
    # ("" : only in memory); a SuperNode's node config key state-dir overrides it
    client_state_dir: str = ""

    def __post_init__(self) -> None:
        # from Python as strictly as from a Flower run config: each value to its field's type
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce_value(f.name, f.type, getattr(self, f.name)))
        self._validate()

    @classmethod
    def from_flwr(cls, run_config: Mapping[str, Any], **overrides: Any) -> RunConfig:
        """Build from Flower's run config (kebab-case keys); unknown keys are an error, and so is a
        snake_case spelling (``num_clients``): given beside ``num-clients``, the later of the two
        would win silently."""
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        unknown, misspelt = [], []
        for key, value in run_config.items():
            name = str(key).replace("-", "_")
            if name in known and "_" in str(key):
                misspelt.append(f"{key} (the key is {name.replace('_', '-')})")
            elif name in known:
                values[name] = value
            else:
                unknown.append(str(key))
        if misspelt:
            raise ConfigError(f"run-config keys are kebab-case: {', '.join(sorted(misspelt))}")
        if unknown:
            raise ConfigError(f"unknown run-config keys: {', '.join(sorted(unknown))}")
        values.update(overrides)
        return cls(**values)

    def to_flwr(self) -> dict[str, Any]:
        """The kebab-case mapping that :meth:`from_flwr` reads back."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def for_federation(self, num_nodes: int) -> RunConfig:
        """``num-clients = 0`` as ``num_nodes``, then ``clients-per-round = 0`` as num-clients."""
        num_clients = self.num_clients or num_nodes
        return self.replace(num_clients=num_clients, clients_per_round=self.clients_per_round or num_clients)

    def require_population(self) -> None:
        """Refuse a config whose population is still 'the federation's size' (no federation here)."""
        if self.num_clients == 0 or self.clients_per_round == 0:
            raise ConfigError(
                "num-clients = 0 / clients-per-round = 0 mean every SuperNode of a Flower federation; "
                "outside one, set num-clients and clients-per-round >= 1"
            )

    @property
    def is_private(self) -> bool:
        return self.target_epsilon > 0 or self.noise_multiplier > 0 or self.round_epsilon > 0

    @property
    def client_sample_rate(self) -> float:
        """q = clients-per-round / num-clients: each client's Poisson rate under ``central``."""
        self.require_population()
        return self.clients_per_round / self.num_clients

    @property
    def partition_spec(self) -> PartitionSpec:
        return PartitionSpec(
            name=self.partitioner,
            seed=self.seed,
            dirichlet_alpha=self.dirichlet_alpha,
            pathological_classes=self.pathological_classes,
            shard_count=self.shard_count,
        )

    @property
    def label(self) -> str:
        return self.run_name or self.strategy

    def _validate(self) -> None:
        def fail(message: str) -> None:
            raise ConfigError(message)

        spec = spec_of(self.strategy)
        if is_schema(self.dataset):
            try:
                parse_schema(self.dataset)
            except ValueError as err:
                fail(f"dataset: {err}")
        elif self.dataset not in DATASETS and not (is_external(self.dataset) and self.dataset.split(":", 1)[1]):
            fail(
                f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}, hub:<name>, files:<path> "
                "or schema:<shape>:<classes>"
            )
        if not self.label_column:
            fail("label-column must name a column")
        if self.run_name and not RUN_NAME.fullmatch(self.run_name):
            fail(
                f"run-name must be a plain name of at most 100 letters, digits, '.', '_' or '-', not starting with '.', "
                f"got {self.run_name[:120]!r}"
            )
        if self.partitioner not in PARTITIONERS:
            fail(f"unknown partitioner {self.partitioner!r}; choose one of {', '.join(PARTITIONERS)}")
        for name in ("pathological_classes", "shard_count"):
            if getattr(self, name) < 1:
                fail(f"{_key(name)} must be >= 1, got {getattr(self, name)}")
        if self.model not in MODELS:
            fail(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if not DEVICE_NAME.fullmatch(self.device):
            fail(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.sign_compressor not in SIGN_COMPRESSORS:
            fail(f"unknown sign-compressor {self.sign_compressor!r}; choose one of {', '.join(SIGN_COMPRESSORS)}")
        if self.grad_noise not in NOISE_KINDS:
            fail(f"unknown grad-noise {self.grad_noise!r}; choose one of {', '.join(NOISE_KINDS)}")
        # checked whether or not grad-noise is on: a value no run can use is a mistake either way
        if not 1 < self.grad_noise_kappa <= 2:
            fail(f"grad-noise-kappa must be in (1, 2], got {self.grad_noise_kappa}")
        if not (self.grad_noise_scale > 0 and math.isfinite(self.grad_noise_scale)):
            fail(f"grad-noise-scale must be positive and finite, got {self.grad_noise_scale}")
        if not 0 <= self.rs_final_rate < 1:
            fail(f"rs-final-rate must be in [0, 1), got {self.rs_final_rate}")
        if self.byzantine_attack not in BYZANTINE_ATTACKS:
            fail(f"unknown byzantine-attack {self.byzantine_attack!r}; choose one of {', '.join(BYZANTINE_ATTACKS)}")
        if self.aggregator not in AGGREGATORS:
            fail(f"unknown aggregator {self.aggregator!r}; choose one of {', '.join(AGGREGATORS)}")
        if not 0 <= self.trim_fraction < 0.5:
            fail(f"trim-fraction must be in [0, 0.5), got {self.trim_fraction}")
        if self.aggregator != "mean" and self.privacy_model != "local":
            fail(
                f"aggregator {self.aggregator!r} replaces a mean of the clients' messages: "
                "not under a privacy model whose noise is calibrated to a sum"
            )
        if not 0 <= self.byzantine_fraction < 0.5:
            fail(f"byzantine-fraction must be in [0, 0.5), got {self.byzantine_fraction}")
        if self.seed < 0:
            fail(f"seed must be >= 0, got {self.seed}: set os-randomness = true to draw noise from the OS")
        if self.seed > MAX_SEED:
            fail(f"seed must be at most 2**63 - 1, got {self.seed}")
        if self.compressor not in COMPRESSORS:
            fail(f"unknown compressor {self.compressor!r}; choose one of {', '.join(COMPRESSORS)}")
        for name in ("num_server_rounds", "local_epochs", "local_steps", "eval_every", "min_clients_per_round"):
            if getattr(self, name) < 1:
                fail(f"{_key(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("num_clients", "clients_per_round"):
            if getattr(self, name) < 0:
                fail(f"{_key(name)} must be >= 1 (or 0: every SuperNode of the federation), got {getattr(self, name)}")
        if self.num_clients and self.clients_per_round > self.num_clients:
            fail(f"clients-per-round ({self.clients_per_round}) > num-clients ({self.num_clients})")
        if self.clients_per_round and self.min_clients_per_round > self.clients_per_round:
            fail(f"min-clients-per-round ({self.min_clients_per_round}) > clients-per-round ({self.clients_per_round})")
        if self.checkpoint_every < 0:
            fail(f"checkpoint-every must be >= 0, got {self.checkpoint_every}")
        for name in (
            "client_lr",
            "alpha",
            "beta",
            "clip",
            "dirichlet_alpha",
            "node_wait_timeout",
            "sto_sign_bound",
            "round_timeout",
        ):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                fail(f"{_key(name)} must be positive and finite, got {value}")
        for name in ("server_lr", "target_epsilon", "noise_multiplier", "regularizer_lambda", "round_epsilon"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                fail(f"{_key(name)} must be >= 0 and finite, got {value}")
        for name in FLOAT32_SCALES:
            if getattr(self, name) > FLOAT32_MAX:
                fail(
                    f"{_key(name)} {getattr(self, name):g} is above the largest float32 ({FLOAT32_MAX:.4g}): "
                    "in the model's float32 arithmetic it is inf"
                )
        for name in ("batch_size", "max_train_samples", "eval_samples", "compress_k", "evaluation_clients"):
            if getattr(self, name) < 0:
                fail(f"{_key(name)} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            fail(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.sgdm_eta <= 1:
            fail(f"sgdm-eta must be in (0, 1], got {self.sgdm_eta}")
        if not 0 < self.delta < 1:
            fail(f"delta must be in (0, 1), got {self.delta}")
        if not 0 <= self.compress_ratio <= 1:
            fail(f"compress-ratio must be in [0, 1], got {self.compress_ratio}")
        for name in ("target_epsilon", "round_epsilon"):
            if getattr(self, name) > MAX_TARGET_EPSILON:
                fail(
                    f"{_key(name)} {getattr(self, name):g} is above {MAX_TARGET_EPSILON:g}, a guarantee that says nothing: "
                    f"for a run without noise set {_key(name)} = 0"
                )
        if self.noise_multiplier > MAX_NOISE_MULTIPLIER:
            fail(f"noise-multiplier {self.noise_multiplier:g} is above {MAX_NOISE_MULTIPLIER:g}: that noise drowns every message")
        if 0 < self.noise_multiplier < MIN_NOISE_MULTIPLIER:
            fail(f"noise-multiplier {self.noise_multiplier:g} is below {MIN_NOISE_MULTIPLIER:g}: {NOISE_BELOW_USE}")
        self._validate_privacy_model()
        self._validate_evaluation()
        self._validate_unread_keys(spec.unread_keys(self))
        spec.validate(self)

    def _validate_unread_keys(self, unread_rule_keys: dict[str, str]) -> None:
        """A key that this run would not read stays at its default: a value set there is a mistake
        (a key of another strategy, partitioner or mode) that would otherwise change nothing, silently."""
        unread = {key: why for key, (is_read, why) in _READ_ONLY_WHEN.items() if not is_read(self)}
        unread.update(unread_rule_keys)
        for key, why in unread.items():
            name = key.replace("-", "_")
            default = RunConfig.__dataclass_fields__[name].default
            if getattr(self, name) != default:
                raise ConfigError(
                    f"{key} = {getattr(self, name)!r} would have no effect: {why}; leave it at its default {default!r}"
                )
        set_privacy_keys = [key for key in PRIVACY_KEYS if getattr(self, key.replace("-", "_"))]
        if len(set_privacy_keys) > 1:
            raise ConfigError(
                f"{' and '.join(set_privacy_keys)} are both set: one of them sets the noise, so leave the other at 0"
            )

    def _validate_evaluation(self) -> None:
        if self.evaluation not in EVALUATIONS:
            raise ConfigError(f"unknown evaluation {self.evaluation!r}; choose one of {', '.join(EVALUATIONS)}")
        if not 0 < self.held_out_fraction < 1:
            raise ConfigError(f"held-out-fraction must be in (0, 1), got {self.held_out_fraction}")
        if self.num_clients and self.evaluation_clients > self.num_clients:
            raise ConfigError(f"evaluation-clients ({self.evaluation_clients}) > num-clients ({self.num_clients})")
        if self.evaluation == "federated" and (self.is_private or self.privacy_model != "local"):
            raise ConfigError(
                "evaluation = 'federated' has every client report its accuracy on its own held-out data, a release "
                "the privacy ledger does not charge (and that secure aggregation would not hide): a private run "
                "evaluates on the server's test set (evaluation = 'central')"
            )
        if self.evaluation == "central" and is_schema(self.dataset):
            raise ConfigError(
                f"dataset {self.dataset!r} names the data's shape only, so the server has no test set: "
                "set evaluation = 'federated', or name a dataset the server holds"
            )

    def _validate_privacy_model(self) -> None:
        if self.privacy_model not in PRIVACY_MODELS:
            raise ConfigError(f"unknown privacy-model {self.privacy_model!r}; choose one of {', '.join(PRIVACY_MODELS)}")
        # checked under every privacy model: a value no run can use is a mistake either way
        if not 8 <= self.secagg_bits <= 30:
            raise ConfigError(f"secagg-bits must be in [8, 30], got {self.secagg_bits}")
        if not 0 < self.secagg_survivors <= 1:
            raise ConfigError(f"secagg-survivors must be in (0, 1], got {self.secagg_survivors}")
        if self.secagg_num_shares < 3:
            raise ConfigError(f"secagg-num-shares must be >= 3 (SecAgg+ needs more than 2 shares), got {self.secagg_num_shares}")


#: keys read only where another key has a value: key -> (whether ``cfg`` reads it, why not)
_READ_ONLY_WHEN: dict[str, tuple[Callable[[RunConfig], bool], str]] = {
    "data-dir": (
        lambda cfg: cfg.dataset in TORCHVISION_DATASETS,
        f"only the datasets {', '.join(TORCHVISION_DATASETS)} read it (a torchvision root)",
    ),
    "dirichlet-alpha": (lambda cfg: cfg.partitioner == "dirichlet", "only partitioner 'dirichlet' reads it"),
    "pathological-classes": (lambda cfg: cfg.partitioner == "pathological", "only partitioner 'pathological' reads it"),
    "shard-count": (lambda cfg: cfg.partitioner == "shard", "only partitioner 'shard' reads it"),
    "grad-noise-kappa": (lambda cfg: cfg.grad_noise != "none", "grad-noise is 'none'"),
    "grad-noise-scale": (lambda cfg: cfg.grad_noise != "none", "grad-noise is 'none'"),
    "byzantine-attack": (lambda cfg: cfg.byzantine_fraction > 0, "byzantine-fraction is 0"),
    "trim-fraction": (lambda cfg: cfg.aggregator == "trimmed-mean", "only aggregator 'trimmed-mean' reads it"),
    "held-out-fraction": (lambda cfg: cfg.evaluation == "federated", "only evaluation 'federated' reads it"),
    "evaluation-clients": (lambda cfg: cfg.evaluation == "federated", "only evaluation 'federated' reads it"),
    "delta": (lambda cfg: cfg.is_private, "the run is not private"),
    **{
        key: (lambda cfg: cfg.privacy_model == "distributed", "only privacy-model 'distributed' reads it")
        for key in ("secagg-bits", "secagg-survivors", "secagg-num-shares")
    },
}


def _key(name: str) -> str:
    return name.replace("_", "-")


def _coerce_value(name: str, wanted: Any, value: Any) -> Any:
    """``value`` as the field's type, or a :class:`ConfigError` naming the key.

    Flower passes TOML numbers as int or float: an integer-valued float is an int, an int is a
    float; booleans are never numbers, and float fields are finite.
    """
    kind = {"int": int, "float": float, "str": str, "bool": bool}.get(wanted, wanted)
    ok = True
    if kind is bool:
        ok = isinstance(value, bool)
    elif isinstance(value, bool):
        ok = False
    elif kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int)
    elif kind is float:
        ok = isinstance(value, (int, float)) and math.isfinite(value)
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(
            f"{_key(name)} must be of type {getattr(kind, '__name__', kind)}"
            + (" and finite" if kind is float else "")
            + f", got {value!r}"
        )
    return value
