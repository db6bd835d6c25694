"""Model registry: a model is a config value (`model.name`), never a copy of code.

Every builder takes `num_classes`, `in_channels`, `image_size`, `width` and `activation`
and returns an `nn.Module` mapping images (B, C, H, W) in the normalised input space to
logits (B, num_classes). Besides the registered names, `timm:<name>` builds a timm model and
`<module>:<callable>` calls a user's own factory (`utils.zoo`; arguments from `model.kwargs`).

Wrapper hook: a research line that changes the model of a run (example-tied dropout) registers
`register_wrapper(name, fn, keys)`; `wrap_model` applies every registered wrapper, so the shared core
builds wrapped models without importing the line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import DEFAULTS
from .errors import UserError
from .zoo import TIMM, build_custom, build_timm, check_name, is_external

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}


def _act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown model.activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


# ----------------------------------------------------------------------------- CIFAR ResNet-18
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = _act(act)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act2 = _act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem, no max-pool (the curvature paper's model)."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64, act: str = "relu") -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), _act(act))
        chans, strides = [w, 2 * w, 4 * w, 8 * w], [1, 2, 2, 2]
        layers, cin = [], w
        for cout, s in zip(chans, strides):
            layers.append(nn.Sequential(BasicBlock(cin, cout, s, act), BasicBlock(cout, cout, 1, act)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, 8*width)."""
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


# ----------------------------------------------------------------------------- ResNet-9
def _conv_bn(cin: int, cout: int, act: str, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), _act(act)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    def __init__(self, c: int, act: str) -> None:
        super().__init__()
        self.res1 = _conv_bn(c, c, act)
        self.res2 = _conv_bn(c, c, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res2(self.res1(x))


class ResNet9(nn.Module):
    """ResNet-9 (Myrtle / DAWNBench layout; the localization paper's CIFAR model)."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64, act: str = "relu") -> None:
        super().__init__()
        w = width
        self.prep = _conv_bn(in_channels, w, act)
        self.layer1 = nn.Sequential(_conv_bn(w, 2 * w, act, pool=True), Residual(2 * w, act))
        self.layer2 = _conv_bn(2 * w, 4 * w, act, pool=True)
        self.layer3 = nn.Sequential(_conv_bn(4 * w, 8 * w, act, pool=True), Residual(8 * w, act))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(8 * w, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return torch.flatten(self.pool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


# ----------------------------------------------------------------------------- small ViT
class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, act: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), _act(act), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A small Vision Transformer for small images (patch 4 on 32x32 gives 64 tokens)."""

    def __init__(
        self, num_classes: int, in_channels: int, image_size: int, dim: int = 192, depth: int = 6,
        heads: int = 3, patch: int = 4, mlp_ratio: int = 2, act: str = "gelu",
    ) -> None:
        super().__init__()
        patch = min(patch, image_size)
        n_tokens = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, n_tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp_ratio, act) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.norm(self.blocks(x)).mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


# ----------------------------------------------------------------------------- digits
class DigitsMLP(nn.Module):
    """MLP for 8x8 digits: in -> width -> width -> classes (64-128-128-10 by default)."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, width: int = 128, act: str = "relu") -> None:
        super().__init__()
        d = in_channels * image_size * image_size
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(d, width), _act(act), nn.Linear(width, width), _act(act))
        self.fc = nn.Linear(width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class DigitsCNN(nn.Module):
    """Small CNN for 8x8 digits: two 3x3 convs, 2x2 max-pool, two linear layers (no BatchNorm)."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int, width: int = 32, act: str = "relu") -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), _act(act),
            nn.Conv2d(width, 2 * width, 3, padding=1), _act(act), nn.MaxPool2d(2),
        )
        side = image_size // 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * side * side, 128), _act(act))
        self.fc = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _torchvision(arch: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int, image_size: int, width: int, act: str) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        return model

    return build


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cifar_resnet18": lambda num_classes, in_channels, image_size, width, act: CifarResNet18(
        num_classes, in_channels, width or 64, act or "relu"),
    "resnet9": lambda num_classes, in_channels, image_size, width, act: ResNet9(
        num_classes, in_channels, width or 64, act or "relu"),
    "vit_small": lambda num_classes, in_channels, image_size, width, act: ViT(
        num_classes, in_channels, image_size, dim=width or 192, act=act or "gelu"),
    "resnet18": _torchvision("resnet18"),
    "resnet50": _torchvision("resnet50"),
    "digits_mlp": lambda num_classes, in_channels, image_size, width, act: DigitsMLP(
        num_classes, in_channels, image_size, width or 128, act or "relu"),
    "digits_cnn": lambda num_classes, in_channels, image_size, width, act: DigitsCNN(
        num_classes, in_channels, image_size, width or 32, act or "relu"),
}


