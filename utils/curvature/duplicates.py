"""Near-identical training images that carry different labels, found without knowing which were injected.

Search space: the top-curvature samples (a conflicting duplicate cannot be fitted on both sides, so at
least one of the two has high curvature). For each searched sample we look at its nearest neighbours in
the whole training set in two spaces:
- pixels: RMS difference of the [0, 1] images, sqrt(mean((a - b)^2)); near-identical below `pixel_rms`;
- penultimate features of a checkpoint (`utils.models.features`): cosine similarity; near-identical above
  `feature_cos` (catches re-encoded / slightly shifted copies the pixel test misses).
A pair is reported when it is near-identical in either space and the given labels differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..io import write_table, write_text
from ..models import features as penultimate
from ..runs import Run, open_run
from . import plots
from .analysis import load_scores, raw_images
from .ensemble import default_device

PAIR_KEYS = ("i", "j", "given_i", "given_j", "pixel_rms", "feature_cos", "found_by")


def pixel_neighbors(pixels: torch.Tensor, query: np.ndarray, k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """k nearest other samples of each query row by RMS pixel difference: pixels (N, D) -> (Q, k) rms, (Q, k) index."""
    d = pixels.shape[1]
    k = min(k, len(pixels) - 1)
    dists, idxs = [], []
    for s in range(0, len(query), chunk):
        q = torch.as_tensor(query[s:s + chunk])
        dist = torch.cdist(pixels[q].double(), pixels.double()) / np.sqrt(d)
        dist[torch.arange(len(q)), q] = float("inf")  # not its own neighbour
        v, i = dist.topk(k, dim=1, largest=False)
        dists.append(v.numpy())
        idxs.append(i.numpy())
    return np.concatenate(dists), np.concatenate(idxs)


def feature_neighbors(features: torch.Tensor, query: np.ndarray, k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """k most similar other samples of each query row by cosine similarity: features (N, F) -> (Q, k) cos, (Q, k) index."""
    f = torch.nn.functional.normalize(features.double(), dim=1)
    k = min(k, len(f) - 1)
    sims, idxs = [], []
    for s in range(0, len(query), chunk):
        q = torch.as_tensor(query[s:s + chunk])
        sim = f[q] @ f.T
        sim[torch.arange(len(q)), q] = -float("inf")
        v, i = sim.topk(k, dim=1)
        sims.append(v.numpy())
        idxs.append(i.numpy())
    return np.concatenate(sims), np.concatenate(idxs)


def find_conflicting_pairs(pixels: np.ndarray | torch.Tensor, labels: np.ndarray, candidates: np.ndarray, *,
                           features: np.ndarray | torch.Tensor | None = None, k: int = 5, pixel_rms: float = 0.05,
                           feature_cos: float = 0.995) -> list[dict[str, Any]]:
    """Pairs (i in candidates, j anywhere) near-identical in pixels or features with labels[i] != labels[j].

    pixels (N, D) in [0, 1]; features (N, F) or None; each unordered pair is listed once, in the order
    the candidates come (pass them sorted by curvature, highest first). Rows: PAIR_KEYS.
    """
    px = torch.as_tensor(np.asarray(pixels, np.float64)).flatten(1)
    labels = np.asarray(labels)
    cand = np.asarray(candidates, np.int64)
    d = px.shape[1]
    found: dict[tuple[int, int], set[str]] = {}
    order: list[tuple[int, int]] = []

    def consider(i: int, j: int, space: str) -> None:
        if labels[i] == labels[j]:
            return
        key = (min(i, j), max(i, j))
        if key not in found:
            found[key] = set()
            order.append((i, j))
        found[key].add(space)

    dist, nb = pixel_neighbors(px, cand, k)
    for r, i in enumerate(cand):
        for v, j in zip(dist[r], nb[r]):
            if v <= pixel_rms:
                consider(int(i), int(j), "pixel")
    ft = None
    if features is not None:
        ft = torch.nn.functional.normalize(torch.as_tensor(np.asarray(features, np.float64)), dim=1)
        sim, nb = feature_neighbors(ft, cand, k)
        for r, i in enumerate(cand):
            for v, j in zip(sim[r], nb[r]):
                if v >= feature_cos:
                    consider(int(i), int(j), "feature")
    rows = []
    for i, j in order:
        spaces = found[(min(i, j), max(i, j))]
        rms = float(torch.linalg.vector_norm(px[i] - px[j]) / np.sqrt(d))
        cos = float(ft[i] @ ft[j]) if ft is not None else float("nan")
        rows.append({"i": i, "j": j, "given_i": int(labels[i]), "given_j": int(labels[j]), "pixel_rms": rms,
                     "feature_cos": cos, "found_by": "+".join(s for s in ("pixel", "feature") if s in spaces)})
    return rows


@torch.no_grad()
def checkpoint_features(run: Run, epoch: int, ds: Any, batch_size: int = 512) -> torch.Tensor:
    """Penultimate features (N, F) of a saved epoch's model (`utils.models.features`) on a dataset."""
    device = default_device()
    model = run.load_model(epoch, device)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)
    return torch.cat([penultimate(model, x.to(device)).float().cpu() for _, x, _ in loader])


