"""Any model in every stage: timm's zoo (`timm:<name>`, a tiny ViT with fused attention and a tiny BatchNorm ResNet)
and a user's own factory (`<module>:<callable>`, tests/mynets.py and a file in the working directory), from the
registry through training, scoring (fd, exact, official form), spectra, ESM captures, the five localization methods
and example-tied dropout; the wrapper and callback hooks of the shared core; train.dtype=float64."""

from __future__ import annotations

import copy
import json
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

import utils.callbacks as callbacks_mod
import utils.curvature.scoring  # noqa: F401  (registers the online scorer)
import utils.localization  # noqa: F401  (registers example-tied dropout)
import utils.models as models_mod
from utils.config import load_config
from utils.curvature.estimator import input_curvature, official_curvature, sample_probes
from utils.curvature.scoring import score_run
from utils.errors import UserError
from utils.localization.accounting import GradientAccounting
from utils.localization.etd import ExampleTiedNet
from utils.localization.flipping import neuron_flipping, unit_effects
from utils.localization.groups import UnitMasks, hidden_groups, layer_groups
from utils.localization.methods import etd_accuracy, layer_retraining, layer_rewinding
from utils.models import build_model, classifier, features, forward, per_sample_loss
from utils.runs import list_checkpoints, load_checkpoint, open_run
from utils.spectral.capture import compute_spectrum
from utils.spectral.esm import run_grid
from utils.train import train

from .conftest import ROOT, run_script

VIT = ["model.name=timm:vit_tiny_patch16_224", "model.width=0",
       "model.kwargs={patch_size: 4, depth: 1, embed_dim: 16, num_heads: 2}"]
RESNET = ["model.name=timm:resnet10t", "model.width=0", "model.kwargs={channels: [4, 4, 8, 8], stem_width: 4}"]
CUSTOM = ["model.name=tests.mynets:small_cnn", "model.width=6", "model.kwargs={depth: 2}"]
VIT_KW = {"patch_size": 4, "depth": 1, "embed_dim": 16, "num_heads": 2}


def _cfg(tmp, *overrides: str) -> dict:
    base = [f"paths.pretrained={tmp}/pretrained", f"paths.scores={tmp}/scores", f"paths.logs={tmp}/logs",
            "data.subset=64", "train.epochs=2", "train.batch_size=32", "train.lr=0.05", "train.stats_every=1"]
    return load_config(ROOT / "configs/digits.yaml", base + list(overrides))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three trained tiny runs (2 epochs of 2 steps on 64 digits): timm ViT, timm ResNet, custom factory."""
    tmp = tmp_path_factory.mktemp("any")
    out = {}
    for name, over in (("vit", VIT), ("resnet", RESNET), ("custom", CUSTOM)):
        cfg = _cfg(tmp, f"run={name}", *over)
        train(cfg)
        out[name] = cfg
    return out


def _reopen(cfg: dict, *overrides: str) -> dict:
    """The config of a later stage: the run's name and paths only (everything else from the run record)."""
    return load_config(None, [f"run={cfg['run']}", *(f"paths.{k}={v}" for k, v in cfg["paths"].items()), *overrides])


