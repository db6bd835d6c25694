"""Model registry: a model is a config value (`model.name`), never a copy of code.

Every builder takes `num_classes`, `in_channels`, `image_size`, `width` and `activation`
and returns an `nn.Module` mapping images (B, C, H, W) in the normalised input space to
logits (B, num_classes).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

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


def build_model(name: str, num_classes: int, in_channels: int, image_size: int,
                width: int = 0, activation: str = "") -> nn.Module:
    """Build a registered model; `width=0` / `activation=""` mean the model's default."""
    if name not in MODELS:
        raise UserError(f"unknown model.name {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes, in_channels, image_size, width, activation)


def forward(model: nn.Module, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Call a model; models that route by example (example-tied dropout) also get the indices."""
    inner = getattr(model, "module", model)
    if index is not None and getattr(inner, "takes_index", False):
        return model(x, index=index)
    return model(x)


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample (B,), in float32 even under autocast (float64 logits stay float64)."""
    return F.cross_entropy(logits if logits.dtype == torch.float64 else logits.float(), labels, reduction="none")


def double_backward_attention() -> contextlib.AbstractContextManager:
    """Attention kernels whose backward is twice differentiable (the fused flash / memory-efficient
    scaled-dot-product kernels are not): needed by every Hessian-vector product through a ViT."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    except ImportError:  # pragma: no cover - older torch
        return contextlib.nullcontext()
