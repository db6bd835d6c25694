"""What the training loop exposes to the modules that hook into it (online scoring, gradient accounting,
spectra at given steps): the loop's state and the `Callback` interface. The loop never learns about them.

Callbacks reach the loop in two ways: passed to `utils.train.train(cfg, callbacks)` by the caller (gradient
accounting, the ESM grid's spectra), or made from the config by a factory that a research line registers
(`register_callbacks`; the online scorer of `utils.curvature.scoring` for `score.online=true`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .data import DataBundle
from .distributed import Dist
from .errors import UserError


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


# ----------------------------------------------------------------------------- callbacks made from the config
Factory = Callable[[dict[str, Any]], list[Callback]]
_FACTORIES: dict[str, tuple[Factory, tuple[str, ...]]] = {}
SWITCHES = {"score.online": False}  # config keys only a registered factory acts on (refused when none claims them)


def register_callbacks(name: str, factory: Factory, keys: tuple[str, ...] = ()) -> None:
    """Register `factory(cfg) -> [Callback, ...]` (empty when the config asks for nothing), called by every training
    run; `keys`: the flat config keys it acts on. Registering a name again replaces it."""
    _FACTORIES[name] = (factory, tuple(keys))


def check_switches(cfg: dict[str, Any]) -> None:
    """A key of `SWITCHES` set away from its default while no registered factory claims it is refused in one line
    (it would silently do nothing)."""
    claimed = {k for _, keys in _FACTORIES.values() for k in keys}
    for key, default in SWITCHES.items():
        section, leaf = key.split(".")
        if key not in claimed and cfg[section][leaf] != default:
            raise UserError(f"{key}={cfg[section][leaf]!r} needs a callback that is not registered in this process "
                            "(utils.callbacks.register_callbacks); train through the train_*.py scripts, or import the "
                            "module that registers it first")


def configured_callbacks(cfg: dict[str, Any]) -> list[Callback]:
    """The callbacks of every registered factory for `cfg` (`check_switches` first)."""
    check_switches(cfg)
    return [cb for factory, _ in _FACTORIES.values() for cb in factory(cfg)]
