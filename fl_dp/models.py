"""Models, all Opacus-compatible (GroupNorm, no BatchNorm), and flat-vector views of their parameters."""

from __future__ import annotations

import torch
from torch import nn


class LogisticRegression(nn.Module):
    """A linear model on flattened inputs: multinomial (num_classes > 2) or binary (one logit)."""

    def __init__(self, num_features: int, num_classes: int, bias: bool = True) -> None:
        super().__init__()
        out = 1 if num_classes == 2 else num_classes
        self.linear = nn.Linear(num_features, out, bias=bias)
        nn.init.zeros_(self.linear.weight)
        if bias:
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class SmallCNN(nn.Module):
    """Two conv blocks with GroupNorm, pooled to 4x4, and a linear head (~19k parameters).

    ``activation`` is ReLU by default; ``nn.Tanh`` gives the bounded activation that Papernot et al.
    (AAAI 2021, "Tempered Sigmoid Activations for Deep Learning with Differential Privacy") found to
    train better under clipped, noised updates (model ``cnn-tanh``).
    """

    def __init__(self, in_channels: int, num_classes: int, activation: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 5, padding=2),
            nn.GroupNorm(4, 16),
            activation(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2),
            nn.GroupNorm(4, 32),
            activation(),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


class DPCNN(nn.Module):
    """The end-to-end CNN for 28x28 images of Papernot et al. (AAAI 2021) and Tramer and Boneh
    (ICLR 2021), "DP-CNN/S" in Zhu and Blaschko's Table 2 (26,010 parameters): conv 16 8x8 /2,
    max-pool 2 /1, conv 32 4x4 /2, max-pool 2 /1, linear 32, linear; tanh throughout, no norm."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 8, stride=2, padding=2),
            nn.Tanh(),
            nn.MaxPool2d(2, stride=1),
            nn.Conv2d(16, 32, 4, stride=2),
            nn.Tanh(),
            nn.MaxPool2d(2, stride=1),
        )
        self.head = nn.Sequential(nn.Linear(32 * 4 * 4, 32), nn.Tanh(), nn.Linear(32, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(min(8, planes), planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(min(8, planes), planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.GroupNorm(min(8, planes), planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 (He et al. 2016, 3x3 blocks of 16/32/64 channels) with GroupNorm, for 32x32 inputs."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.GroupNorm(8, 16), nn.ReLU())
        layers: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for block in range(3):
                layers.append(_BasicBlock(in_planes, planes, stride if block == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


MODELS = ("logreg", "cnn", "cnn-tanh", "dp-cnn", "resnet20")


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> nn.Module:
    """Model ``name`` for inputs of ``input_shape`` (without batch), initialised from ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "logreg":
            num_features = 1
            for size in input_shape:
                num_features *= size
            return LogisticRegression(num_features, num_classes)
        if len(input_shape) != 3 and name in ("cnn", "cnn-tanh", "dp-cnn", "resnet20"):
            raise ValueError(f"model {name!r} needs image inputs (C, H, W), got shape {input_shape}")
        if name == "dp-cnn" and tuple(input_shape[1:]) != (28, 28):
            raise ValueError(f"model 'dp-cnn' is built for 28x28 images, got shape {input_shape}")
        if name == "cnn":
            return SmallCNN(input_shape[0], num_classes)
        if name == "cnn-tanh":
            return SmallCNN(input_shape[0], num_classes, activation=nn.Tanh)
        if name == "dp-cnn":
            return DPCNN(input_shape[0], num_classes)
        if name == "resnet20":
            return ResNet20(input_shape[0], num_classes)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def get_flat_params(model: nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()


def set_flat_params(model: nn.Module, flat: torch.Tensor) -> None:
    expected = num_params(model)
    if flat.numel() != expected:
        raise ValueError(f"parameter vector has {flat.numel()} entries, the model has {expected}")
    # copy into the parameters' own storage: vector_to_parameters would alias ``flat``
    offset = 0
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def get_flat_grad(model: nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in model.parameters()]).detach()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