# ----------------------------------------------------------------------------- the registry
def test_timm_and_custom_models_are_built_from_config_values():
    vit = build_model("timm:vit_tiny_patch16_224", 10, 1, 8, kwargs=VIT_KW)
    assert vit.patch_embed.img_size == (8, 8) and vit.patch_embed.num_patches == 4 and len(vit.blocks) == 1
    assert vit(torch.randn(2, 1, 8, 8)).shape == (2, 10) and classifier(vit) is vit.head
    res = build_model("timm:resnet10t", 7, 3, 16, kwargs={"channels": [4, 4, 8, 8], "stem_width": 4})  # no img_size
    assert res(torch.randn(2, 3, 16, 16)).shape == (2, 7) and classifier(res) is res.fc
    assert features(res, torch.randn(2, 3, 16, 16)).shape == (2, 8)
    own = build_model("tests.mynets:small_cnn", 5, 1, 8, width=6, activation="gelu", kwargs={"depth": 3})
    assert len(own.blocks) == 3 and own.out.out_features == 5 and own.out.in_features == 6  # activation not taken
    assert classifier(own) is own.out and features(own, torch.randn(4, 1, 8, 8)).shape == (4, 6)
    for name, kw, match in (
        ("timm:vit_small_patch16", {}, "nearest: vit_small_patch16_384, vit_small_patch16_224"),
        ("vit_small_patch16_224", {}, "model.name=timm:vit_small_patch16_224"),
        ("timm:vit_small_patch16_224", {}, r"patches are larger than the 8x8 images.*patch_size: 4"),
        ("timm:resnet10t", {"num_classes": 3}, "set from the data"),
        ("tests.mynets:small_cnnn", {}, "did you mean small_cnn"),
        ("tests.mynets:small_cnn", {"heads": 2}, "takes no argument heads"),
        ("tests.mynets:not_a_model", {}, "not a torch.nn.Module"),
        ("no_such_module_x:f", {}, "no module 'no_such_module_x' in the working directory"),
        ("digits_mlp", {"depth": 2}, "model.kwargs applies to timm"),
    ):
        with pytest.raises(UserError, match=match):
            build_model(name, 10, 1, 8, kwargs=kw)


def test_model_kwargs_config_key(tmp_path):
    cfg = load_config(None, ["model.name=timm:vit_tiny_patch16_224", "model.kwargs={patch_size: 4}",
                             "model.kwargs.depth=2"])
    assert cfg["model"]["kwargs"] == cfg["_given"]["model.kwargs"] == {"patch_size": 4, "depth": 2}
    assert cfg["run"] == "digits_timm-vit_tiny_patch16_224_clean_s0"  # a plain directory name
    (tmp_path / "c.yaml").write_text("model: {name: 'tests.mynets:small_cnn', kwargs: {depth: 3}}\n")
    assert load_config(tmp_path / "c.yaml")["model"]["kwargs"] == {"depth": 3}
    with pytest.raises(UserError, match="wants dict"):
        load_config(None, ["model.kwargs=4"])
    from utils.config import identity_hash

    plain = load_config(None, [])
    assert identity_hash(plain) == identity_hash({**plain, "model": {k: v for k, v in plain["model"].items()
                                                                   if k != "kwargs"}})  # older runs keep theirs


def test_model_name_is_checked_before_any_data_is_loaded(tmp_path, monkeypatch):
    import utils.train as train_mod

    def no_data(cfg):
        raise AssertionError("data loaded before the model name was checked")

    monkeypatch.setattr(train_mod, "build_data", no_data)
    for name, match in (("timm:vit_smal_patch16_224", "nearest"), ("nosuchmod_y:net", "no module"),
                        ("vit_small_patch16_224", "timm:vit_small_patch16_224")):
        cfg = load_config(None, [f"model.name={name}", "data.name=cifar10", f"data.root={tmp_path}", "data.download=true",
                                 f"paths.pretrained={tmp_path}/p"])
        with pytest.raises(UserError, match=match):
            train(cfg)
    cfg = load_config(None, ["model.name=timm:resnet10t", "model.width=8", f"paths.pretrained={tmp_path}/p"])
    with pytest.raises(UserError, match="model.width does not apply to timm"):
        train(cfg)  # given by the user: refused; from the script's config (digits.yaml: 256) it is left out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(UserError, match="train.dtype=float64 with train.amp=true"):
        train(load_config(None, ["train.dtype=float64", f"paths.pretrained={tmp_path}/p"]))


# ----------------------------------------------------------------------------- training, and run=<name> alone
def test_runs_rebuild_their_model_from_the_record(runs):
    for name, cfg in runs.items():
        run = open_run(_reopen(cfg))
        assert run.cfg["model"] == cfg["model"]
        model = run.load_model(-1)
        x = torch.stack([run.data.train_eval[i][1] for i in range(8)])
        ckpt = load_checkpoint(list_checkpoints(run.dir)[-1][1])["model"]
        ref = build_model(cfg["model"]["name"], 10, 1, 8, cfg["model"]["width"], kwargs=cfg["model"]["kwargs"])
        ref.load_state_dict(ckpt)
        with torch.no_grad():
            assert torch.equal(model(x), ref.eval()(x)), name
        assert list_checkpoints(run.dir)[-1][0] == 2 and run.stats()["loss"].shape == (2, 64)
        head = json.loads((run.dir / "run.json").read_text())
        assert head["config"]["model"]["kwargs"] == cfg["model"]["kwargs"] and head["plugins"] == []