def _unknown(name: str) -> UserError:
    import difflib

    near = difflib.get_close_matches(name, sorted(MODELS), n=1, cutoff=0.75)
    hint = f"; did you mean {near[0]}?" if near else ""
    try:  # the name of a timm model, without the prefix
        import timm

        if timm.is_model(name) or (not near and timm.list_models(f"{name}*")):
            hint = f"; for timm's model write model.name=timm:{name if timm.is_model(name) else name + '...'}"
    except ImportError:
        pass
    return UserError(f"unknown model.name {name!r}{hint}; known: {', '.join(sorted(MODELS))}, timm:<name> (timm's "
                     "zoo), <module>:<callable> (your own factory; README \"Your model\")")


def check_model(model_cfg: dict[str, Any], given: set[str] | frozenset[str] = frozenset()) -> None:
    """Validate `model.name` and `model.kwargs` without building anything (and before any data is loaded); `given`:
    the flat keys the user set (`utils.zoo.check_name`)."""
    name = model_cfg["name"]
    if is_external(name):
        check_name(model_cfg, given)
    elif name not in MODELS:
        raise _unknown(name)
    elif model_cfg.get("kwargs"):
        raise UserError(f"model.kwargs applies to timm:<name> and <module>:<callable> models, not to the registered "
                        f"{name!r} (use model.width / model.activation)")


