"""Localizing memorization: layer groups, rewinding, retraining, neuron flipping, example-tied dropout,
gradient accounting, and all five scripts + the notebook on a tiny digits run."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from utils.callbacks import Callback
from utils.localization.accounting import GradientAccounting
from utils.localization.etd import ExampleTiedDropout, ExampleTiedNet, etd_groups, etd_mode, unit_hash
from utils.localization.flipping import flip_example
from utils.localization.groups import UnitMasks, frozen_except, hidden_groups, layer_groups, merge_groups
from utils.localization.methods import layer_rewinding, load_group, retrain_group
from utils.localization.report import heatmap_figure, retraining_figure
from utils.models import build_model, forward
from utils.runs import model_for, open_run
from utils.train import train

from .conftest import execute_notebook, run_script


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
    model = run.load_model(-1)
    groups = layer_groups(model)
    final_out = _logits(model, run)
    final_state = copy.deepcopy(model.state_dict())
    for g in groups:
        load_group(model, g, final_state)
        assert torch.equal(_logits(model, run), final_out)
    init = model_for(run.cfg, run.record)
    init.load_state_dict(run.checkpoint(0)["model"])
    init.eval()
    assert not torch.allclose(final_out, _logits(init, run))
    state0 = init.state_dict()
    for g in groups:
        load_group(model, g, state0)  # includes BatchNorm running statistics
    assert torch.equal(_logits(model, run), _logits(init, run))
    model.load_state_dict(final_state)
    rows = layer_rewinding(run, [2], model)
    base = rows[0]
    assert all(r["noisy_acc"] == base["noisy_acc"] and r["test_acc"] == base["test_acc"] for r in rows[1:])
    assert len(rows) == 1 + len(groups)


def test_retraining_leaves_every_other_parameter_bit_identical(bn_run):
    run = open_run(bn_run)
    model = run.load_model(-1)
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
def _reference_sums(ga: GradientAccounting) -> np.ndarray:
    """The former host-side accumulation: float() of every per-parameter float64 sum, added per group."""
    gc, gn = ga.last
    out = np.zeros((3, len(ga.groups)))
    for i, a, b in zip(ga.owner.tolist(), gc, gn):
        a64, b64 = a.double(), b.double()
        out[0, i] += float((a64 * a64).sum())
        out[1, i] += float((b64 * b64).sum())
        out[2, i] += float((a64 * b64).sum())
    return out


class _SyncCounter:
    """Counts tensor -> host conversions (float/int/bool/item/tolist/numpy/cpu) inside a `with` block."""

    NAMES = ("__float__", "__int__", "__bool__", "item", "tolist", "numpy", "cpu")

    def __init__(self) -> None:
        self.count, self.saved = 0, {}

    def __enter__(self):
        for name in self.NAMES:
            orig = getattr(torch.Tensor, name)
            self.saved[name] = torch.Tensor.__dict__.get(name)

            def wrapped(t, *a, _orig=orig, **k):
                self.count += 1
                return _orig(t, *a, **k)

            setattr(torch.Tensor, name, wrapped)
        return self

    def __exit__(self, *exc) -> None:
        for name, own in self.saved.items():  # put back the class's own attribute, or the inherited one
            if own is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, own)


def test_gradient_accounting_parts_sum_to_the_step_gradient(tiny, tmp_path):
    cfg = tiny("train.epochs=2", "data.subset=200")
    checked, syncs = [], []

    class Counting(GradientAccounting):
        def on_batch_loss(self, state, losses, index, loss):
            with _SyncCounter() as c:
                super().on_batch_loss(state, losses, index, loss)
            syncs.append(c.count)

    ga = Counting(tmp_path / "acc.npz", keep_last=True)

    class Check(Callback):
        def on_step_end(self, state):
            gc, gn = ga.last
            for p, a, b in zip(ga.params, gc, gn):
                torch.testing.assert_close(a + b, p.grad, rtol=1e-5, atol=1e-7)
            checked.append(bool(any(float(b.abs().sum()) > 0 for b in gn)))
            # the per-step sums stay on the device; they equal the former host accumulation bit for bit
            ref = _reference_sums(ga)
            assert np.array_equal(ga.pending[-1][3][:-1].cpu().numpy().reshape(3, -1), ref)

    train(cfg, [ga, Check()])
    assert len(checked) == 2 * 7 and any(checked)
    assert syncs == [0] * 14, "gradient accounting must not move anything to the host per step"
    z = np.load(tmp_path / "acc.npz")
    assert z["clean_sq"].shape == (14, 3) and list(z["group_names"]) == ["body.1", "body.3", "fc"]
    assert (z["n_clean"] + z["n_noisy"]).sum() == 2 * 200 and list(np.unique(z["epoch"])) == [1, 2]
    # the stored norms and dot product rebuild |g|^2 of the last step per group
    gc, gn = ga.last
    full = [float(((a + b).double() ** 2).sum()) for a, b in zip(gc, gn)]
    per_group = np.bincount(ga.owner.cpu().numpy(), weights=full)
    np.testing.assert_allclose(z["clean_sq"][-1] + z["noisy_sq"][-1] + 2 * z["dot"][-1], per_group, rtol=1e-6)
    ref = _reference_sums(ga)
    assert np.array_equal(np.stack([z["clean_sq"][-1], z["noisy_sq"][-1], z["dot"][-1]]), ref)


# ----------------------------------------------------------------------------- figures
def test_heatmaps_label_rows_with_layer_names():
    names = [g.name for g in layer_groups(build_model("cifar_resnet18", 10, 3, 32, 4))]
    assert "layer3.1.conv2" in names
    rows = [{"group": "(none)", "epoch": 12, "noisy_acc": 0.6, "clean_acc": 0.9, "test_acc": 0.5}]
    rows += [{"group": g, "epoch": e, "noisy_acc": 0.3, "clean_acc": 0.5, "test_acc": 0.4} for e in (0, 2) for g in names]
    fig = heatmap_figure(rows, "layer rewinding")
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 3
    for ax in panels:  # every panel names its rows; columns are the rewind epochs
        assert [t.get_text() for t in ax.get_yticklabels()] == names
        assert [t.get_text() for t in ax.get_xticklabels()] == ["epoch 0", "epoch 2"]
    retrain = [{**r, "reset_noisy_acc": 0.1, "reset_clean_acc": 0.2} for r in rows if r["epoch"] != 2]
    fig = retraining_figure(retrain)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == names
    import matplotlib.pyplot as plt

    plt.close("all")


# ----------------------------------------------------------------------------- scripts and notebook
def _execute_notebook(run: str, etd_run: str, scores) -> list[dict]:
    """Run notebooks/localization.ipynb headless with its parameters cell replaced; its code outputs."""
    outputs = execute_notebook("localization", f"RUN = {run!r}\nETD_RUN = {etd_run!r}\nSCORES = {str(scores)!r}\n", 120)
    assert not [o for o in outputs if o.get("name") == "stderr"], "no progress bars or warnings in the notebook"
    return outputs


def _text(outputs: list[dict]) -> str:
    return "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", "")) for o in outputs)


def test_notebook_without_accounting_says_so(tmp_path):
    outputs = _execute_notebook("never_ran", "never_ran_etd", tmp_path / "scores")
    printed = "".join(str(o.get("text", "")) for o in outputs if o.get("name") == "stdout")
    assert "never_ran: no accounting yet" in printed and "no neuron flipping yet" in printed


def test_five_scripts_and_notebook_on_a_tiny_digits_run(tmp_path):
    common = [f"paths.pretrained={tmp_path}/pre", f"paths.scores={tmp_path}/scores", f"paths.logs={tmp_path}/logs",
              "data.subset=300", "train.epochs=4", "train.batch_size=32"]
    loc = ["localization.rewind_epochs=[0,2]", "localization.retrain_epochs=1", "localization.flip_clean=3",
           "localization.flip_noisy=3", "localization.flip_max_units=40", "localization.flip_batch=16"]
    out = tmp_path / "scores" / "tiny" / "localization"
    r = run_script("layer_rewinding.py", "run=tiny", *common)
    assert r.returncode == 2 and r.stderr.startswith("error: no run 'tiny'") and len(r.stderr.splitlines()) == 1
    headlines = {"gradient_accounting.py": "noisy share of the gradient norm, epoch 1 -> epoch 4",
                 "layer_rewinding.py": "noisy still memorized after rewinding one group to epoch 0, 2",
                 "layer_retraining.py": "noisy memorized", "neuron_flipping.py": "units to flip"}
    for script, headline in headlines.items():
        r = run_script(script, "run=tiny", *common, *loc)
        assert r.returncode == 0, script + r.stderr[-2000:]
        _check_summary(r.stdout, headline, script)
    r = run_script("example_tied_dropout.py", "run=tiny_etd", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    _check_summary(r.stdout, "drop ", "example_tied_dropout.py")
    assert "example " in r.stdout and "test " in r.stdout
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

    outputs = _execute_notebook("tiny", "tiny_etd", tmp_path / "scores")
    text = _text(outputs)
    assert "| mode |" in text and "| group |" in text and any("image/png" in o.get("data", {}) for o in outputs)
    assert "no accounting yet" not in text


def _check_summary(stdout: str, headline: str, script: str) -> None:
    """A script's closing summary: its headline numbers, then 'written:' and the paths, each one a file."""
    assert headline in stdout, f"{script}: {headline!r} not in\n{stdout[-3000:]}"
    tail = stdout.split("written:\n")[-1].splitlines()
    paths = [ln.strip() for ln in tail if ln.startswith("  ")]
    assert "written:" in stdout and paths, f"{script} lists no written paths"
    from pathlib import Path

    assert all(Path(p).is_file() for p in paths), paths