def test_torchrun_timm_resnet_float64_equals_one_process(tmp_path):
    """The real training command with a timm BatchNorm ResNet: 2 gloo ranks (its BatchNorm2d layers converted to
    GlobalBatchNorm) train what one process trains, float64, to 1e-10 of the update (4 steps)."""
    args = [f"paths.pretrained={tmp_path}/pre", f"paths.logs={tmp_path}/logs", *RESNET, "data.subset=64",
            "train.batch_size=32", "train.epochs=2", "train.lr=0.05", "train.stats=false", "train.dtype=float64"]
    for run, nproc in (("one", 0), ("two", 2)):
        res = run_script("train_digits.py", *args, f"run={run}", cwd=tmp_path, nproc=nproc)
        assert res.returncode == 0, res.stderr[-2000:]
    w = {r: load_checkpoint(tmp_path / f"pre/{r}/epoch_002.pt")["model"] for r in ("one", "two")}
    w0 = load_checkpoint(tmp_path / "pre/one/epoch_000.pt")["model"]
    keys = [k for k in w0 if w0[k].is_floating_point()]
    cat = lambda s: torch.cat([s[k].flatten() for k in keys])  # noqa: E731
    assert cat(w["one"]).dtype == torch.float64
    assert float((cat(w["two"]) - cat(w["one"])).norm() / (cat(w["one"]) - cat(w0)).norm()) <= 1e-10


