import pytest

from utils.config import VALID_KEYS, identity_hash, load_config
from utils.errors import UserError

from .conftest import ROOT


def test_overrides_parse_as_yaml():
    cfg = load_config(ROOT / "configs/digits.yaml", ["noise.rate=0.05", "train.epochs=30", "run=my_run",
                                                     "train.milestones=[3, 5]", "train.amp=false", "score.h=1e-4"])
    assert cfg["noise"]["rate"] == 0.05 and cfg["train"]["epochs"] == 30 and cfg["run"] == "my_run"
    assert cfg["train"]["milestones"] == [3, 5] and cfg["train"]["amp"] is False
    assert cfg["score"]["h"] == pytest.approx(1e-4) and isinstance(cfg["score"]["h"], float)


def test_int_accepted_for_float_key():
    assert load_config(None, ["train.lr=1"])["train"]["lr"] == 1.0


def test_unknown_key_lists_valid_keys():
    with pytest.raises(UserError) as e:
        load_config(None, ["train.epoch=3"])
    msg = str(e.value)
    assert "train.epoch" in msg and "train.epochs" in msg and "\n" not in msg
    assert all(k in msg for k in VALID_KEYS)


@pytest.mark.parametrize("item", ["train.epochs=abc", "train.amp=3", "noise.rate=[1]", "train.milestones=5"])
def test_wrong_type_rejected(item):
    with pytest.raises(UserError, match="wants"):
        load_config(None, [item])


def test_unknown_key_in_yaml(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: {epochs: 3, lrate: 0.1}\n")
    with pytest.raises(UserError, match="train.lrate"):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_default_run_name_and_identity():
    a = load_config(ROOT / "configs/digits.yaml")
    assert a["run"] == "digits_digits_mlp_symmetric0.1_s0"
    b = load_config(ROOT / "configs/digits.yaml", ["train.epochs=99", "paths.pretrained=/elsewhere"])
    c = load_config(ROOT / "configs/digits.yaml", ["noise.seed=1"])
    assert identity_hash(a) == identity_hash(b) != identity_hash(c)


def test_every_config_file_loads():
    for p in sorted((ROOT / "configs").rglob("*.yaml")):
        load_config(p)