def find_duplicates(cfg: dict[str, Any]) -> dict[str, Any]:
    """Search a scored run for conflicting near-duplicates; writes analysis/duplicate_pairs.{csv,png} and duplicates.md."""
    run = open_run(cfg)
    a = run.cfg["analysis"]
    scores = load_scores(run)
    bundle = run.data
    ds = bundle.train_eval
    idx = scores["index"]
    curv = scores["curvature"].astype(np.float64)
    top = a["dup_top"] if a["dup_top"] > 0 else len(idx)
    cand = idx[np.argsort(-curv, kind="stable")[:top]]
    pixels = raw_images(ds, np.arange(len(ds))).reshape(len(ds), -1)
    epoch = run.epochs[-1] if a["dup_epoch"] < 0 else a["dup_epoch"]
    if epoch not in run.epochs:
        raise UserError(f"analysis.dup_epoch={epoch} has no checkpoint; saved epochs: {run.epochs}")
    feats = checkpoint_features(run, epoch, ds)
    labels = np.asarray(ds.given_labels)
    rows = find_conflicting_pairs(pixels, labels, cand, features=feats, k=a["dup_neighbors"],
                                  pixel_rms=a["dup_pixel_rms"], feature_cos=a["dup_feature_cos"])
    rank = np.empty(len(idx), np.int64)
    rank[np.argsort(-curv, kind="stable")] = np.arange(1, len(idx) + 1)
    src = np.asarray(ds.source_index)
    for r in rows:
        i, j = r["i"], r["j"]
        r.update(true_i=int(ds.true_labels[i]), true_j=int(ds.true_labels[j]), curvature_i=float(curv[i]),
                 curvature_rank_i=int(rank[i]), curvature_j=float(curv[j]), curvature_rank_j=int(rank[j]),
                 same_source=bool(src[i] == src[j]))
    out = run.scores / "analysis"
    if rows:
        write_table(out / "duplicate_pairs", rows, markdown=False)
    else:
        write_text(out / "duplicate_pairs.csv", ",".join(PAIR_KEYS) + "\n")
    shown = rows[:24]
    cls = bundle.classes
    plots.duplicate_pairs(raw_images(ds, [r["i"] for r in shown]), raw_images(ds, [r["j"] for r in shown]),
                          [(f"#{r['i']} given {cls[r['given_i']][:7]}\ncurv. rank {r['curvature_rank_i']}",
                            f"#{r['j']} given {cls[r['given_j']][:7]}\nRMS {r['pixel_rms']:.3f}") for r in shown],
                          out / "duplicate_pairs.png")
    is_dup = np.asarray(ds.is_duplicate, bool)
    lines = [f"# Conflicting near-duplicates: {run.name}", "",
             f"- searched the {len(cand)} highest-curvature samples; {a['dup_neighbors']} neighbours each in pixels "
             f"(RMS <= {a['dup_pixel_rms']}) and epoch-{epoch} penultimate features (cosine >= {a['dup_feature_cos']})",
             f"- pairs with different given labels: {len(rows)} "
             f"(pixel {sum('pixel' in r['found_by'] for r in rows)}, feature {sum('feature' in r['found_by'] for r in rows)})"]
    summary = {"pairs": len(rows), "searched": len(cand)}
    if is_dup.any():
        copies = set(np.flatnonzero(is_dup).tolist())
        hit = {r["i"] if r["i"] in copies else r["j"] for r in rows
               if r["same_source"] and (r["i"] in copies or r["j"] in copies)}
        summary.update(injected=len(copies), injected_found=len(hit),
                       precision=float(np.mean([r["same_source"] for r in rows])) if rows else float("nan"))
        lines.append(f"- injected duplicates: {len(copies)}; found {len(hit)} of them "
                     f"(recall {len(hit) / len(copies):.3f}); "
                     f"share of reported pairs that are injected: {summary['precision']:.3f}")
    md = "\n".join(lines) + "\n"
    write_text(out / "duplicates.md", md)
    return {**summary, "rows": rows, "md": md, "out_dir": out}


def main(cfg: dict[str, Any]) -> None:
    """Entry point of find_duplicates.py."""
    res = find_duplicates(cfg)
    print(res["md"])
    for r in res["rows"][:20]:
        print(f"  {r['i']:>6} ({r['given_i']}) ~ {r['j']:>6} ({r['given_j']})  rms={r['pixel_rms']:.4f} "
              f"cos={r['feature_cos']:.4f}  {r['found_by']}")
    out = res["out_dir"]
    print(f"written: {out / 'duplicate_pairs.csv'}, {out / 'duplicate_pairs.png'}, {out / 'duplicates.md'}")
