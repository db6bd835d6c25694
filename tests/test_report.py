"""The memorization report: ranking rules and metrics on hand-made cases, categories, and the stage end to end
(clean and noisy tiny runs, folder data, and each bad input's one error line)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from utils.errors import UserError
from utils.io import load_npz
from utils.report.build import make_report
from utils.report.ranking import apply_rule, precision_at_k, rank_fraction, recall_at_fraction
from utils.report.table import Suggestion, best_epoch, categories, predicted_at
from utils.runs import open_run, run_dir
from utils.scores.catalogue import CATEGORY_NAMES as CATEGORIES

from .conftest import execute_notebook, run_script, tiny_cfg, write_image_folder
from .test_analysis import make_run, read_csv, write_scores


# ----------------------------------------------------------------------------- ranking
def test_rank_fraction_ties_share_their_mean_rank_and_nan_ranks_lowest():
    np.testing.assert_allclose(rank_fraction(np.array([3.0, 1.0, 3.0, np.nan])), [3.5 / 4, 2 / 4, 3.5 / 4, 1 / 4])


def test_rank_average_combines_by_rank_not_by_scale():
    s = {"a": np.array([1.0, 2.0, 3.0, 4.0]), "b": np.array([400.0, 300.0, 200.0, 1000.0])}
    # ranks a: 1,2,3,4; b: 3,2,1,4 -> mean 2,2,2,4 (/4)
    np.testing.assert_allclose(apply_rule(s, "rankavg:a+b"), [0.5, 0.5, 0.5, 1.0])
    np.testing.assert_array_equal(apply_rule(s, "b"), s["b"])
    with pytest.raises(UserError, match="needs the score"):
        apply_rule(s, "rankavg:a+c")


def test_precision_at_k_and_recall_in_the_top_fraction_on_a_known_ranking():
    value = np.arange(200, 0, -1, dtype=float)  # sample 0 ranks first
    target = np.zeros(200, bool)
    target[[0, 1, 5, 150]] = True  # k = 4: the top 4 hold samples 0, 1 (positives) and 2, 3
    assert precision_at_k(value, target) == 0.5
    assert recall_at_fraction(value, target, 0.01) == 0.5  # top 2 samples: 2 of 4 positives
    assert recall_at_fraction(value, target, 0.05) == 0.75  # top 10


# ----------------------------------------------------------------------------- table
def _stats() -> dict:
    """3 epochs, 4 samples, 3 classes: sample 3 is never fitted, sample 2 only at the last epoch."""
    return {"epochs": np.array([1, 2, 3]), "test_acc": np.array([0.5, 0.9, 0.8]), "given_label": np.array([0, 1, 2, 0]),
            "correct": np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]], bool),
            "loss": np.array([[0.1, 0.2, 2.0, 3.0]] * 3, np.float32),
            "other": np.array([[1, 0, 1, 2]] * 3, np.int32), "other_prob": np.array([[0.05, 0.1, 0.7, 0.9]] * 3)}


def test_predictions_and_the_best_epoch_come_from_the_statistics():
    st = _stats()
    assert best_epoch(st) == 1
    label, prob = predicted_at(st, 1)
    np.testing.assert_array_equal(label, [0, 1, 1, 2])
    np.testing.assert_allclose(prob, [np.exp(-0.1), np.exp(-0.2), 0.7, 0.9], rtol=1e-6)


def test_categories_on_held_out_evidence_follow_their_documented_order():
    dup, mislabeled, ambiguous, memorized, none = CATEGORIES
    given = np.zeros(6, np.int64)
    predicted = np.array([0, 0, 0, 1, 0, 0])  # the run's final prediction: all but sample 3 fitted
    probs = np.array([[0.9, 0.05, 0.05],  # 0 held out, still its label: fine
                      [0.1, 0.8, 0.1],  # 1 held-out models are sure it is class 1: likely mislabeled
                      [0.4, 0.45, 0.15],  # 2 split between the given label and class 1: ambiguous
                      [0.2, 0.3, 0.5],  # 3 not fitted, held out it is class 2 at 0.5: likely mislabeled
                      [0.3, 0.35, 0.35],  # 4 fitted, wrong out of sample, no class confident: memorized
                      [0.1, 0.8, 0.1]])  # 5 one side of a conflicting pair beats everything
    sug = Suggestion(probs.argmax(1), probs.max(1), probs[:, 0], "", True, probs)
    in_pair = np.array([False] * 5 + [True])
    cat = categories(given=given, predicted=predicted, sug=sug, in_pair=in_pair, mislabeled_prob=0.5, split_prob=0.4)
    assert list(cat) == [none, mislabeled, ambiguous, mislabeled, memorized, dup]
    # memorized needs the run to have fitted it: the same probabilities unfitted are not memorization
    cat = categories(given=given, predicted=np.ones(6, np.int64), sug=sug, in_pair=in_pair, mislabeled_prob=0.5,
                     split_prob=0.4)
    assert cat[4] == none


def test_in_sample_categories_never_call_a_sample_memorized():
    dup, mislabeled, ambiguous, memorized, none = CATEGORIES
    given = np.zeros(4, np.int64)
    predicted = np.array([0, 1, 1, 0])
    sug = Suggestion(np.array([0, 1, 1, 2]), np.array([0.9, 0.9, 0.3, 0.6]), np.zeros(4), "", False)
    cat = categories(given=given, predicted=predicted, sug=sug, in_pair=np.zeros(4, bool), mislabeled_prob=0.5,
                     split_prob=0.25)
    assert list(cat) == [none, mislabeled, ambiguous, mislabeled] and memorized not in cat


# ----------------------------------------------------------------------------- the stage
def _scored(tmp, *overrides):
    cfg = make_run(tmp, *overrides)
    rng = np.random.default_rng(0)
    write_scores(cfg, rng.random(300) + 0.1)
    return cfg


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """One tiny digits run with 20 % symmetric noise, trained and scored, shared by the tests below."""
    return _scored(tmp_path_factory.mktemp("noisy"), "noise.kind=symmetric", "noise.rate=0.2", "report.probs=best")


def test_report_on_a_noisy_run_ranks_every_sample_and_measures_the_ranking(noisy):
    cfg = noisy
    res = make_report(cfg, progress=False, html=False)
    rows = read_csv(res["out_dir"] / "suspects.csv")
    assert len(rows) == 300 and [int(r["rank"]) for r in rows] == list(range(1, 301))
    value = np.array([float(r["report_score"]) for r in rows])
    assert (np.diff(value) <= 0).all()
    rec = load_npz(run_dir(cfg) / "train_stats.npz")
    for r in rows[:20]:  # labels as recorded, the category one of the documented ones
        assert int(r["given_label"]) == rec["given_label"][int(r["index"])] and r["category"] in CATEGORIES
    assert {r["rule"] for r in read_csv(res["out_dir"] / "ranking.csv")} >= {res["rule"], "curvature"}
    assert all((res["out_dir"] / f).is_file() for f in ("gallery.png", "per_class.png", "timeline.png",
                                                         "duplicate_pairs.png", "suspects.md"))


def test_report_on_a_clean_run_has_nothing_to_grade_but_still_answers(tmp_path):
    cfg = _scored(tmp_path, "noise.kind=none", "noise.rate=0")
    res = make_report(cfg, progress=False, html=False)
    assert len(res["table"]["rank"]) == 300 and not res["evaluation"]
    assert not (res["out_dir"] / "ranking.csv").exists() and "is_noisy" not in res["table"]
    assert sum(res["counts"].values()) == 300


def test_report_errors_are_one_line_each(tmp_path, noisy):
    with pytest.raises(UserError, match="train it first"):
        make_report(tiny_cfg(tmp_path, "run=never"), progress=False, html=False)
    with pytest.raises(UserError, match="score the run first"):
        make_report({**noisy, "paths": {**noisy["paths"], "scores": str(tmp_path / "none")}}, progress=False,
                    html=False)
    with pytest.raises(UserError, match="report.probs must be"):
        make_report({**noisy, "report": {**noisy["report"], "probs": "oracle"}}, progress=False, html=False)


def test_report_of_folder_data_names_files_and_a_moved_image(tmp_path):
    root = write_image_folder(tmp_path / "imgs", n=6, noise=True)
    over = ("data.name=imagefolder", f"data.root={tmp_path / 'imgs'}", "data.image_size=8", "data.subset=0",
            "model.name=digits_mlp", "train.epochs=2", "report.duplicates=off")
    cfg = make_run(tmp_path, *over)
    write_scores(cfg, np.arange(18, dtype=float) + 1)
    res = make_report(cfg, progress=False, html=False)
    assert sorted(res["table"]["source"])[0] == "train/a/0.png"
    (root / "train/a/0.png").rename(root / "moved.png")
    with pytest.raises(UserError, match=r"train/a/0.png of run tiny is missing.*data.root"):
        make_report(cfg, progress=False, html=False)


def test_a_non_image_file_in_the_folder_is_one_error_line(tmp_path):
    root = write_image_folder(tmp_path / "imgs", n=3)
    (root / "train/b/1.png").write_text("not an image")
    out = run_script("train_digits.py", "data.name=imagefolder", f"data.root={root}", "data.image_size=8",
                     f"paths.pretrained={tmp_path}/p", f"paths.logs={tmp_path}/l", "train.epochs=1", "run=x")
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "train/b/1.png is not a readable image" in out.stderr


def test_the_script_prints_a_summary_and_its_paths(tmp_path, noisy):
    p = noisy["paths"]
    scores = tmp_path / "scores"
    shutil.copytree(p["scores"], scores)
    args = ("memorization_report.py", "run=tiny", f"paths.pretrained={p['pretrained']}", f"paths.scores={scores}")
    out = run_script(*args, "report.probs=best", "report.top=20")
    assert out.returncode == 0, out.stderr
    assert "categories:" in out.stdout and "suspects.csv" in out.stdout and "report.html" in out.stdout
    assert (scores / "tiny/report/report.html").stat().st_size > 10_000
    shutil.rmtree(scores)
    out = run_script(*args)
    assert out.returncode == 2 and "score the run first" in out.stderr.splitlines()[-1]


def test_the_notebook_shows_the_report_of_the_run_in_its_parameters_cell(noisy, tmp_path):
    p = noisy["paths"]
    scores = tmp_path / "scores"
    shutil.copytree(p["scores"], scores)
    outputs = execute_notebook("memorization_report", f"RUN = 'tiny'\nOVERRIDES = ['paths.pretrained={p['pretrained']}', "
                                                      f"'paths.scores={scores}', 'report.probs=best']\n")
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4
    md = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "| rank |" in md and "precision_at_k" in md
    assert (scores / "tiny/report/report.html").is_file()


def write_holdout(cfg: dict, probs: np.ndarray, source: str = "hand-made held-out probabilities") -> None:
    """A holdout.npz in the holdout stage's format: 2 folds, sample i held out by model i % 2 with `probs` (N, K)."""
    from utils.holdout.files import FILE, holdout_dir
    from utils.io import save_npz

    run = open_run(cfg)
    n = len(probs)
    model = np.arange(n) % 2
    mask = np.stack([model != 0, model != 1])
    save_npz(holdout_dir(run.scores) / FILE, probs=probs.astype(np.float32), sample=np.arange(n), model=model,
             train_mask=mask, given_label=run.record["given_labels"].numpy(), accuracy=np.array([0.9, 0.9]),
             accuracy_true=np.array([0.9, 0.9]), test_accuracy=np.array([0.8, 0.8]), seconds=np.ones(2),
             model_runs=np.array(["a", "b"]), identity=np.array("x"), run_identity=np.array(run.identity),
             settings=np.array('{"scheme": "folds"}'), source=np.array(source))


