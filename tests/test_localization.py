"""Localizing memorization: layer groups, rewinding, retraining, neuron flipping, example-tied dropout,
gradient accounting, and all five scripts + the notebook on a tiny digits run."""

import copy
import os

import numpy as np
import pytest
import torch
from torch import nn

from utils.example_tied_dropout import ExampleTiedDropout, ExampleTiedNet, etd_groups, etd_mode, unit_hash
from utils.gradient_accounting import GradientAccounting
from utils.layer_groups import UnitMasks, frozen_except, hidden_groups, layer_groups, merge_groups
from utils.localization import layer_rewinding, load_group, open_run, retrain_group
from utils.models import build_model, forward
from utils.neuron_flipping import flip_example
from utils.train import Callback, load_model, train

from .conftest import ROOT, run_script


# ----------------------------------------------------------------------------- layer groups
@pytest.mark.parametrize("name,width,size,cin", [
    ("cifar_resnet18", 4, 32, 3), ("resnet9", 4, 32, 3), ("vit_small", 24, 32, 3), ("digits_mlp", 0, 8, 1),
    ("digits_cnn", 0, 8, 1),
])
def test_layer_groups_cover_every_parameter_once(name, width, size, cin):
    model = build_model(name, 10, cin, size, width)
    for m in (model, ExampleTiedNet(build_model(name, 10, cin, size, width), 0.2, 0.1)):
        groups = layer_groups(m)
        params = [k for g in groups for k in g.params]
        buffers = [k for g in groups for k in g.buffers]
        assert sorted(params) == sorted(n for n, _ in m.named_parameters()) and len(set(params)) == len(params)
        assert sorted(buffers) == sorted(n for n, _ in m.named_buffers()) and len(set(buffers)) == len(buffers)
        assert sorted(params + buffers) == sorted(m.state_dict())
        for depth in (1, 2):
            merged = merge_groups(copy.deepcopy(groups), depth)
            assert sorted(k for g in merged for k in g.keys) == sorted(m.state_dict())
        assert hidden_groups(m)[-1].name != groups[-1].name  # the classifier is not a hidden group


def test_layer_groups_follow_the_module_tree():
    groups = {g.name: g for g in layer_groups(build_model("resnet9", 10, 3, 32, 4))}
    assert groups["prep.0"].modules == ["prep.0", "prep.1"] and groups["prep.0"].output == "prep.1"
    assert "prep.1.running_mean" in groups["prep.0"].buffers and groups["prep.0"].n_units == 4
    assert list(groups)[-1] == "fc" and groups["fc"].unit_dim == -1
    vit = {g.name: g for g in layer_groups(build_model("vit_small", 10, 3, 32, 24))}
    assert vit["<root>"].params == ["pos"]  # a loose parameter is a group of its own, without units
    assert vit["blocks.0.attn"].modules == ["blocks.0.norm1", "blocks.0.attn"]  # pre-norm joins the next layer
    assert vit["blocks.0.mlp.0"].modules == ["blocks.0.norm2", "blocks.0.mlp.0"]
    r18 = {g.name: g for g in merge_groups(layer_groups(build_model("cifar_resnet18", 10, 3, 32, 4)), 2)}
    assert list(r18) == ["stem.0", *[f"layer{i}.{j}" for i in range(1, 5) for j in range(2)], "fc"]


# ----------------------------------------------------------------------------- a tiny run with BatchNorm
@pytest.fixture(scope="module")
def bn_run(tmp_path_factory):
    from .conftest import tiny_cfg

    cfg = tiny_cfg(tmp_path_factory.mktemp("bn"), "model.name=resnet9", "model.width=4", "train.epochs=2",
                   "train.lr=0.05")
    train(cfg)
    return cfg


def _logits(model, run):
    x = torch.stack([run.data.train_eval[i][1] for i in range(64)])
    with torch.no_grad():
        return model.eval()(x)


def test_rewinding_to_final_is_identity_and_all_to_epoch0_is_init(bn_run):
    run = open_run(bn_run)
    model, groups = run.model, layer_groups(run.model)
    final_out = _logits(model, run)
    final_state = copy.deepcopy(model.state_dict())
    for g in groups:
        load_group(model, g, final_state)
        assert torch.equal(_logits(model, run), final_out)
    init = load_model(torch.load(run.ckpts[0][1], weights_only=True))
    assert not torch.allclose(final_out, _logits(init, run))
    state0 = init.state_dict()
    for g in groups:
        load_group(model, g, state0)  # includes BatchNorm running statistics
    assert torch.equal(_logits(model, run), _logits(init, run))
    model.load_state_dict(final_state)
    rows = layer_rewinding(run, [2])
    base = rows[0]
    assert all(r["noisy_acc"] == base["noisy_acc"] and r["test_acc"] == base["test_acc"] for r in rows[1:])
    assert len(rows) == 1 + len(groups)