def build_model(name: str, num_classes: int, in_channels: int, image_size: int,
                width: int = 0, activation: str = "", kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build a registered model, a timm model (`timm:<name>`) or a user's factory (`<module>:<callable>`);
    `width=0` / `activation=""` mean the model's default; `kwargs`: architecture arguments of the latter two."""
    kwargs = dict(kwargs or {})
    check_model({"name": name, "width": width, "activation": activation, "kwargs": kwargs})
    if name.startswith(TIMM):
        return build_timm(name[len(TIMM):], num_classes, in_channels, image_size, kwargs)
    if is_external(name):
        return build_custom(name, num_classes, in_channels, image_size, width, activation, kwargs)
    return MODELS[name](num_classes, in_channels, image_size, width, activation)


# ----------------------------------------------------------------------------- the wrapper hook
Wrapper = Callable[[nn.Module, dict[str, Any]], nn.Module]
_WRAPPERS: dict[str, tuple[Wrapper, tuple[str, ...]]] = {}


def register_wrapper(name: str, fn: Wrapper, keys: tuple[str, ...] = ()) -> None:
    """Register `fn(model, model_cfg) -> model` (the model wrapped, or unchanged when `model_cfg` asks for nothing),
    applied by `wrap_model` to every model built from a config; `keys` are the `model.*` keys it reads (a key of
    these set away from its default while no wrapper claims it is refused). Registering a name again replaces it."""
    _WRAPPERS[name] = (fn, tuple(keys))


def wrapper_modules(model_cfg: dict[str, Any]) -> list[str]:
    """The modules of the registered wrappers that this config switches on (one of their keys away from its
    default): what the run record keeps, so that a later stage imports them before rebuilding the model."""
    on = [fn.__module__ for fn, keys in _WRAPPERS.values()
          if any(model_cfg.get(k, DEFAULTS["model"].get(k)) != DEFAULTS["model"].get(k) for k in keys)]
    return sorted(set(on))


def check_wrappers(model_cfg: dict[str, Any]) -> None:
    """A `model.*` key that no builder reads (not name, width, activation, kwargs) and no registered wrapper claims,
    set away from its default, is refused in one line: the module that reads it did not register its wrapper."""
    claimed = {k for _, keys in _WRAPPERS.values() for k in keys}
    for key, default in DEFAULTS["model"].items():
        if key not in ("name", "width", "activation", "kwargs") and key not in claimed \
                and model_cfg.get(key, default) != default:
            raise UserError(f"model.{key}={model_cfg[key]!r} is read by a model wrapper that is not registered in this "
                            "process (utils.models.register_wrapper); import the package that registers it first, as "
                            "the top-level scripts do")


def wrap_model(model: nn.Module, model_cfg: dict[str, Any]) -> nn.Module:
    """`model` passed through every registered wrapper (`check_wrappers` first)."""
    check_wrappers(model_cfg)
    for fn, _ in _WRAPPERS.values():
        model = fn(model, model_cfg)
    return model


# ----------------------------------------------------------------------------- calling a model
def input_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a model's inputs should have: that of its first floating parameter (float32 without any)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def forward(model: nn.Module, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Call a model; models that route by example (example-tied dropout) also get the indices. A float64 model
    (`train.dtype=float64`) gets float64 inputs (lower-precision batches are cast up, exactly)."""
    inner = getattr(model, "module", model)
    if x.is_floating_point() and x.dtype != torch.float64 and input_dtype(inner) == torch.float64:
        x = x.to(torch.float64)
    if index is not None and getattr(inner, "takes_index", False):
        return model(x, index=index)
    return model(x)


def classifier(model: nn.Module) -> nn.Module | None:
    """The final classification layer: timm's `get_classifier()`, else `model.fc` / `head` / `classifier` (the
    first that is a module with parameters), else the last `nn.Linear` registered in the module tree, else None."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            out = get()
            if isinstance(out, nn.Module):
                return out
        except (AttributeError, NotImplementedError):
            pass
    for attr in ("fc", "head", "classifier"):
        out = getattr(model, attr, None)
        if isinstance(out, nn.Module) and any(True for _ in out.parameters()):
            return out
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linear[-1] if linear else None


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features (B, F): `model.features(x)` where the model has it, timm's
    `forward_head(forward_features(x), pre_logits=True)`, else the input of `classifier(model)` (flattened).
    Inputs are cast to the model's dtype (`input_dtype`)."""
    dtype = input_dtype(model)
    x = x.to(dtype) if x.is_floating_point() and x.dtype != dtype else x
    if callable(getattr(model, "features", None)):
        return model.features(x)
    if callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None)):
        return model.forward_head(model.forward_features(x), pre_logits=True)
    head = classifier(model)
    if head is None:
        raise UserError(f"{type(model).__name__} has no features(), no timm forward_head and no classifier attribute "
                        "(fc / head / classifier): give it a features(x) method returning (B, F)")
    got: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda mod, args: got.append(args[0]))
    try:
        forward(model, x)
    finally:
        handle.remove()
    return got[-1].flatten(1)


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample (B,), in float32 even under autocast (float64 logits stay float64)."""
    return F.cross_entropy(logits if logits.dtype == torch.float64 else logits.float(), labels, reduction="none")


@contextlib.contextmanager
def double_backward_attention(model: nn.Module | None = None) -> Iterator[None]:
    """Attention whose backward is twice differentiable, needed by every Hessian-vector product through a ViT: the
    math scaled-dot-product kernel (the fused flash / memory-efficient kernels have no double backward: "derivative
    for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented"), and, for `model`, timm's
    own unfused attention path (every module with a boolean `fused_attn`, timm's convention, set False inside and
    restored after): the same numbers (tested to 1e-12), without relying on the kernel choice."""
    flags = [(m, m.fused_attn) for m in model.modules() if isinstance(getattr(m, "fused_attn", None), bool)] \
        if model is not None else []
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernel = sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # pragma: no cover - older torch
        kernel = contextlib.nullcontext()
    try:
        for m, _ in flags:
            m.fused_attn = False
        with kernel:
            yield
    finally:
        for m, f in flags:
            m.fused_attn = f