def test_the_report_reads_the_holdout_files_and_never_trains(noisy, tmp_path):
    scores = tmp_path / "scores"
    shutil.copytree(noisy["paths"]["scores"], scores)
    cfg = {**noisy, "paths": {**noisy["paths"], "scores": str(scores)}, "report": {**noisy["report"], "probs": "auto"}}
    given = load_npz(run_dir(noisy) / "train_stats.npz")["given_label"]
    probs = np.full((len(given), 10), 0.01)
    probs[np.arange(len(given)), (given + 3) % 10] = 0.91
    write_holdout(cfg, probs)
    before = sorted(p.name for p in run_dir(noisy).parent.iterdir())
    res = make_report(cfg, progress=False, html=False)
    t = res["table"]
    np.testing.assert_array_equal(t["suggested_label"], (t["given_label"] + 3) % 10)
    np.testing.assert_allclose(t["suggested_prob"], 0.91, rtol=1e-6)
    assert set(t["suggestion_source"]) == {"holdout"} and set(t["category"]) == {CATEGORIES[1]}
    assert any("hand-made held-out probabilities" in n for n in res["notes"])
    assert sorted(p.name for p in run_dir(noisy).parent.iterdir()) == before  # no model was trained
    # p_out(given) = 0.01 for every sample: memorization = p_in - 0.01 with the one-model Wilson interval
    st = load_npz(run_dir(noisy) / "train_stats.npz")
    p_in = np.exp(-st["loss"][-3:].astype(np.float64)).mean(0)[t["index"]]
    np.testing.assert_allclose(t["memorization"], p_in - 0.01, atol=1e-6)
    assert (t["memorization_lo"] <= t["memorization"]).all() and (t["memorization"] <= t["memorization_hi"]).all()
    # report.probs=holdout without the files is one error line; best ignores them
    (scores / "tiny/holdout/holdout.npz").unlink()
    with pytest.raises(UserError, match="holdout.py run=tiny"):
        make_report({**cfg, "report": {**cfg["report"], "probs": "holdout"}}, progress=False, html=False)
    res = make_report(cfg, progress=False, html=False)
    assert set(res["table"]["suggestion_source"]) == {"in-sample"} and CATEGORIES[3] not in res["table"]["category"]


