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


def test_string_keys_keep_the_text():
    cfg = load_config(None, ["run=on", "data.folder=2024", "score.method=fd"])
    assert cfg["run"] == "on" and cfg["data"]["folder"] == "2024"


def test_int_accepted_for_float_key():
    assert load_config(None, ["train.lr=1"])["train"]["lr"] == 1.0


def test_unknown_key_suggests_the_nearest_and_lists_its_section():
    with pytest.raises(UserError) as e:
        load_config(None, ["train.epoch=3"])
    msg = str(e.value)
    assert "did you mean train.epochs?" in msg and "\n" not in msg and len(msg) < 600
    train_keys = [k.split(".", 1)[1] for k in VALID_KEYS if k.startswith("train.")]
    assert all(k in msg for k in train_keys) and "score.h" not in msg  # its section only, not all keys
    with pytest.raises(UserError, match="did you mean score.n_probes"):
        load_config(None, ["score.nprobes=3"])
    with pytest.raises(UserError, match="did you mean train.lr"):
        load_config(None, ["optim.lr=3"])


def test_yaml_error_gives_line_and_column(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  epochs: 3\n  lr: [0.1\n")
    with pytest.raises(UserError, match=r"line \d+, column \d+") as e:
        load_config(p)
    assert "\n" not in str(e.value)


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
    assert a["run"] == "digits_digits_mlp_symmetric0.1_n0_s0"
    # runs that differ by default in a seed never share a derived name
    names = {load_config(ROOT / "configs/digits.yaml", o)["run"] for o in ([], ["noise.seed=1"], ["train.seed=1"])}
    assert len(names) == 3
    b = load_config(ROOT / "configs/digits.yaml", ["train.epochs=99", "paths.pretrained=/elsewhere"])
    c = load_config(ROOT / "configs/digits.yaml", ["noise.seed=1"])
    assert identity_hash(a) == identity_hash(b) != identity_hash(c)


def test_every_config_file_loads():
    for p in sorted((ROOT / "configs").rglob("*.yaml")):
        load_config(p)


def test_a_run_recorded_before_a_key_existed_gets_the_value_it_was_trained_with():
    """noise.canary_confused came with a new default (0.19); a canary run recorded before it flipped every canary to
    the confused-with class (1.0), and a later stage must rebuild exactly those labels, under the same identity."""
    from utils.config import ADDED_LATER, DEFAULTS, flatten
    from utils.runs import merge_run_config

    new = load_config(None, ["run=r", "noise.canaries=0.01"])
    old = {s: dict(new[s]) for s in ("data", "noise", "model", "train")}
    del old["noise"]["canary_confused"]
    merged = merge_run_config(old, load_config(None, ["run=r"]), "r")
    assert DEFAULTS["noise"]["canary_confused"] != 1.0 and merged["noise"]["canary_confused"] == 1.0
    assert identity_hash(merged) == identity_hash({**new, "noise": {**new["noise"], "canary_confused": 1.0}})
    assert identity_hash(new) != identity_hash(merged)
    assert set(ADDED_LATER) <= set(flatten(DEFAULTS)) | {"model.kwargs"}