# ----------------------------------------------------------------------------- the examples under study
@pytest.fixture(scope="module")
def sel_run(tmp_path_factory):
    """A tiny digits run (300 images, 10 % noise) and a fake memorization report of it: ranks 1..7 on
    hand-picked indices (rows shuffled), then every other sample."""
    from .conftest import tiny_cfg

    tmp = tmp_path_factory.mktemp("sel")
    cfg = tiny_cfg(tmp, "train.epochs=2")
    train(cfg)
    run = open_run(cfg)
    given = run.record["given_labels"].numpy()
    top = [17, 3, 250, 41, 99, 5, 123]  # ranks 1..7
    rest = [i for i in range(len(given)) if i not in top]
    order = top + rest
    rows = [(r + 1, i, int(given[i])) for r, i in enumerate(order)]
    rows = rows[3:] + rows[:3]  # not sorted by rank: the reader sorts
    report = tmp / "curv_scores" / "tiny" / "report" / "suspects.csv"
    report.parent.mkdir(parents=True)
    report.write_text("rank,index,given_label\n" + "".join(f"{r},{i},{g}\n" for r, i, g in rows))
    return cfg, top, tmp


def _with(cfg, **loc):
    out = copy.deepcopy(cfg)
    out["localization"].update(loc)
    return out