def test_holdout_files_of_another_version_of_the_run_are_refused(noisy, tmp_path):
    scores = tmp_path / "scores"
    shutil.copytree(noisy["paths"]["scores"], scores)
    cfg = {**noisy, "paths": {**noisy["paths"], "scores": str(scores)}, "report": {**noisy["report"], "probs": "auto"}}
    write_holdout(cfg, np.full((300, 10), 0.1))
    from utils.io import save_npz

    path = scores / "tiny/holdout/holdout.npz"
    z = load_npz(path)
    save_npz(path, **{**z, "run_identity": np.array("0123456789abcdef")})
    with pytest.raises(UserError, match="another version of run tiny.*holdout.py run=tiny again"):
        make_report(cfg, progress=False, html=False)


def test_scores_in_column_chunks_equal_the_whole_file_at_once():
    from utils.scores.compute import all_scores

    rng = np.random.default_rng(1)
    e, n = 4, 50
    stats = {"epochs": np.arange(1, e + 1), "loss": rng.random((e, n)).astype(np.float32),
             "correct": rng.random((e, n)) > 0.3, "margin": rng.normal(size=(e, n)).astype(np.float32),
             "given_label": np.zeros(n, np.int64)}
    pe = rng.random((e, n)).astype(np.float32)
    pe[0, :5] = 0.0  # zeros meet the geometric mean's floor, which must be the whole file's
    curv = {"per_epoch": pe, "curvature": pe.mean(0), "hv_norm": pe.mean(0)}
    probs = rng.dirichlet(np.ones(3), n)
    held = {"probs": probs, "n_out": rng.integers(0, 3, n)}
    for h in (None, held):
        whole = all_scores(stats, curv, np.arange(n), rng.random(n), h)
        chunked = all_scores(stats, curv, np.arange(n), rng.random(n), h, chunk=7)
        assert whole.keys() == chunked.keys()
        for k in whole:
            if k != "confident_learning" or h is not None:
                np.testing.assert_array_equal(whole[k], chunked[k])
    assert np.isnan(whole["memorization"][held["n_out"] == 0]).all()  # no model held it out: no estimate


