"""Counter-based hashing on tensors: the same bits on every device, rank and batch, no generator state.

Used for per-example dropout masks (localization) and per-sample curvature probes. All arithmetic is
on int64 tensors holding 32-bit values, so CPU and CUDA give identical results.
"""

from __future__ import annotations

import torch

M32 = 0xFFFFFFFF


def mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x in [0, 2**32) without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + ((x * hi) & 0xFFFF) * 65536) & M32


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors (or Python ints) holding 32-bit values."""
    h = h ^ (h >> 16)
    h = mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def mix_index(h: torch.Tensor | int, index: torch.Tensor) -> torch.Tensor:
    """Fold a (B,) int64 index (both 32-bit halves) into hash values h ((1,) tensor or int) -> (B, 1)."""
    idx = index.to(torch.int64).view(-1, 1)
    h = fmix32(h ^ (idx & M32))
    return fmix32(h ^ ((idx >> 32) & M32))


def key_hash(*keys: int) -> int:
    """A 32-bit hash of small non-negative integers (seeds, epochs, layer ids, streams), computed on the CPU:
    a Python int, so device code uses it without a host-to-device copy."""
    h = 0
    for k in keys:
        h = fmix32(h ^ ((k * 0x9E3779B1 + 0x632BE5AB) & M32))  # fmix32's operators work on Python ints too
    return h


def rademacher_hash(keys: tuple[int, ...], index: torch.Tensor, n_probes: int, numel: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """+-1 entries (n_probes, B, numel), entry (k, i, j) a hash of (keys, index[i], k, j): identical on every
    device, and sample i's probes do not depend on its batch or rank."""
    dev = index.device
    h = mix_index(key_hash(*keys), index)  # (B, 1)
    probe = torch.arange(n_probes, dtype=torch.int64, device=dev).view(-1, 1, 1)
    elem = torch.arange(numel, dtype=torch.int64, device=dev).view(1, 1, -1)
    bits = fmix32(fmix32(h.unsqueeze(0) ^ mul32(probe, 0x27D4EB2F)) ^ elem) >> 31  # top bit of 32
    return (bits * 2 - 1).to(dtype)
