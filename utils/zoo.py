"""Models from outside the registry: timm's zoo (`model.name=timm:<name>`) and a user's own factory
(`model.name=<module>:<callable>`). Both take architecture arguments from `model.kwargs` (a mapping), which the
run record keeps with the name, so every later stage rebuilds the same model from `run=<name>` alone.

- `timm:<name>`: `timm.create_model(name, pretrained=False, num_classes=, in_chans=, img_size=<the data's image
  size, where the architecture takes one>, **model.kwargs)`. Never pretrained: no hub access at run time.
- `<module>:<callable>`: `module` is imported from the working directory or `PYTHONPATH` (a dotted path, e.g.
  `mymodels:small_cnn` for ./mymodels.py); the callable gets the keyword arguments `num_classes`, `in_channels`,
  `image_size`, `width`, `activation` (0 / "" = your default) and `model.kwargs`, those its signature names (all of
  them where it takes **kwargs; a key of model.kwargs it does not take is refused), and returns an `nn.Module`
  mapping (B, C, H, W) images to (B, num_classes) logits.

`check_name(model_cfg)` validates the name (and imports what it needs) without building anything: training calls
it before any data is loaded, so a typo never waits for a data set download.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

from torch import nn

from .errors import UserError

TIMM = "timm:"
ARGS = ("num_classes", "in_channels", "image_size", "width", "activation")  # what a custom factory may take


def is_external(name: str) -> bool:
    """True for `timm:<name>` and `<module>:<callable>` names (anything with a colon)."""
    return ":" in name


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("model.name=timm:... needs timm (pip install -r requirements.txt)") from None
    return timm


def check_timm(arch: str) -> None:
    """A one-line UserError naming the nearest timm models when `arch` is not one of timm's."""
    timm = _timm()
    if not arch or not timm.is_model(arch):
        near = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.5)
        hint = (f"; nearest: {', '.join(near)}" if near
                else "; list them with: python -c \"import timm; print(timm.list_models('*vit*'))\"")
        raise UserError(f"unknown timm model {arch!r} (model.name=timm:{arch}){hint}")


def _import_callable(name: str) -> Callable[..., nn.Module]:
    mod_name, _, attr = name.partition(":")
    if not mod_name or not attr:
        raise UserError(f"model.name={name!r}: write <module>:<callable>, e.g. mymodels:small_cnn for ./mymodels.py")
    if os.getcwd() not in sys.path and "" not in sys.path:  # the working directory, as for `python -m`
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name and mod_name.startswith(e.name):
            raise UserError(f"model.name={name!r}: no module {mod_name!r} in the working directory {os.getcwd()} or on "
                            "PYTHONPATH; run from the directory that holds it or add it to PYTHONPATH") from None
        raise
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
            near = difflib.get_close_matches(attr, public, n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else f"; callables there: {', '.join(public[:12])}"
            raise UserError(f"model.name={name!r}: module {mod_name} ({module.__file__}) has no {attr!r}{hint}")
    if not callable(fn):
        raise UserError(f"model.name={name!r}: {attr!r} in {mod_name} is not callable")
    return fn


def check_name(model_cfg: dict[str, Any], given: set[str] | frozenset[str] = frozenset()) -> None:
    """Validate `model.name` / `model.kwargs` of an external model without building it (UserError if wrong).

    `model.width` / `model.activation` do not apply to timm models and reach a factory only where its signature
    takes them; either is refused when the user set it (`given`: the flat keys of the command line or an explicit
    --config), else left out silently (a script's own config may set a width for its default model)."""
    name, kwargs = model_cfg["name"], model_cfg.get("kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise UserError(f"model.kwargs must be a mapping of argument names to values, got {model_cfg.get('kwargs')!r}")
    set_by_user = [k for k in ("width", "activation") if f"model.{k}" in given and model_cfg.get(k) not in (0, "")]
    if name.startswith(TIMM):
        check_timm(name[len(TIMM):])
        if set_by_user:
            raise UserError(f"model.{set_by_user[0]} does not apply to timm models; give timm's own argument in "
                            "model.kwargs (e.g. model.kwargs={embed_dim: 192} or {act_layer: gelu})")
        clash = sorted(set(kwargs) & {"num_classes", "in_chans", "pretrained"})
        if clash:
            raise UserError(f"model.kwargs {clash} are set from the data set (pretrained is always false); drop them")
        return
    fn = _import_callable(name)
    clash = sorted(set(kwargs) & set(ARGS))
    if clash:
        raise UserError(f"model.kwargs {clash} are set by the toolkit (num_classes, in_channels, image_size from the "
                        "data; width, activation from model.width / model.activation); drop them from model.kwargs")
    takes = _accepts(fn)
    missing = [k for k in [*set_by_user, *kwargs] if takes is not None and k not in takes]
    if missing:
        raise UserError(f"model.name={name!r} takes no argument {', '.join(missing)} (its signature: "
                        f"{inspect.signature(fn)}); drop the key or add the argument")


def _accepts(fn: Callable) -> set[str] | None:
    """Keyword names `fn` accepts; None when it takes **kwargs (or its signature cannot be read)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


def build_timm(arch: str, num_classes: int, in_channels: int, image_size: int, kwargs: dict[str, Any]) -> nn.Module:
    """timm.create_model(arch, pretrained=False, ...) with the data's image size where the architecture takes one."""
    timm = _timm()
    check_timm(arch)
    args = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels, **kwargs}
    what = f"timm model {arch!r} (in_chans={in_channels}, num_classes={num_classes}, model.kwargs={kwargs})"
    if "img_size" not in kwargs:
        try:
            model = timm.create_model(arch, img_size=image_size, **args)
            grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
            if grid is not None and min(grid) < 1:
                raise UserError(f"{what}: its patches are larger than the {image_size}x{image_size} images; pass a "
                                "smaller patch, e.g. model.kwargs={patch_size: 4}")
            return model
        except TypeError as e:
            if "img_size" not in str(e):  # an architecture without img_size: built without it below
                raise UserError(f"{what} refused its arguments: {e}") from None
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - timm's own checks (e.g. a patch larger than the image)
            raise UserError(f"{what} cannot be built for {image_size}x{image_size} images: {type(e).__name__}: {e}; "
                            "adjust model.kwargs (e.g. {patch_size: 4})") from None
    try:
        return timm.create_model(arch, **args)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{what} cannot be built: {type(e).__name__}: {e}") from None


def build_custom(name: str, num_classes: int, in_channels: int, image_size: int, width: int, activation: str,
                 kwargs: dict[str, Any]) -> nn.Module:
    """The user's factory `<module>:<callable>` called with the documented keyword arguments it accepts."""
    fn = _import_callable(name)
    args = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size, "width": width,
            "activation": activation, **kwargs}
    takes = _accepts(fn)
    if takes is not None:
        args = {k: v for k, v in args.items() if k in takes}
    model = fn(**args)
    if not isinstance(model, nn.Module):
        raise UserError(f"model.name={name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
