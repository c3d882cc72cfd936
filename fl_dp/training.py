"""A model's loss on a dataset as a function of its flat parameter vector: gradients, local SGD, evaluation."""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import nn

from fl_dp.data import Examples, RowView
from fl_dp.models import get_flat_grad, get_flat_params, num_params, set_flat_params

#: samples per chunk of a full-batch gradient
GRADIENT_CHUNK = 2048
PER_SAMPLE_CHUNK = 256
#: samples per forward pass of an evaluation: a CNN's activations for 2,048 Fashion-MNIST images
#: held 225 MiB at the peak, for 256 images 41 MiB, and it was no slower
EVAL_BATCH = 256


def nonconvex_regularizer(x: torch.Tensor, lam: float) -> torch.Tensor:
    """lambda * sum_k x_k^2 / (1 + x_k^2), the regulariser of the EF21 logistic experiments."""
    squared = x * x
    return lam * torch.sum(squared / (1 + squared))


_GRAD_SAMPLE_MODULES: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()


class Objective:
    """f(x) = mean loss of ``model`` with parameters x on ``data`` (+ the non-convex regulariser).

    A model with one output is a binary logistic model (labels 0/1, i.e. the
    log(1 + exp(-y x.w)) loss with y = +-1); otherwise cross-entropy.

    The work runs where the model's parameters are (the data is copied there once); the flat
    vectors it takes and returns stay on the CPU, where the algorithms keep their state.
    """

    def __init__(self, model: nn.Module, data: Examples, regularizer_lambda: float = 0.0) -> None:
        if len(data) == 0:
            raise ValueError("a client objective needs at least one sample")
        self.model = model
        self.data = data
        self.regularizer_lambda = regularizer_lambda
        self.dim = num_params(model)
        self.device = next(model.parameters()).device
        #: rows of ``_x`` / ``_y`` that are this objective's samples (None: all of them, in order)
        self._rows: torch.Tensor | None = None
        if isinstance(data, RowView) and self.device.type == "cpu":
            self._x, self._y, self._rows = data.base.x, data.base.y, data.indices
        else:
            # images go to the device as their bytes, converted there batch by batch
            examples = data.base.subset(data.indices) if isinstance(data, RowView) else data
            self._x, self._y = examples.x.to(self.device), examples.y.to(self.device)

    def _examples(self, rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of the samples ``rows`` (positions among this objective's samples)."""
        if self._rows is not None:
            rows = self._rows[rows]
        return self._x[rows], self._y[rows]

    def loss_fn(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if logits.shape[1] == 1:
            return nn.functional.binary_cross_entropy_with_logits(logits[:, 0], labels.float(), reduction=reduction)
        return nn.functional.cross_entropy(logits, labels, reduction=reduction)

    def _regularizer(self) -> torch.Tensor:
        if self.regularizer_lambda == 0:
            return torch.zeros(())
        return nonconvex_regularizer(torch.nn.utils.parameters_to_vector(self.model.parameters()), self.regularizer_lambda)

    def loss_and_grad(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        """Loss and gradient at x on the samples ``indices`` (all samples if None)."""
        set_flat_params(self.model, x)
        self.model.zero_grad(set_to_none=True)
        self.model.train()
        if indices is None:
            total = len(self.data)
            loss_sum = 0.0
            for start in range(0, total, GRADIENT_CHUNK):
                xb, yb = self._examples(slice(start, start + GRADIENT_CHUNK))
                chunk_loss = self.loss_fn(self.model(xb), yb, reduction="sum") / total
                chunk_loss.backward()
                loss_sum += chunk_loss.item()
        else:
            rows = indices.to(self.device)
            xb, yb = self._examples(rows)
            loss = self.loss_fn(self.model(xb), yb)
            loss.backward()
            loss_sum = loss.item()
        reg = self._regularizer()
        if reg.requires_grad:
            reg.backward()
        return loss_sum + reg.item(), get_flat_grad(self.model).cpu()

    def batch_indices(self, batch_size: int, generator: torch.Generator | None) -> torch.Tensor | None:
        """A minibatch drawn without replacement, or None (full batch) for batch_size 0 or >= N."""
        n = len(self.data)
        if batch_size <= 0 or batch_size >= n:
            return None
        return torch.randperm(n, generator=generator)[:batch_size]

    def stochastic_gradient(
        self, x: torch.Tensor, batch_size: int, generator: torch.Generator | None
    ) -> tuple[float, torch.Tensor]:
        return self.loss_and_grad(x, self.batch_indices(batch_size, generator))

    def sgd(
        self,
        x: torch.Tensor,
        epochs: int,
        lr: float,
        batch_size: int,
        generator: torch.Generator | None,
        momentum: float = 0.0,
        gradient_noise: Callable[[torch.Size], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, float, int]:
        """Local SGD from x over shuffled epochs: (final x, mean minibatch loss, steps).

        Steps update the model's parameters in place (no flat-vector round trip per step).
        ``gradient_noise(shape)`` is added to each parameter's minibatch gradient where given.
        """
        n = len(self.data)
        batch = n if batch_size <= 0 else min(batch_size, n)
        set_flat_params(self.model, x)
        self.model.train()
        params = list(self.model.parameters())
        velocities = [torch.zeros_like(p) for p in params]
        losses = []
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(self.device)
            for start in range(0, n, batch):
                indices = order[start : start + batch]
                self.model.zero_grad(set_to_none=True)
                xb, yb = self._examples(indices)
                loss = self.loss_fn(self.model(xb), yb) + self._regularizer()
                loss.backward()
                with torch.no_grad():
                    for p, v in zip(params, velocities):
                        assert p.grad is not None  # every parameter is in the loss
                        if gradient_noise is not None:
                            p.grad.add_(gradient_noise(p.shape).to(p.device))
                        v.mul_(momentum).add_(p.grad)
                        p.sub_(lr * v)
                losses.append(loss.item())
        return get_flat_params(self.model).cpu(), sum(losses) / len(losses), len(losses)

    def per_sample_gradients(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """(batch, d) gradients of each sample's loss at x, from Opacus' GradSampleModule
        (on a copy of the model, so the ordinary gradient path keeps no hooks), in chunks of
        ``PER_SAMPLE_CHUNK`` samples on a CPU (at batch 2048 one pass took twice as long per sample)."""
        from fl_dp.opacus_import import import_opacus

        import_opacus()
        from opacus import GradSampleModule

        if self.regularizer_lambda:
            raise ValueError("per-sample gradients do not include the regulariser; use regularizer-lambda = 0")
        module = _GRAD_SAMPLE_MODULES.get(self.model)
        if module is None:
            # one per model: objectives sharing a model (clients of one process) share it too
            module = _GRAD_SAMPLE_MODULES[self.model] = GradSampleModule(copy.deepcopy(self.model), loss_reduction="sum")
        set_flat_params(module._module, x)  # type: ignore[arg-type]  # GradSampleModule wraps a Module
        module.train()
        params = list(module.parameters())
        for p in params:
            p.grad, p.grad_sample = None, None
        if len(indices) == 0:
            return torch.zeros(0, self.dim)
        chunk = PER_SAMPLE_CHUNK if self.device.type == "cpu" else len(indices)
        chunks = []
        try:
            for start in range(0, len(indices), chunk):
                rows = indices[start : start + chunk].to(self.device)
                with warnings.catch_warnings():
                    # Opacus' hooks need only the gradients of the layers' outputs; that the data does
                    # not require a gradient is expected, and torch's warning about it is noise to a user
                    warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
                    xb, yb = self._examples(rows)
                    self.loss_fn(module(xb), yb, reduction="sum").backward()
                chunks.append(torch.cat([p.grad_sample.reshape(len(rows), -1) for p in params], 1).detach().cpu())
                for p in params:
                    p.grad, p.grad_sample = None, None
        except BaseException:
            # a pass cut short (out of memory, an interrupt) leaves Opacus' stack of activations
            # behind, and every later pass of this process would read the stale ones: start anew
            _GRAD_SAMPLE_MODULES.pop(self.model, None)
            raise
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        """Mean loss and accuracy at x over all samples."""
        set_flat_params(self.model, x)
        self.model.eval()
        loss_sum, correct = 0.0, 0
        for start in range(0, len(self.data), EVAL_BATCH):
            xb, yb = self._examples(slice(start, start + EVAL_BATCH))
            logits = self.model(xb)
            loss_sum += float(self.loss_fn(logits, yb, reduction="sum"))
            if logits.shape[1] == 1:
                predictions = (logits[:, 0] > 0).long()
            else:
                predictions = logits.argmax(1)
            correct += int((predictions == yb).sum())
        n = len(self.data)
        return {"loss": loss_sum / n + float(nonconvex_regularizer(x, self.regularizer_lambda)), "accuracy": correct / n}

    def initial_point(self) -> torch.Tensor:
        return get_flat_params(self.model).cpu()


def local_pseudo_gradient(
    oracle: Objective, x: torch.Tensor, steps: int, lr: float, batch_size: int, generator: torch.Generator | None
) -> tuple[float, torch.Tensor]:
    """K local SGD steps y_{k+1} = y_k - lr * g(y_k) from y_0 = x: (mean minibatch loss, (x - y_K) / (lr K)).

    The pseudo-gradient a client of Fed-alpha-NormEC feeds to its error compensation; with K = 1
    it is the stochastic gradient at x.
    """
    if steps < 1 or lr <= 0:
        raise ValueError(f"local steps need steps >= 1 and lr > 0, got {steps}, {lr}")
    y = x.clone()
    losses = []
    for _ in range(steps):
        loss, grad = oracle.stochastic_gradient(y, batch_size, generator)
        y = y - lr * grad
        losses.append(loss)
    return sum(losses) / steps, (x - y) / (lr * steps)