def _acc_on(run, model, idx):
    """Fraction of the training examples `idx` the model predicts with their given label."""
    x = torch.stack([run.data.train_eval[int(i)][1] for i in idx])
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    return float((pred == run.record["given_labels"][idx]).float().mean())


def test_selection_takes_the_reports_top_rows_and_csvs_of_indices(sel_run, tmp_path):
    from utils.localization.methods import out_dir
    from utils.localization.selection import resolve_selection

    cfg, top, tmp = sel_run
    rec = open_run(cfg).record
    sel = resolve_selection(_with(cfg, examples="report", top=5), rec)
    assert np.flatnonzero(sel.mask).tolist() == sorted(top[:5]) and sel.label == "report top-5"
    assert out_dir(_with(cfg, examples="report", top=5)) == tmp / "curv_scores" / "tiny" / "localization" / "report_top5"
    assert out_dir(cfg) == tmp / "curv_scores" / "tiny" / "localization"  # the default keeps its folder
    plain = tmp_path / "picks.csv"
    plain.write_text("8\n2\n8\n")  # one column, no header, a repeat
    sel = resolve_selection(_with(cfg, examples=str(plain)), rec)
    assert np.flatnonzero(sel.mask).tolist() == [2, 8] and sel.label == "csv picks.csv" and sel.top == 0
    named = tmp_path / "named.csv"
    named.write_text("note,index\na,11\nb,4\n")
    assert np.flatnonzero(resolve_selection(_with(cfg, examples=str(named)), rec).mask).tolist() == [4, 11]
    default = resolve_selection(cfg, rec)
    assert np.array_equal(default.mask, rec["is_noisy"].numpy()) and default.label == "noisy"


def test_rewinding_retraining_and_flipping_study_the_report_rows(sel_run, monkeypatch):
    import utils.localization.methods as methods
    from utils.localization.flipping import neuron_flipping

    cfg, top, _ = sel_run
    run = open_run(_with(cfg, examples="report", top=5))
    studied = sorted(top[:5])
    others = [i for i in range(len(run.record["index"])) if i not in studied]
    model = run.load_model(-1)
    rows = layer_rewinding(run, [0], model)
    assert rows[0]["noisy_acc"] == _acc_on(run, model, studied)
    assert rows[0]["clean_acc"] == _acc_on(run, model, others)
    seen = []
    real = methods.make_loader

    def spy(ds, *a, **k):
        seen.append(list(ds.indices))
        return real(ds, *a, **k)

    monkeypatch.setattr(methods, "make_loader", spy)
    rows = methods.layer_retraining(run, 0, 1, 0.05, only=["fc"], model=model)
    assert seen == [others]  # retrained on every other example, never on a studied one
    assert len(rows) == 2 and rows[1]["group"] == "fc"
    z = neuron_flipping(run, 2, 2, 5, 8, 0, model=model)
    assert set(z["index"][z["studied"]].tolist()) <= set(studied) and not set(z["index"][~z["studied"]]) & set(studied)
    assert np.array_equal(z["is_noisy"], run.record["is_noisy"].numpy()[z["index"]])  # the injected noise, kept


