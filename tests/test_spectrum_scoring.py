"""score.spectrum=true: the scoring loop also writes a parameter-Hessian spectrum per scored checkpoint."""

import numpy as np

from utils.curvature.scoring import score_run
from utils.train import train


def test_scoring_writes_spectra(tiny, tmp_path):
    cfg = tiny("data.subset=120", "train.epochs=1", "score.spectrum=true", "spectrum.n_samples=120",
               "spectrum.lanczos_iter=20", "spectrum.slq_iter=20", "spectrum.top_k=5", "spectrum.slq_probes=2")
    train(cfg)
    score_run(cfg)
    for e in (0, 1):
        with np.load(tmp_path / f"curv_scores/tiny/spectrum_epoch_{e:03d}.npz", allow_pickle=False) as z:
            ev = z["eigenvalues"]
            assert ev.shape == (5,) and np.all(np.diff(ev) <= 1e-6 * abs(ev).max()) and int(z["epoch"]) == e
            assert np.isfinite(ev).all()