def test_canaries_are_recorded_hidden_from_the_list_and_measure_recall(tmp_path):
    from utils.noise import canary_labels

    given = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    true = given.copy()
    true[0] = 1  # already wrong: never a canary
    other = np.array([1, 0, 0, 2, 1, 1, 1, 0])  # sample 4 is confused with its own label: never a canary
    out, canary = canary_labels(given, true, other, 0.5, seed=3)
    assert canary.sum() == 4 and not canary[[0, 4]].any()
    np.testing.assert_array_equal(out[canary], other[canary])
    np.testing.assert_array_equal(out[~canary], given[~canary])
    with pytest.raises(UserError, match="only 6 samples can carry one"):
        canary_labels(given, true, other, 0.9, seed=3)
    make_run(tmp_path, "noise.kind=none", "noise.rate=0", "run=ref")
    cfg = _scored(tmp_path, "noise.kind=none", "noise.rate=0", "noise.canaries=0.05", "noise.canary_reference=ref",
                  "report.probs=best", "run=can")
    rec = open_run(cfg).record
    can = rec["is_canary"].numpy()
    assert can.sum() == 15 and rec["canaries"] == 15 and rec["is_noisy"].numpy()[can].all()
    res = make_report(cfg, progress=False, html=True)
    page = (res["out_dir"] / "report.html").read_text()
    assert "<dt>recall (canaries)</dt><dd>top " in page and "top 200: " in page
    assert len(res["table"]["rank"]) == 285 and not np.isin(res["table"]["index"], np.flatnonzero(can)).any()
    assert list(res["table"]["rank"]) == list(range(1, 286))
    note = next(n for n in res["notes"] if n.startswith("canaries: 15 hidden"))
    assert "recall at 200" in note


