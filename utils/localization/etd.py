"""Example-tied dropout (Maini et al., ICML 2023): route memorization into chosen units.

Each hidden layer's units split into `n_gen = round(p_gen * C)` generalization units (always on)
and `C - n_gen` memorization units, of which each training example keeps exactly
`k = round(p_mem * (C - n_gen))`, chosen by a counter-based hash of (seed, layer, example index,
unit). Masks are recomputed from the index on every forward pass: no N x C cache, no global RNG.
Evaluation modes: `test` scales memorization units by their keep rate k / (C - n_gen); `drop`
removes them (only generalization units remain).

Importing this module registers `wrap_if_configured` with the model registry's wrapper hook
(`utils.models.register_wrapper`), so every model built from a config with `model.etd_p_mem > 0` (training,
and every later stage through `utils.runs.model_for`) is an `ExampleTiedNet`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..errors import UserError
from ..hashing import M32, fmix32, mix_index
from ..models import classifier, features, register_wrapper
from .groups import LayerGroup, hidden_groups, layer_groups, register_output_hook, unit_view

MODES = ("test", "drop")  # the evaluation modes of the paper
ALL_MODES = (*MODES, "example")
KEYS = ("etd_p_gen", "etd_p_mem", "etd_seed", "etd_layers")  # the model.* keys of the wrapper


def unit_hash(seed: int, layer: int, index: torch.Tensor, n_units: int) -> torch.Tensor:
    """Deterministic 32-bit hash values (B, n_units) of (seed, layer, example index, unit), int64."""
    dev = index.device
    base = torch.tensor([(seed * 0x9E3779B1 + (layer + 1) * 0x632BE5AB) & M32], dtype=torch.int64, device=dev)
    h = mix_index(fmix32(base), index)
    units = torch.arange(n_units, dtype=torch.int64, device=dev).view(1, -1)
    return fmix32(fmix32(h ^ units))


class ExampleTiedDropout(nn.Module):
    """Mask over the `channels` units of one layer's output (units on `unit_dim`)."""

    def __init__(self, channels: int, p_gen: float, p_mem: float, seed: int = 0, layer: int = 0, unit_dim: int = 1) -> None:
        super().__init__()
        if not (0.0 <= p_gen <= 1.0 and 0.0 < p_mem <= 1.0):
            raise UserError(f"example-tied dropout needs 0 <= model.etd_p_gen <= 1 and 0 < model.etd_p_mem <= 1, "
                            f"got {p_gen}, {p_mem}")
        self.channels, self.seed, self.layer, self.unit_dim = channels, seed, layer, unit_dim
        self.n_gen = int(round(p_gen * channels))
        self.n_mem = channels - self.n_gen
        self.k = int(round(p_mem * self.n_mem))
        self.keep_rate = self.k / self.n_mem if self.n_mem else 1.0
        self.mode = "test"  # evaluation mode: test | drop

    def extra_repr(self) -> str:
        return f"channels={self.channels}, n_gen={self.n_gen}, keep={self.k}/{self.n_mem}, layer={self.layer}"

    def mask(self, index: torch.Tensor) -> torch.Tensor:
        """(B, C) 0/1 float mask of the examples `index` (B,): generalization units first, then memorization."""
        b = index.shape[0]
        m = torch.zeros(b, self.channels, device=index.device)
        m[:, : self.n_gen] = 1.0
        if self.k:
            h = unit_hash(self.seed, self.layer, index, self.n_mem)
            keep = h.topk(self.k, dim=1, largest=False).indices + self.n_gen
            m.scatter_(1, keep, 1.0)
        return m

    def eval_scale(self, mode: str, device: torch.device | None = None) -> torch.Tensor:
        """(C,) multiplier of evaluation mode `mode` (test | drop)."""
        if mode not in MODES:
            raise UserError(f"example-tied dropout mode {mode!r} has no fixed scale; known: {', '.join(MODES)}")
        s = torch.ones(self.channels, device=device)
        s[self.n_gen:] = self.keep_rate if mode == "test" else 0.0
        return s

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        if self.training or self.mode == "example":
            if index is None:
                raise RuntimeError("example-tied dropout in training / `example` mode needs the example indices "
                                   "(call utils.models.forward(model, x, index))")
            m = self.mask(index.to(x.device))
        else:
            m = self.eval_scale(self.mode, x.device)
        return x * unit_view(m.to(x.dtype), x, self.unit_dim)


class ExampleTiedNet(nn.Module):
    """A model with example-tied dropout on the output units of every hidden layer group.
    `forward(x, index=None)`; `features(x)` and `fc` are those of the wrapped model."""

    takes_index = True

    def __init__(self, net: nn.Module, p_gen: float, p_mem: float, seed: int = 0, last: int = 0) -> None:
        super().__init__()
        self.net = net
        groups = hidden_groups(net, layer_groups(net))
        groups = groups[-last:] if last > 0 else groups
        self.group_names = [g.name for g in groups]
        self.etd = nn.ModuleList(ExampleTiedDropout(g.n_units, p_gen, p_mem, seed, i, g.unit_dim) for i, g in enumerate(groups))
        self._index: torch.Tensor | None = None
        for g, d in zip(groups, self.etd):
            register_output_hook(net, g, self._etd_hook(d))

    def _etd_hook(self, d: ExampleTiedDropout):
        def fn(t: torch.Tensor) -> torch.Tensor:
            return d(t, self._index)

        return fn

    def get_classifier(self) -> nn.Module | None:
        """The wrapped model's classifier (`utils.models.classifier`)."""
        return classifier(self.net)

    @property
    def fc(self) -> nn.Module | None:
        return self.get_classifier()

    def features(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """The wrapped model's penultimate features (`utils.models.features`)."""
        self._index = index
        try:
            return features(self.net, x)
        finally:
            self._index = None

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        self._index = index
        try:
            return self.net(x)
        finally:
            self._index = None


def etd_layers(model: nn.Module) -> list[ExampleTiedDropout]:
    return [m for m in model.modules() if isinstance(m, ExampleTiedDropout)]


def etd_groups(model: ExampleTiedNet) -> list[LayerGroup]:
    """The wrapped model's groups that carry example-tied dropout (names relative to `model.net`)."""
    return [g for g in hidden_groups(model.net, layer_groups(model.net)) if g.name in model.group_names]


@contextmanager
def etd_mode(model: nn.Module, mode: str):
    """Evaluate with every example-tied dropout layer in `mode` (test | drop | example); restored on exit."""
    layers = etd_layers(model)
    if not layers:
        raise UserError("the model has no example-tied dropout; train it with model.etd_p_mem > 0")
    if mode not in ALL_MODES:
        raise UserError(f"unknown example-tied dropout mode {mode!r}; known: {', '.join(ALL_MODES)}")
    old = [d.mode for d in layers]
    try:
        for d in layers:
            d.mode = mode
        yield model
    finally:
        for d, m in zip(layers, old):
            d.mode = m


def wrap_if_configured(model: nn.Module, model_cfg: dict) -> nn.Module:
    """Wrap in `ExampleTiedNet` when `model.etd_p_mem > 0` (older configs without the keys: unchanged)."""
    p_mem = float(model_cfg.get("etd_p_mem", 0.0) or 0.0)
    if p_mem <= 0:
        return model
    return ExampleTiedNet(model, float(model_cfg.get("etd_p_gen", 0.2)), p_mem, int(model_cfg.get("etd_seed", 0)),
                          int(model_cfg.get("etd_layers", 0)))


register_wrapper("example_tied_dropout", wrap_if_configured, KEYS)
