"""A client's objective reads its rows of the dataset in place, and images as their bytes, with the
numbers of a float copy of them."""

from __future__ import annotations

import numpy as np
import torch

from fl_dp.config import RunConfig
from fl_dp.data import ArrayDataset, ImageCodes, load_dataset
from fl_dp.models import build_model
from fl_dp.task import client_dataset
from fl_dp.training import Objective


def test_an_objective_on_rows_read_in_place_computes_what_it_does_on_their_copy():
    train = load_dataset("fashion-mnist").train
    rows = np.sort(np.random.default_rng(0).choice(len(train), 300, replace=False))
    model = build_model("cnn", train.input_shape, train.num_classes, seed=0)
    assert isinstance(train.x, ImageCodes)
    codes = train.subset(rows)
    floats = ArrayDataset(codes.inputs(), codes.y, codes.num_classes)
    in_place = Objective(model, train.rows(rows))
    x = in_place.initial_point()
    batch = torch.tensor([5, 0, 299, 17])

    for copied in (Objective(model, codes), Objective(model, floats)):
        assert len(in_place.data) == len(copied.data) == 300
        for indices in (None, batch):
            loss, grad = in_place.loss_and_grad(x, indices)
            copy_loss, copy_grad = copied.loss_and_grad(x, indices)
            assert loss == copy_loss and torch.equal(grad, copy_grad)
        end, loss, steps = in_place.sgd(x, 1, 0.1, 64, torch.Generator().manual_seed(1))
        copy_end, copy_loss, copy_steps = copied.sgd(x, 1, 0.1, 64, torch.Generator().manual_seed(1))
        assert torch.equal(end, copy_end) and (loss, steps) == (copy_loss, copy_steps)
        assert torch.equal(in_place.per_sample_gradients(x, batch), copied.per_sample_gradients(x, batch))
        assert in_place.evaluate(x) == copied.evaluate(x)


def test_the_clients_of_a_process_hold_row_indices_of_one_copy_of_the_training_data():
    cfg = RunConfig(dataset="fashion-mnist", model="cnn", num_clients=100, clients_per_round=10)
    first, second = client_dataset(cfg, 0), client_dataset(cfg, 1)
    assert first.base is second.base
    assert first.indices.dtype == torch.long and len(first) == len(first.indices)
    assert torch.equal(first.x, first.base.subset(first.indices).inputs())
    assert torch.equal(second.y, first.base.y[second.indices])
    assert first.groups is None and first.num_classes == 10 and first.input_shape == (1, 28, 28)
    held = first.subset(torch.tensor([2, 0]))
    assert held.base is first.base and torch.equal(held.x, first.x[[2, 0]])


def test_evaluation_runs_the_model_on_a_bounded_number_of_samples_at_a_time():
    """An evaluation's activations are those of one batch of EVAL_BATCH samples, not of the whole
    test split; the accuracy is that of one pass over all of them."""
    from fl_dp.training import EVAL_BATCH

    test = load_dataset("fashion-mnist").test.subset(np.arange(3 * EVAL_BATCH + 5))
    model = build_model("cnn", test.input_shape, test.num_classes, seed=0)
    objective = Objective(model, test)
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, inputs: sizes.append(len(inputs[0])))
    metrics = objective.evaluate(objective.initial_point())
    handle.remove()
    assert sizes == [EVAL_BATCH] * 3 + [5]
    with torch.no_grad():
        whole = model(test.inputs()).argmax(1)
    assert metrics["accuracy"] == int((whole == test.y).sum()) / len(test)


def test_per_sample_gradients_after_a_pass_cut_short_are_those_of_a_fresh_process(monkeypatch):
    """A pass that raises between Opacus' forward and backward (out of memory, an interrupt) left
    its activations on the process's cached module: every later pass read the stale ones, and a
    DP-SGD client failed every round after that one."""
    data = load_dataset("synthetic").train
    model = build_model("logreg", data.input_shape, data.num_classes, seed=0)
    objective = Objective(model, data)
    x, batch = objective.initial_point(), torch.arange(7)
    expected = Objective(build_model("logreg", data.input_shape, data.num_classes, seed=0), data).per_sample_gradients(x, batch)

    def out_of_memory(*args, **kwargs):
        raise MemoryError("simulated: out of memory after the forward pass")

    with monkeypatch.context() as patch:
        patch.setattr(objective, "loss_fn", out_of_memory)
        try:
            objective.per_sample_gradients(x, batch)
        except MemoryError:
            pass
    assert torch.equal(objective.per_sample_gradients(x, batch), expected)