def test_retraining_leaves_every_other_parameter_bit_identical(bn_run):
    run = open_run(bn_run)
    model = run.model
    groups = layer_groups(model)
    g = next(x for x in groups if x.name == "layer2.0")
    before = copy.deepcopy(model.state_dict())
    retrain_group(model, g, run, epochs=1, lr=0.05)
    after = model.state_dict()
    for k in before:
        if k in g.keys:
            continue
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["layer2.0.weight"], after["layer2.0.weight"])
    assert not torch.equal(before["layer2.1.running_mean"], after["layer2.1.running_mean"])  # its own BN trains
    assert all(p.requires_grad for p in model.parameters())  # flags restored
    with frozen_except(model, g) as params:
        assert [n for n, p in model.named_parameters() if p.requires_grad] == g.params and len(params) == 3
        assert model.get_submodule("layer2.1").training and not model.get_submodule("layer1.0.1").training


# ----------------------------------------------------------------------------- neuron flipping
class CarrierNet(nn.Module):
    """Hidden unit 2 fires only for x* = (1, 1) and carries it to class 1; units 0, 1 vote for class 0."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.body[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
            self.body[0].bias.copy_(torch.tensor([0.0, 0.0, -1.5]))
            self.fc.weight.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 10.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.body(x))


def test_neuron_flipping_finds_the_carrier_unit():
    model = CarrierNet().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    groups = hidden_groups(model)
    assert [g.name for g in groups] == ["body.0"]
    x = torch.tensor([[1.0, 1.0]])
    ref = (torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]), torch.tensor([0, 0, 0]))
    with UnitMasks(model, groups) as masks:
        assert int(model(x).argmax()) == 1
        flipped, zeroed = flip_example(model, masks, x, 1, ref, max_units=3)
        assert flipped and zeroed == [2]
        assert masks.masks["body.0"].tolist() == [1.0, 1.0, 0.0] and int(model(x).argmax()) == 0
    # the cap ends the search: not flipped within 0 units; a misclassified example flips with none
    with UnitMasks(model, groups) as masks:
        assert flip_example(model, masks, x, 1, ref, max_units=0) == (False, [])
        assert flip_example(model, masks, x, 0, ref, max_units=5) == (True, [])


# ----------------------------------------------------------------------------- example-tied dropout
def test_example_tied_masks():
    d = ExampleTiedDropout(100, p_gen=0.3, p_mem=0.2, seed=7, layer=1)
    assert (d.n_gen, d.n_mem, d.k) == (30, 70, 14)
    idx = torch.arange(2000)
    m = d.mask(idx)
    assert torch.equal(m, d.mask(idx)) and torch.equal(m[[5, 1500]], d.mask(torch.tensor([5, 1500])))
    assert torch.equal(m[:, :30], torch.ones(2000, 30))
    assert torch.equal(m[:, 30:].sum(1), torch.full((2000,), 14.0))  # exactly k of the memorization units
    assert len({tuple(r.tolist()) for r in m[:200]}) == 200  # different across indices
    assert not torch.equal(m, ExampleTiedDropout(100, 0.3, 0.2, seed=8, layer=1).mask(idx))
    assert not torch.equal(m, ExampleTiedDropout(100, 0.3, 0.2, seed=7, layer=2).mask(idx))
    freq = m[:, 30:].mean(0)  # every memorization unit is kept at the configured rate (binomial, 6 sigma)
    assert float((freq - 0.2).abs().max()) < 6 * (0.2 * 0.8 / 2000) ** 0.5
    h = unit_hash(0, 0, torch.tensor([3, 2**40 + 3]), 8)
    assert h.min() >= 0 and h.max() < 2**32 and not torch.equal(h[0], h[1])


def test_example_tied_modes_equal_masked_forwards():
    torch.manual_seed(0)
    net = build_model("digits_cnn", 10, 1, 8, 4)
    model = ExampleTiedNet(copy.deepcopy(net), p_gen=0.25, p_mem=0.5, seed=3).eval()
    assert model.group_names == ["conv.0", "conv.2", "head.1"]
    x, idx = torch.randn(6, 1, 8, 8), torch.tensor([0, 4, 9, 11, 500, 7])
    layers = list(model.etd)
    groups = etd_groups(model)
    with torch.no_grad():
        with etd_mode(model, "drop"):
            drop = model(x)
        with etd_mode(model, "test"):
            test = model(x)
        with UnitMasks(net.eval(), groups) as masks:
            for g, d in zip(groups, layers):
                masks.masks[g.name][d.n_gen:] = 0.0
            ref_drop = net(x)
            for g, d in zip(groups, layers):
                masks.masks[g.name][d.n_gen:] = d.keep_rate
            ref_test = net(x)
            assert torch.equal(drop, ref_drop) and torch.allclose(test, ref_test, atol=1e-6)
            assert not torch.allclose(drop, test)
            model.train()
            trained = model(x, index=idx)
            for b in range(len(idx)):  # training mode: each example with its own mask
                for g, d in zip(groups, layers):
                    masks.masks[g.name] = d.mask(idx[b:b + 1])[0]
                assert torch.allclose(trained[b], net(x[b:b + 1])[0], atol=1e-6)
    with pytest.raises(RuntimeError, match="indices"):
        model(x)
    assert torch.equal(forward(model.eval(), x), test)


# ----------------------------------------------------------------------------- gradient accounting
def test_gradient_accounting_parts_sum_to_the_step_gradient(tiny, tmp_path):
    cfg = tiny("train.epochs=2", "data.subset=200")
    ga = GradientAccounting(tmp_path / "acc.npz", keep_last=True)
    checked = []

    class Check(Callback):
        def on_step_end(self, state):
            gc, gn = ga.last
            for p, a, b in zip(ga.params, gc, gn):
                torch.testing.assert_close(a + b, p.grad, rtol=1e-5, atol=1e-7)
            checked.append(bool(any(float(b.abs().sum()) > 0 for b in gn)))

    train(cfg, [ga, Check()])
    assert len(checked) == 2 * 7 and any(checked)
    z = np.load(tmp_path / "acc.npz")
    assert z["clean_sq"].shape == (14, 3) and list(z["group_names"]) == ["body.1", "body.3", "fc"]
    assert (z["n_clean"] + z["n_noisy"]).sum() == 2 * 200 and list(np.unique(z["epoch"])) == [1, 2]
    # the stored norms and dot product rebuild |g|^2 of the last step per group
    gc, gn = ga.last
    full = [float(((a + b).double() ** 2).sum()) for a, b in zip(gc, gn)]
    per_group = np.bincount(ga.owner.numpy(), weights=full)
    np.testing.assert_allclose(z["clean_sq"][-1] + z["noisy_sq"][-1] + 2 * z["dot"][-1], per_group, rtol=1e-6)


# ----------------------------------------------------------------------------- scripts and notebook
def test_five_scripts_and_notebook_on_a_tiny_digits_run(tmp_path):
    common = [f"paths.pretrained={tmp_path}/pre", f"paths.scores={tmp_path}/scores", f"paths.logs={tmp_path}/logs",
              "data.subset=300", "train.epochs=4", "train.batch_size=32"]
    loc = ["localization.rewind_epochs=[0,2]", "localization.retrain_epochs=1", "localization.flip_clean=3",
           "localization.flip_noisy=3", "localization.flip_max_units=40", "localization.flip_batch=16"]
    out = tmp_path / "scores" / "tiny" / "localization"
    r = run_script("layer_rewinding.py", "run=tiny", *common)
    assert r.returncode == 2 and r.stderr.startswith("error: no checkpoints") and len(r.stderr.splitlines()) == 1
    for script in ("gradient_accounting.py", "layer_rewinding.py", "layer_retraining.py", "neuron_flipping.py"):
        r = run_script(script, "run=tiny", *common, *loc)
        assert r.returncode == 0, script + r.stderr[-2000:]
    r = run_script("example_tied_dropout.py", "run=tiny_etd", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    names = {p.name for p in out.iterdir()}
    for stem in ("accounting", "rewinding", "retraining", "flipping_summary"):
        assert {f"{stem}.csv", f"{stem}.md"} <= names
    assert {"accounting.npz", "flipping.npz", "accounting.png", "rewinding.png", "retraining.png", "flipping_hist.png",
            "flipping_layers.png"} <= names
    etd_out = tmp_path / "scores" / "tiny_etd" / "localization"
    assert {"etd.csv", "etd.md", "etd.npz", "etd.png"} <= {p.name for p in etd_out.iterdir()}
    z = np.load(out / "flipping.npz")
    assert len(set(z["index"].tolist())) == len(z["index"]) and (~z["is_noisy"]).sum() == 3 and z["is_noisy"].sum() <= 3
    rw = (out / "rewinding.csv").read_text().splitlines()
    assert len(rw) == 1 + 1 + 2 * 3  # header, final model, 2 epochs x 3 groups
    from PIL import Image

    with Image.open(out / "rewinding.png") as im:
        assert abs(im.info["dpi"][0] - 150) < 1

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "localization.ipynb", as_version=4)
    os.environ.update(LOCALIZATION_RUN="tiny", LOCALIZATION_ETD_RUN="tiny_etd", LOCALIZATION_SCORES=str(tmp_path / "scores"))
    try:
        client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}})
        client.execute()
    finally:
        for k in ("LOCALIZATION_RUN", "LOCALIZATION_ETD_RUN", "LOCALIZATION_SCORES"):
            os.environ.pop(k, None)
    text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "| mode |" in text and "| group |" in text and "image/png" in str(nb.cells)