def test_default_examples_equal_a_csv_of_the_noisy_indices(sel_run, tmp_path):
    cfg, _, _ = sel_run
    run = open_run(cfg)
    noisy = tmp_path / "noisy.csv"
    noisy.write_text("index\n" + "".join(f"{i}\n" for i in np.flatnonzero(run.record["is_noisy"].numpy())))
    model = run.load_model(-1)
    assert layer_rewinding(run, [0], model) == layer_rewinding(open_run(_with(cfg, examples=str(noisy))), [0], model)


def test_selection_errors_are_one_line(sel_run, tmp_path):
    from utils.errors import UserError
    from utils.localization.selection import resolve_selection

    cfg, _, _ = sel_run
    rec = open_run(cfg).record
    n = len(rec["index"])

    def err(what, **loc):
        with pytest.raises(UserError) as e:
            resolve_selection(_with(cfg, **loc), what if isinstance(what, dict) else rec)
        assert "\n" not in str(e.value)
        return str(e.value)

    def csv(name, text):
        (tmp_path / name).write_text(text)
        return str(tmp_path / name)

    clean = {"is_noisy": torch.zeros(n, dtype=torch.bool), "given_labels": rec["given_labels"]}
    assert err(clean) == ("run tiny has no injected noise: pass localization.examples=report or a CSV of indices")
    nocfg = _with(cfg, examples="report")
    nocfg["run"] = "other"
    with pytest.raises(UserError, match=r"run other has no memorization report .*run `python memorization_report.py "
                                        r"run=other` first"):
        resolve_selection(nocfg, rec)
    assert "no such CSV file" in err(None, examples=str(tmp_path / "missing.csv"))
    assert "no column named 'index' (columns: a, b)" in err(None, examples=csv("ab.csv", "a,b\n1,2\n"))
    assert f"index {n} is outside the run's {n} training samples" in err(None, examples=csv("big.csv", f"index\n3\n{n}\n"))
    assert "line 3 has index 'x', not an integer" in err(None, examples=csv("x.csv", "index\n3\nx\n"))
    assert "localization.top must be at least 1, got 0" in err(None, examples="report", top=0)
    assert "selects no examples" in err(None, examples=csv("empty.csv", "index\n"))
    assert "nothing is left as the reference set" in err(None, examples="report", top=n + 5)
    g = int(rec["given_labels"][3])
    assert "sample 3 has given_label" in err(None, examples=csv("gl.csv", f"index,given_label\n3,{(g + 1) % 10}\n"))


def test_scripts_study_the_report(sel_run):
    cfg, top, tmp = sel_run
    common = [f"paths.pretrained={tmp}/pretrained", f"paths.scores={tmp}/curv_scores", f"paths.logs={tmp}/logs",
              "localization.rewind_epochs=[0]"]
    r = run_script("layer_rewinding.py", "run=tiny", *common, "localization.examples=report", "localization.top=5")
    assert r.returncode == 0, r.stderr[-2000:]
    _check_summary(r.stdout, "report top-5 still memorized after rewinding one group to epoch 0", "layer_rewinding.py")
    out = tmp / "curv_scores" / "tiny" / "localization" / "report_top5"
    import json

    sel = json.loads((out / "selection.json").read_text())
    assert sel["examples"] == "report" and sel["index"] == sorted(top[:5]) and sel["n_studied"] == 5
    head = (out / "rewinding.csv").read_text().splitlines()[0]
    assert head == "group,epoch,reference_acc,studied_acc,studied_true_acc,test_acc"
    assert (out / "rewinding.md").read_text().startswith("studied = report top-5")
    r = run_script("layer_retraining.py", "run=tiny", *common, "localization.examples=noisy.csv")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert r.stderr.startswith("error: localization.examples=noisy.csv: no such CSV file")


def test_gradient_accounting_counts_the_csv_examples(tiny, tmp_path):
    from utils.errors import UserError
    from utils.localization.accounting import run_gradient_accounting

    picks = [0, 7, 31, 64, 150, 299]
    (tmp_path / "picks.csv").write_text("index\n" + "".join(f"{i}\n" for i in picks))
    cfg = tiny("run=tiny_ga", "train.epochs=1", f"localization.examples={tmp_path / 'picks.csv'}")
    path = run_gradient_accounting(cfg)
    assert path.parent.name == "csv_picks"
    z = np.load(path)
    assert z["n_noisy"].sum() == len(picks) and z["n_clean"].sum() == 300 - len(picks)  # each example once an epoch
    assert np.flatnonzero(z["studied"]).tolist() == picks
    assert "| (csv picks.csv share of examples) |" in (path.parent / "accounting.md").read_text()
    assert "studied_share" in (path.parent / "accounting.csv").read_text().splitlines()[0]
    with pytest.raises(UserError, match="gradient accounting records while it trains the run, so run tiny_ga2 has no "
                                        "memorization report yet"):
        run_gradient_accounting(tiny("run=tiny_ga2", "train.epochs=1", "localization.examples=report"))