def test_canary_recall_counts_canaries_above_the_kth_listed_sample():
    from utils.report.build import canary_recall

    got = canary_recall(np.array([5.0, 3.0, 1.0]), np.array([6.0, 4.0, 2.0, 0.0]), 2, 3, 10)["recall"]
    assert [got[k][0] for k in (2, 3, 10)] == [1 / 3, 2 / 3, 1.0]
    assert got[2][1] < 1 / 3 < got[2][2]
    est = canary_recall(np.array([5.0, 3.0, 1.0]), np.array([6.0, 4.0, 2.0, 0.0]), 2, 3, n_errors=(3.0, 2.0, 4.0))
    assert est["expected"][2][0] == pytest.approx(1.0) and est["expected"][3][0] == pytest.approx(2.0)
    assert est["expected"][3][1] == pytest.approx(2.0 * est["recall"][3][1])  # lower bound x lower bound
    assert est["expected"][2][2] == 2  # never more errors than samples in the top k
    assert "expected real errors in the top 2: 1" in est["note"]


def test_estimated_errors_is_rogan_gladen_on_a_hand_built_case():
    """1,000 listed samples, 100 of them errors; held-out models flag 80 % of errors (as of 50 canaries) and 10 % of
    the correct labels (test accuracy 0.9): AP = (80 + 90) / 1000, E = 1000 (0.17 - 0.1) / (0.8 - 0.1) = 100."""
    from types import SimpleNamespace

    from utils.report.build import estimated_errors

    n, c = 1000, 50
    given = np.zeros(n + c, np.int64)
    flagged = np.r_[np.arange(80), 100 + np.arange(90), n + np.arange(40)]  # errors, correct labels, canaries
    probs = np.tile([0.8, 0.1, 0.1], (n + c, 1))
    probs[flagged] = [0.1, 0.8, 0.1]
    canary = np.arange(n + c) >= n
    held = {"probs": probs, "n_out": np.ones(n + c, np.int64), "holdout": SimpleNamespace(test_accuracy=[0.88, 0.92])}
    run = SimpleNamespace(data=SimpleNamespace(test=range(10_000)))
    e, lo, hi = estimated_errors(run, {"given_label": given}, held, canary)
    assert e == pytest.approx(100.0) and lo < 100 < hi and hi - lo < 100
    assert estimated_errors(run, {"given_label": given}, None, canary) is None
    assert estimated_errors(run, {"given_label": given}, held, np.zeros(n + c, bool)) is None


def test_canaries_drawn_by_confusability_follow_the_power():
    from utils.noise import canary_labels

    n = 4000
    true = np.arange(n) % 4
    other = (true + 1) % 4
    conf = np.where(np.arange(n) < n // 4, 0.8, 0.1)  # a quarter of the samples is 8x as confusable
    hard = np.arange(n) < n // 4
    for power, share in ((0.0, 0.25), (1.0, 8 / 11), (2.0, 64 / 67)):
        _, can = canary_labels(true, true, other, 0.05, seed=1, confusability=conf, power=power)
        assert can.sum() == 200 and abs(hard[can].mean() - share) < 0.08, (power, hard[can].mean())
    _, a = canary_labels(true, true, other, 0.05, seed=1)
    _, b = canary_labels(true, true, other, 0.05, seed=1, confusability=conf, power=0.0)
    np.testing.assert_array_equal(a, b)  # power 0 is the uniform draw, bit for bit
    with pytest.raises(UserError, match="canary_power"):
        canary_labels(true, true, other, 0.05, seed=1, confusability=conf, power=-1.0)
    # the target: the confused-with class with probability q, else a uniformly random other class; same samples
    out, c2 = canary_labels(true, true, other, 0.5, seed=1, confused_share=0.25, num_classes=4)
    _, c1 = canary_labels(true, true, other, 0.5, seed=1)
    np.testing.assert_array_equal(c1, c2)
    assert (out[c2] != true[c2]).all() and abs((out[c2] == other[c2]).mean() - (0.25 + 0.75 / 3)) < 0.04
    with pytest.raises(UserError, match="canary_confused"):
        canary_labels(true, true, other, 0.05, seed=1, confused_share=1.5)
