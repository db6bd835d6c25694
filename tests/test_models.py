import pytest
import torch

from utils.errors import UserError
from utils.models import MODELS, build_model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_give_logits(name):
    torch.manual_seed(0)
    if name.startswith("digits"):
        c, s = 1, 8
    elif name in ("resnet18", "resnet50"):
        c, s = 3, 64
    else:
        c, s = 3, 32
    width = 8 if name in ("cifar_resnet18", "resnet9") else (48 if name == "vit_small" else 0)
    m = build_model(name, 7, c, s, width=width).eval()
    assert m(torch.randn(2, c, s, s)).shape == (2, 7)


def test_unknown_model_lists_known():
    with pytest.raises(UserError, match="cifar_resnet18"):
        build_model("resnet7", 10, 3, 32)
