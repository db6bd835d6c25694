"""What the training loop exposes to the modules that hook into it (online scoring, gradient accounting,
spectra at given steps): the loop's state and the `Callback` interface. The loop never learns about them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .data import DataBundle
from .distributed import Dist


@dataclass
class TrainState:
    cfg: dict[str, Any]
    dist: Dist
    data: DataBundle
    model: nn.Module  # the bare model (what checkpoints hold)
    net: nn.Module  # what forward passes use: the DDP wrapper or the model itself
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    stop: bool = False  # a callback may set this to end training after the current step


class Callback:
    """Hooks into the loop; override what you need. `losses` are per-sample (B,), before backward."""

    def on_train_start(self, state: TrainState) -> None: ...
    def on_batch_loss(self, state: TrainState, losses: torch.Tensor, index: torch.Tensor, loss: torch.Tensor) -> None: ...
    def on_step_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState, metrics: dict[str, Any]) -> None: ...
