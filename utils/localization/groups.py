"""Layer groups read off a model's module tree, and forward hooks that mask a group's units.

A *group* is one weight layer (conv, linear, attention, embedding) together with its
normalisation layer: a BatchNorm/GroupNorm after a conv joins the conv before it (post-norm),
a LayerNorm joins the weight layer after it (pre-norm, as in transformer blocks). Parameters
held directly by other modules (e.g. a ViT's position embedding) form groups of their own.
Every parameter and buffer of the model belongs to exactly one group, so methods that act on
groups (rewinding, retraining, gradient accounting, neuron flipping, example-tied dropout)
share one partition.

The *units* of a group are the channels (conv) or features (linear, attention) of the output
of its last module, i.e. of the normalised pre-activation.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models import classifier

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                 nn.Linear, nn.MultiheadAttention, nn.Embedding)
CONV_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
POST_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
PRE_NORMS = (nn.LayerNorm,)


@dataclass
class LayerGroup:
    """One group: module names in registration order, the state_dict keys it owns, and its units."""

    name: str
    modules: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)
    output: str | None = None  # module whose output carries the units (None: no units, e.g. a loose parameter)
    unit_dim: int = 1  # 1: channels of (B, C, ...) conv outputs; -1: last dim of (B, ..., F)
    n_units: int = 0

    @property
    def keys(self) -> list[str]:
        """state_dict keys of the group (parameters, then buffers such as BN running statistics)."""
        return self.params + self.buffers


def _units(module: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "embed_dim", "num_features", "embedding_dim", "num_channels"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    return 0


def _leaf_units(model: nn.Module) -> list[tuple[str, str, nn.Module, list[str], list[str]]]:
    """(kind, name, module, param keys, buffer keys) for every module that owns state, in registration order.
    Weight layers are atomic (an attention layer's out_proj is part of it)."""
    out = []
    seen: set[int] = set()

    def keys(mod: nn.Module, prefix: str, recurse: bool) -> tuple[list[str], list[str]]:
        ps, bs = [], []
        for n, p in mod.named_parameters(prefix=prefix, recurse=recurse):
            if id(p) not in seen:
                seen.add(id(p))
                ps.append(n)
        bs = [n for n, b in mod.named_buffers(prefix=prefix, recurse=recurse) if b is not None]
        return ps, bs

    def walk(mod: nn.Module, prefix: str) -> None:
        if isinstance(mod, WEIGHT_LAYERS):
            out.append(("weight", prefix, mod, *keys(mod, prefix, True)))
            return
        if isinstance(mod, POST_NORMS) or isinstance(mod, PRE_NORMS):
            kind = "post" if isinstance(mod, POST_NORMS) else "pre"
            out.append((kind, prefix, mod, *keys(mod, prefix, True)))
            return
        ps, bs = keys(mod, prefix, False)
        if ps or bs:
            out.append(("other", prefix, mod, ps, bs))
        for n, child in mod.named_children():
            walk(child, f"{prefix}.{n}" if prefix else n)

    walk(model, "")
    return out


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Partition of the model's parameters and buffers into layer groups (see module doc)."""
    groups: list[LayerGroup] = []
    pending: list[tuple[str, list[str], list[str]]] = []  # pre-norms waiting for their weight layer
    last_kind = ""
    for kind, name, mod, ps, bs in _leaf_units(model):
        if not ps and not bs and kind != "weight":
            continue
        if kind == "weight":
            g = LayerGroup(name or "<root>", output=name, n_units=_units(mod),
                           unit_dim=1 if isinstance(mod, CONV_LAYERS) else -1)
            for n, p2, b2 in pending:
                g.modules.append(n)
                g.params += p2
                g.buffers += b2
            pending = []
            g.modules.append(name)
            g.params += ps
            g.buffers += bs
            groups.append(g)
        elif kind == "post" and groups and last_kind == "weight":
            g = groups[-1]
            g.modules.append(name)
            g.params += ps
            g.buffers += bs
            g.output, g.n_units = name, _units(mod)
        elif kind in ("pre", "post"):
            pending.append((name, ps, bs))
        else:  # parameters / buffers held by a container: a group without units
            groups.append(LayerGroup(name or "<root>", [name], ps, bs, output=None, n_units=0))
        last_kind = kind
    if pending:  # a final norm with no weight layer after it joins the last group
        target = groups[-1] if groups else LayerGroup("<norm>")
        if not groups:
            groups.append(target)
        for n, p2, b2 in pending:
            target.modules.append(n)
            target.params += p2
            target.buffers += b2
    return groups


def merge_groups(groups: list[LayerGroup], depth: int) -> list[LayerGroup]:
    """Coarser groups: merge consecutive groups whose names share their first `depth` dot-separated parts
    (depth 0 keeps the finest groups). A merged group's units are those of its last member."""
    if depth <= 0:
        return groups
    out: list[LayerGroup] = []
    for g in groups:
        key = ".".join(g.name.split(".")[:depth])
        if out and out[-1].name == key:
            m = out[-1]
            m.modules += g.modules
            m.params += g.params
            m.buffers += g.buffers
            if g.output is not None:
                m.output, m.unit_dim, m.n_units = g.output, g.unit_dim, g.n_units
        else:
            out.append(LayerGroup(key, list(g.modules), list(g.params), list(g.buffers), g.output, g.unit_dim, g.n_units))
    return out


def classifier_group(model: nn.Module, groups: list[LayerGroup]) -> int:
    """Index of the group holding the classifier (`utils.models.classifier`: timm's get_classifier(), `fc`, `head`
    or `classifier`), else the last group with units."""
    fc = classifier(model)
    if isinstance(fc, nn.Module):
        ids = {id(p) for p in fc.parameters()}
        named = dict(model.named_parameters())
        for i, g in enumerate(groups):
            if any(id(named[k]) in ids for k in g.params):
                return i
    return max(i for i, g in enumerate(groups) if g.output is not None)


def hidden_groups(model: nn.Module, groups: list[LayerGroup] | None = None) -> list[LayerGroup]:
    """The groups whose units are hidden neurons: every group with units except the classifier."""
    groups = layer_groups(model) if groups is None else groups
    skip = classifier_group(model, groups)
    return [g for i, g in enumerate(groups) if g.output is not None and i != skip and g.n_units > 0]


def unit_view(mask: torch.Tensor, out: torch.Tensor, unit_dim: int) -> torch.Tensor:
    """Reshape a (C,) or (B, C) mask so it broadcasts over an output whose units lie on `unit_dim`."""
    if unit_dim == -1 or unit_dim == out.dim() - 1:
        if mask.dim() == 2 and out.dim() > 2:
            return mask.view(mask.shape[0], *([1] * (out.dim() - 2)), mask.shape[1])
        return mask
    shape = [1] * out.dim()
    shape[1] = mask.shape[-1]
    if mask.dim() == 2:
        shape[0] = mask.shape[0]
    return mask.view(shape)


def register_output_hook(model: nn.Module, group: LayerGroup, fn) -> torch.utils.hooks.RemovableHandle:
    """Forward hook on the group's output module that replaces its output tensor `t` by `fn(t)`
    (for modules returning tuples, e.g. attention, the first element)."""
    module = model.get_submodule(group.output)

    def hook(mod, inputs, out):
        if isinstance(out, tuple):
            return (fn(out[0]), *out[1:])
        return fn(out)

    return module.register_forward_hook(hook)


class UnitMasks:
    """Multiply the units of the given groups by 0/1 masks (all ones at start) during forward passes,
    and keep the masked activations of the last forward pass in `acts` (for gradients w.r.t. units).
    Use as a context manager; the hooks are removed on exit."""

    def __init__(self, model: nn.Module, groups: list[LayerGroup]) -> None:
        self.model, self.groups = model, groups
        dev = next(model.parameters()).device
        self.masks = {g.name: torch.ones(g.n_units, device=dev) for g in groups}
        self.acts: dict[str, torch.Tensor] = {}
        self.handles: list = []

    def _fn(self, g: LayerGroup):
        def fn(t: torch.Tensor) -> torch.Tensor:
            t = t * unit_view(self.masks[g.name].to(t.dtype), t, g.unit_dim)
            self.acts[g.name] = t
            # a copy goes on: in-place layers after the group (timm's ReLU(inplace=True), `x += shortcut`) must not
            # overwrite the activations that the gradients w.r.t. units are taken of
            return t.clone()

        return fn

    def __enter__(self) -> UnitMasks:
        self.handles = [register_output_hook(self.model, g, self._fn(g)) for g in self.groups]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        self.acts = {}

    def zero(self, group: str, unit: int) -> None:
        self.masks[group][unit] = 0.0

    def n_zeroed(self) -> int:
        return int(sum(int((m == 0).sum()) for m in self.masks.values()))


def per_unit_sum(t: torch.Tensor, unit_dim: int) -> torch.Tensor:
    """Sum a (B, ...) tensor over every dimension except batch and units -> (B, C)."""
    if unit_dim == -1 or unit_dim == t.dim() - 1:
        return t.reshape(t.shape[0], -1, t.shape[-1]).sum(1)
    return t.flatten(2).sum(2) if t.dim() > 2 else t


@contextmanager
def frozen_except(model: nn.Module, group: LayerGroup):
    """Only the group's parameters require grad, and only its modules are in train mode (so no other
    BatchNorm updates its running statistics); the previous flags and modes are restored on exit."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    own = set(group.params)
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(n in own)
        model.eval()
        for n in group.modules:
            model.get_submodule(n).train()
        yield [p for n, p in model.named_parameters() if n in own]
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        for n, m in model.named_modules():
            m.train(modes[n])