def test_own_module_from_the_working_directory_in_training_and_scoring(tmp_path):
    """model.name=<module>:<callable> with the module in the working directory: trained by the script, then scored
    by `score_digits_checkpoint.py run=<name>` alone (the record keeps name and kwargs)."""
    (tmp_path / "mynet_wd.py").write_text(textwrap.dedent("""
        from torch import nn

        def build(num_classes, in_channels, image_size, width=0, hidden=16):
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, hidden), nn.Tanh(),
                                 nn.Linear(hidden, num_classes))
    """))
    paths = [f"paths.pretrained={tmp_path}/pre", f"paths.scores={tmp_path}/scores", f"paths.logs={tmp_path}/logs"]
    res = run_script("train_digits.py", *paths, "model.name=mynet_wd:build", "model.kwargs={hidden: 12}",
                     "data.subset=64", "train.epochs=1", "run=own", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_script("score_digits_checkpoint.py", *paths, "run=own", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    with np.load(tmp_path / "scores/own/curvature.npz") as z:
        assert z["per_epoch"].shape == (2, 64) and np.isfinite(z["curvature"]).all()
    assert load_checkpoint(tmp_path / "pre/own/epoch_001.pt")["model"]["1.weight"].shape == (12, 64)


# ----------------------------------------------------------------------------- curvature
def _hvp(model, x, y, v):
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(per_sample_loss(model(xg), y).sum(), xg, create_graph=True)
    return torch.autograd.grad(g, xg, grad_outputs=v)[0]


def test_exact_curvature_double_backward_through_timm_fused_attention(runs):
    """timm's attention calls the fused scaled_dot_product_attention, whose CPU kernel has no double backward. The
    exact estimator and the Hessian operator run timm's unfused path (flags restored after) under the math kernel;
    the math kernel alone, with timm's fused call kept, gives the same numbers to 1e-12."""
    from utils.models import double_backward_attention

    run = open_run(_reopen(runs["vit"]))
    model = run.load_model(-1).double()
    fused_flags = lambda m: [a.fused_attn for a in m.modules() if hasattr(a, "fused_attn")]  # noqa: E731
    assert fused_flags(model) == [True]
    x = torch.stack([run.data.train_eval[i][1] for i in range(6)]).double()
    y = run.record["given_labels"][:6]
    probes = sample_probes(torch.arange(6), (1, 8, 8), 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="derivative for"):  # the case to handle
        _hvp(model, x, y, probes[0])
    got = input_curvature(model, x, y, method="exact", probes=probes)
    assert fused_flags(model) == [True]  # restored
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    ref = input_curvature(plain, x, y, method="exact", probes=probes)
    for k in ("curvature", "trace"):
        torch.testing.assert_close(got[k], ref[k], rtol=1e-12, atol=0)
    with double_backward_attention():  # the kernel choice alone: timm's fused call on the math kernel
        torch.testing.assert_close(_hvp(model, x, y, probes[0]), _hvp(plain, x, y, probes[0]), rtol=1e-12, atol=1e-15)
    fd = input_curvature(model, x, y, method="fd", h=1e-4, probes=probes)
    torch.testing.assert_close(fd["curvature"], ref["curvature"], rtol=1e-3, atol=0)
    off = official_curvature(model, x, y, h=1e-3, probes=probes)
    assert off["curvature"].shape == (6,) and torch.isfinite(off["curvature"]).all()


@pytest.mark.parametrize("name", ["vit", "resnet", "custom"])
def test_scoring_runs_fd_and_exact(runs, name, tmp_path):
    for method in ("fd", "exact"):
        cfg = _reopen(runs[name], f"score.method={method}", f"paths.scores={tmp_path}/{method}")
        with np.load(score_run(cfg)) as z:
            assert z["per_epoch"].shape == (3, 64) and np.isfinite(z["per_epoch"]).all() and (z["curvature"] > 0).all()


# ----------------------------------------------------------------------------- spectra and ESM
def test_spectrum_of_timm_models(runs):
    for name in ("vit", "resnet"):
        run = open_run(_reopen(runs[name], "spectrum.top_k=3", "spectrum.lanczos_iter=12", "spectrum.n_samples=32",
                                "spectrum.batch_size=16", "spectrum.slq_probes=1", "spectrum.slq_iter=6"))
        model = run.load_model(-1)
        s = compute_spectrum(model, run.data.train_eval, run.cfg, run.dist)
        ev = s["eigenvalues"]
        assert len(ev) == 3 and np.all(np.diff(ev) <= 0) and ev[0] > 0
        assert int(s["n_params"]) == sum(p.numel() for p in model.parameters())
        # tr H^2 = sum of the top-k squared + the bulk's (a sum of squares): at least the top eigenvalue squared
        assert np.isfinite(s["trace"]) and float(s["sq_trace"]) >= ev[0] ** 2 * (1 - 1e-6)


def test_esm_capture_with_a_timm_vit(tmp_path):
    cfg = _cfg(tmp_path, *VIT, "esm.steps=[2]", "esm.seeds=[0]", "esm.conditions=[none]", "train.stats=false",
               "spectrum.top_k=2", "spectrum.lanczos_iter=6", "spectrum.n_samples=16", "spectrum.slq_probes=1",
               "spectrum.slq_iter=4")
    (point,) = run_grid(cfg)
    with np.load(point.files[0]) as z:
        assert str(z["model"]) == "timm:vit_tiny_patch16_224" and int(z["step"]) == 2 and len(z["eigenvalues"]) == 2
    assert "timm-vit_tiny_patch16_224" in str(point.out)


# ----------------------------------------------------------------------------- localization
@pytest.mark.parametrize("name", ["vit", "resnet", "custom"])
def test_layer_groups_of_any_module_tree(name):
    over = dict(a.split("=", 1) for a in {"vit": VIT, "resnet": RESNET, "custom": CUSTOM}[name])
    cfg = load_config(None, [f"{k}={v}" for k, v in over.items()])
    m = cfg["model"]
    model = build_model(m["name"], 10, 1, 8, m["width"], kwargs=m["kwargs"])
    for net in (model, ExampleTiedNet(copy.deepcopy(model), 0.2, 0.5)):
        groups = layer_groups(net)
        keys = [k for g in groups for k in g.keys]
        assert sorted(keys) == sorted(net.state_dict()) and len(set(keys)) == len(keys)
        hidden = hidden_groups(net, groups)
        head = {"vit": "head", "resnet": "fc", "custom": "out"}[name]
        assert groups[-1].name.endswith(head) and hidden[-1].name != groups[-1].name and hidden
    if name == "vit":
        names = [g.name for g in layer_groups(model)]
        assert names[:2] == ["<root>", "patch_embed.proj"] and "blocks.0.attn.qkv" in names


def test_unit_effects_are_first_order_loss_changes_despite_inplace_layers(runs):
    """Neuron flipping's estimate -sum(a * dL/da) equals the derivative of the loss along the unit's mask, also where
    in-place layers follow the group (timm's `x += shortcut`, ReLU(inplace=True); the custom model's `y += x`)."""
    for name, group in (("resnet", "layer2.0.conv2"), ("custom", "blocks.1.0")):
        run = open_run(_reopen(runs[name]))
        model = run.load_model(-1).double()
        for p in model.parameters():
            p.requires_grad_(False)
        g = next(g for g in hidden_groups(model) if g.name == group)
        x = torch.stack([run.data.train_eval[i][1] for i in range(4)]).double()
        y = run.record["given_labels"][:4]
        with UnitMasks(model, [g]) as masks:
            _, delta = unit_effects(model, masks, x, y)
            for u in range(min(3, g.n_units)):
                eps = 1e-6
                masks.masks[g.name] = torch.ones(g.n_units, dtype=torch.float64)
                base = per_sample_loss(model(x), y)
                masks.masks[g.name][u] = 1 - eps
                moved = per_sample_loss(model(x), y)
                torch.testing.assert_close(delta[:, u], (moved - base) / eps, rtol=1e-4, atol=1e-9)


def test_five_localization_methods_on_timm_and_custom_models(runs, tmp_path):
    for name in ("vit", "resnet", "custom"):
        cfg = _reopen(runs[name], "localization.flip_clean=2", "localization.flip_noisy=2",
                      "localization.flip_max_units=3", "localization.flip_batch=4", "localization.flip_test_subset=16",
                      "localization.retrain_examples=32", "localization.eval_subset=32")
        run = open_run(cfg)
        model = run.load_model(-1)
        n_groups = len(layer_groups(model))
        rows = layer_rewinding(run, [2], model)  # rewinding to the final epoch changes nothing
        assert len(rows) == 1 + n_groups and all(r["clean_acc"] == rows[0]["clean_acc"] for r in rows)
        before = copy.deepcopy(model.state_dict())
        rows = layer_retraining(run, 0, 1, 0.05, model=model)
        assert len(rows) == 1 + sum(1 for g in layer_groups(model) if g.params)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # restored afterwards
        z = neuron_flipping(run, 2, 2, 3, 4, 1, 16, model=model)
        assert len(z["index"]) == len(z["flipped"]) and list(z["group_names"]) == [g.name for g in hidden_groups(model)]
    ga_cfg = _cfg(tmp_path, *RESNET, "run=ga", "train.epochs=1", "noise.rate=0.25")
    ga = GradientAccounting(tmp_path / "acc.npz", keep_last=True)
    train(ga_cfg, [ga])
    gc, gn = ga.last
    assert len(gc) == len(ga.params) and all(torch.isfinite(a).all() for a in gc)
    with np.load(tmp_path / "acc.npz") as acc:
        assert acc["clean_sq"].shape == (2, len(ga.groups)) and (acc["n_noisy"] > 0).any()


def test_example_tied_dropout_on_a_timm_vit_in_every_stage(tmp_path):
    """An etd run of a timm ViT: trained wrapped, recorded with its plugin, reopened wrapped by open_run in a fresh
    process that never imports utils.localization itself; etd evaluation and scoring work."""
    cfg = _cfg(tmp_path, *VIT, "run=etd", "train.epochs=1", "model.etd_p_mem=0.5", "model.etd_p_gen=0.25")
    train(cfg)
    run = open_run(_reopen(cfg))
    model = run.load_model(-1)
    assert isinstance(model, ExampleTiedNet) and "blocks.0.attn.qkv" in model.group_names
    assert json.loads((run.dir / "run.json").read_text())["plugins"] == ["utils.localization.etd"]
    rows = etd_accuracy(run, model)
    assert [r["mode"] for r in rows] == ["example", "test", "drop"]
    with np.load(score_run(_reopen(cfg, "score.method=exact"))) as z:
        assert np.isfinite(z["curvature"]).all()
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from utils.config import load_config
        from utils.runs import open_run
        cfg = load_config(None, ["run=etd", "paths.pretrained={tmp_path}/pretrained"])
        assert "utils.localization" not in sys.modules
        print(type(open_run(cfg).load_model(-1)).__name__)
    """))
    import subprocess

    res = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "ExampleTiedNet", res.stderr[-2000:]


# ----------------------------------------------------------------------------- the hooks of the shared core
def test_unregistered_wrapper_and_callback_keys_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(models_mod, "_WRAPPERS", {})
    with pytest.raises(UserError, match="model.etd_p_mem=0.5 is read by a model wrapper that is not registered"):
        train(_cfg(tmp_path, "model.etd_p_mem=0.5"))
    monkeypatch.setattr(callbacks_mod, "_FACTORIES", {})
    with pytest.raises(UserError, match="score.online=True needs a callback that is not registered"):
        train(_cfg(tmp_path, "score.online=true"))
    import subprocess

    core = sorted(p.name for p in (ROOT / "utils").glob("*.py"))
    code = "import sys; " + "; ".join(f"import utils.{p[:-3]}" for p in core if p != "__init__.py") + \
        "; print(sorted(m for m in sys.modules if m.split('.')[:2] in (['utils', 'curvature'], ['utils', " \
        "'localization'], ['utils', 'spectral'], ['utils', 'report'])))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr[-2000:]


def test_online_scoring_through_the_registered_callback(tmp_path):
    cfg = _cfg(tmp_path, *CUSTOM, "run=online", "train.epochs=1", "score.online=true")
    train(cfg)
    assert sorted(p.name for p in (tmp_path / "scores/online").glob("epoch_*.npz")) == ["epoch_000.npz", "epoch_001.npz"]


# ----------------------------------------------------------------------------- float64
def test_float64_run_trains_evaluates_and_scores_in_float64(tmp_path):
    cfg = _cfg(tmp_path, *CUSTOM, "run=f64", "train.epochs=1", "train.dtype=float64")
    train(cfg)
    ckpt = load_checkpoint(tmp_path / "pretrained/f64/epoch_001.pt")["model"]
    assert all(v.dtype == torch.float64 for v in ckpt.values() if v.is_floating_point())
    run = open_run(_reopen(cfg, "score.n_probes=2", "score.h=1e-3"))
    model = run.load_model(-1)
    assert next(model.parameters()).dtype == torch.float64
    sc = run.cfg["score"]
    with np.load(score_run(run.cfg)) as z:
        got = z["per_epoch"][-1]
    idx = torch.arange(64)
    x = torch.stack([run.data.train_eval[i][1] for i in range(64)]).double()
    probes = sample_probes(idx, (1, 8, 8), 2, seed=sc["seed"], epoch=1, dtype=torch.float64)
    ref = input_curvature(model, x, run.record["given_labels"], method="fd", h=1e-3, probes=probes)["curvature"]
    np.testing.assert_allclose(got, ref.numpy().astype(np.float32), rtol=1e-6)  # computed in float64, stored float32
    logits = forward(model, x[:4].float())  # a float32 batch is cast up exactly
    assert logits.dtype == torch.float64


def test_custom_model_without_named_head_still_localizes():
    class Plain(nn.Module):  # no fc / head / classifier / features: the last Linear is the classifier
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    m = Plain()
    assert [g.name for g in hidden_groups(m)] == ["a"] and classifier(m) is m.b
    assert features(m, torch.randn(2, 4)).shape == (2, 5)
