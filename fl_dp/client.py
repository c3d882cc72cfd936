"""One client of a run: its data, its rule, its noise, and its own privacy ledger.

:class:`ClientCore` answers one training request from the client's data and persistent state,
independent of how messages travel: the Flower ClientApp and the in-process loop both call it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fl_dp.client_state import check_ledger_rows, check_state, ledger_releases, ledger_with
from fl_dp.config import ConfigError, RunConfig
from fl_dp.data import ArrayDataset, Examples
from fl_dp.distributed import RING_KEY, mechanism_for, rotation_signs
from fl_dp.external_data import FILES, load_external
from fl_dp.federated_evaluation import TEST_ACCURACY, TEST_LOSS, split_held_out
from fl_dp.privacy import Release, epsilon_of
from fl_dp.privacy_floor import PrivacyFloor, PrivacyRefusal
from fl_dp.privacy_policy import client_noise_multiplier, local_postprocessor, round_release
from fl_dp.registry import build_algorithm
from fl_dp.robustness import BYZANTINE_ATTACKS, HeavyTailedNoise, NoisyGradients, flip, is_byzantine
from fl_dp.rules.base import ClientTask, State, dense
from fl_dp.task import client_dataset, dataset_of, make_generator, shared_client_model
from fl_dp.training import Objective
from fl_dp.wire import (
    CLIENT_EPSILON,
    COHORT_SIZE,
    DP_NOISE,
    DP_RATE,
    DP_STEPS,
    LEDGER_STATE,
    NUM_EXAMPLES,
    PARTITION_ID,
    STATE_FRESH,
    TRAIN_LOSS,
    MalformedMessage,
    decode,
    encode,
    request_round,
)

log = logging.getLogger("fl_dp")


class ClientCore:
    """One client: its data, its model, the rule's client hook and the local-DP post-processor."""

    def __init__(
        self, cfg: RunConfig, partition_id: int, floor: PrivacyFloor | None = None, data: ArrayDataset | None = None
    ) -> None:
        """``data``: the client's own training data (a SuperNode's local files), instead of partition
        ``partition_id`` of the run's dataset."""
        cfg.require_population()
        self.cfg = cfg
        self.partition_id = partition_id
        self.floor = floor
        model = shared_client_model(cfg)
        examples: Examples
        if data is None:
            examples = client_dataset(cfg, partition_id)
        else:
            check_fits(data, model, cfg)
            examples = data
        #: under federated evaluation, the examples kept out of training to test the global model on
        self.held_out: Objective | None = None
        if cfg.evaluation == "federated":
            examples, held_out = split_held_out(examples, cfg.held_out_fraction, cfg.seed, partition_id)
            self.held_out = Objective(model, held_out, cfg.regularizer_lambda)
        self.objective = Objective(model, examples, cfg.regularizer_lambda)
        self.oracle: Any = self.objective
        if cfg.grad_noise != "none":
            self.oracle = NoisyGradients(
                self.objective, HeavyTailedNoise(cfg.grad_noise, cfg.grad_noise_kappa, cfg.grad_noise_scale)
            )
        self.byzantine = is_byzantine(partition_id, cfg.num_clients, cfg.byzantine_fraction)
        # the client's noise comes from its own run config, never from the server's say-so
        self.noise_multiplier = client_noise_multiplier(cfg)
        self.algorithm = build_algorithm(cfg, self.objective.dim)
        self.postprocessor = local_postprocessor(cfg, self.noise_multiplier)

    def expected_release(self) -> Release | None:
        """What this client releases in one round: its post-processor's, or its rule's own noise."""
        return round_release(self.algorithm, self.postprocessor, len(self.objective.data))

    def train(
        self,
        arrays: dict[str, np.ndarray],
        config: dict[str, Any],
        state: State,
        spent: Sequence[Release] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[str, float], State]:
        """Answer one training request: (wire arrays, metrics, new state). ``spent``: what the
        privacy floor counts as released before (default: this run's own ledger in ``state``)."""
        x = self._global_vector(arrays)
        state = self._trainable_state(state)
        server_round, _ = request_round(config, self.cfg.num_server_rounds)
        noise = config.get(DP_NOISE)
        if (
            isinstance(noise, bool)
            or not isinstance(noise, (int, float))
            or not math.isclose(noise, self.noise_multiplier, rel_tol=1e-9)
        ):
            raise MalformedMessage(
                f"the server asks for noise multiplier {noise!r}, this client's run config gives "
                f"{self.noise_multiplier}: refusing to train"
            )
        if self.floor is not None:
            if spent is None:
                spent = ledger_releases(state.get(LEDGER_STATE, torch.zeros(0, 3, dtype=torch.float64)))
            self.floor.admit(self.cfg.privacy_model, self.expected_release(), list(spent))
        generator = make_generator(self.cfg, self.partition_id, server_round)
        update = self.algorithm.client_update(
            ClientTask(x=x, state=state, objective=self.oracle, generator=generator, server_round=server_round)
        )
        message, release = update.message, update.release
        if self.postprocessor is not None:
            message, release = self.postprocessor(dense(message), generator)
        if self.byzantine:
            message = flip(message, BYZANTINE_ATTACKS[self.cfg.byzantine_attack])
        # the dataset size and partition id are treated as public; loss and other statistics only leave the client
        # of a non-private run, since they would be unaccounted releases of its data
        metrics: dict[str, float] = {NUM_EXAMPLES: update.num_examples, PARTITION_ID: float(self.partition_id)}
        if self.algorithm.client_state_step is not None and "g" not in state:
            metrics[STATE_FRESH] = 1.0
        if not self.cfg.is_private:
            metrics.update({TRAIN_LOSS: update.train_loss, **update.metrics})
        state = update.state
        if self.cfg.privacy_model == "distributed":
            # only the sum of the shares reaches anyone: no metric about this client's data leaves it
            return {RING_KEY: self._share(message, server_round, config.get(COHORT_SIZE))}, {}, state
        if release is not None:
            metrics.update({DP_NOISE: release.noise_multiplier, DP_RATE: release.sample_rate, DP_STEPS: release.steps})
            state, metrics[CLIENT_EPSILON] = record_own_release(state, release, self.cfg.delta)
        return encode(message), metrics, state

    def _trainable_state(self, state: State) -> State:
        """``state`` if it is whole. A damaged algorithm vector is dropped (the client starts it
        afresh and says so in ``state-fresh``); a damaged own ledger is refused with ValueError,
        since training on would forget what the client released."""
        ledger = state.get(LEDGER_STATE) if isinstance(state, dict) else None
        if ledger is not None:
            check_ledger_rows(ledger)
        try:
            return check_state(state, self.objective.dim)
        except ValueError as err:
            log.warning("client %d: state unusable (%s); starting it afresh", self.partition_id, err)
            return {} if ledger is None else {LEDGER_STATE: ledger}

    def evaluate(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        """Test the global vector on this client's held-out examples (federated evaluation only):
        its report, :data:`fl_dp.federated_evaluation.REPORT_KEYS`."""
        if self.held_out is None:
            raise MalformedMessage("this run evaluates on the server (evaluation = 'central'): refusing to report metrics")
        if self.floor is not None:
            # a noiseless loss and accuracy of its own examples: the release without noise the floor refuses
            raise PrivacyRefusal("this node has a privacy floor: it reports no metrics of its own data")
        x = self._global_vector(arrays)
        metrics = self.held_out.evaluate(x)
        return {NUM_EXAMPLES: float(len(self.held_out.data)), TEST_LOSS: metrics["loss"], TEST_ACCURACY: metrics["accuracy"]}

    def _global_vector(self, arrays: dict[str, np.ndarray]) -> torch.Tensor:
        if "x" not in arrays:
            raise MalformedMessage("request carries no 'x'")
        sent = arrays["x"]
        # the float32 the server sends, never cast: a complex or float64 vector cast here lost its
        # imaginary part or overflowed without a word
        if not (isinstance(sent, np.ndarray) and sent.dtype == np.float32 and sent.ndim == 1 and sent.size == self.objective.dim):
            raise MalformedMessage(f"global vector must be float32 with {self.objective.dim} entries")
        x = torch.from_numpy(sent.copy())
        if not torch.isfinite(x).all():
            raise MalformedMessage(f"global vector must be finite with {self.objective.dim} entries")
        return x

    def _share(self, message: Any, server_round: int, cohort: Any) -> np.ndarray:
        """This client's noised share of the round's secure sum in a cohort of ``cohort`` clients
        (:mod:`fl_dp.distributed`); a cohort size the run cannot have is refused."""
        mechanism = mechanism_for(self.cfg)
        if isinstance(cohort, bool) or not isinstance(cohort, int) or not 1 <= cohort <= mechanism.max_cohort:
            raise MalformedMessage(
                f"the server announces a cohort of {cohort!r} clients; this run's cohorts have 1 to {mechanism.max_cohort}"
            )
        vector = decode(encode(message), self.objective.dim)
        entropy = None if self.cfg.os_randomness else [self.cfg.seed, self.partition_id, server_round, 0xD15]
        rng = np.random.default_rng(np.random.SeedSequence(entropy))
        return mechanism.encode(vector, rotation_signs(self.cfg.seed, server_round, mechanism.padded), rng, cohort)


def local_data(cfg: RunConfig, path: str) -> ArrayDataset:
    """A SuperNode's own training data: every row of the file or folder at ``path`` (``files:`` formats,
    the run's label and id columns). The rows never leave the node."""
    try:
        ((x, y, _), _), num_classes = load_external(f"{FILES}{path}", cfg.seed, cfg.label_column, cfg.id_column, held_out=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"node config data-path {path!r}: {err}") from None
    if len(y) == 0:
        raise ConfigError(f"node config data-path {path!r} holds no rows")
    return ArrayDataset(x, y, num_classes)


def check_fits(data: ArrayDataset, model: torch.nn.Module, cfg: RunConfig) -> None:
    """A client's own data must have the run's input shape and labels the run's model can output."""
    expected = dataset_of(cfg).train
    if data.input_shape != expected.input_shape:
        raise ConfigError(
            f"node config data-path: inputs of shape {data.input_shape}; the run's model takes {expected.input_shape} "
            f"({cfg.dataset!r})"
        )
    if int(data.y.max()) >= expected.num_classes:
        raise ConfigError(
            f"node config data-path: label {int(data.y.max())}; the run's {cfg.dataset!r} has {expected.num_classes} classes"
        )


def record_own_release(state: State, release: Release, delta: float) -> tuple[State, float]:
    """Add ``release`` to the client's own ledger, kept in its state as float64 rows
    (noise multiplier, sample rate, steps): the client knows its epsilon wherever it runs."""
    rows = ledger_with(state.get(LEDGER_STATE, torch.zeros(0, 3, dtype=torch.float64)), release)
    return {**state, LEDGER_STATE: rows}, epsilon_of(ledger_releases(rows), delta)
