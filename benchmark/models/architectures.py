"""Small architectures for the embedded digits zoo (inputs: 1x16x16 images in [0, 1]).

``build(arch, **arch_args)`` constructs one by name; registry entries say ``source: builtin:<arch>``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {}


def architecture(name: str):
    def deco(cls):
        ARCHITECTURES[name] = cls
        return cls

    return deco


class Normalize(nn.Module):
    """Normalisation lives inside the model: inputs stay in [0, 1] everywhere else."""

    def __init__(self, mean: float | list[float], std: float | list[float]):
        super().__init__()
        m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", m, persistent=False)
        self.register_buffer("std", s, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


DIGITS_MEAN, DIGITS_STD = 0.3, 0.4  # rough pixel statistics of the 16x16 digits


@architecture("mlp")
class MLP(nn.Module):
    def __init__(self, hidden: int = 128, depth: int = 2, in_shape: tuple[int, int, int] = (1, 16, 16),
                 num_classes: int = 10):
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = [Normalize(DIGITS_MEAN, DIGITS_STD), nn.Flatten()]
        d = c * h * w
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@architecture("cnn")
class SmallCNN(nn.Module):
    def __init__(self, width: int = 16, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            Normalize(DIGITS_MEAN, DIGITS_STD),
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Flatten(), nn.Linear(2 * w * 16, 64), nn.ReLU(), nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@architecture("lenet")
class LeNet(nn.Module):
    """LeNet-5 style: a 5x5 then a 3x3 convolution with ReLU, two pools; a third arch family
    so the zoo's ID-vs-OOD trend is not an artefact of one architecture."""

    def __init__(self, c1: int = 6, c2: int = 16, hidden: int = 84, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            Normalize(DIGITS_MEAN, DIGITS_STD),
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Flatten(), nn.Linear(c2 * 16, hidden), nn.ReLU(), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build(arch: str, **arch_args: Any) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise KeyError(f"unknown builtin architecture '{arch}' (known: {', '.join(sorted(ARCHITECTURES))})")
    return ARCHITECTURES[arch](**arch_args)
