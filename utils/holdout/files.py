"""The holdout stage's files, `curv_scores/<run>/holdout/`, and their one reader.

`holdout.npz` (plain arrays, no pickles):
- `probs` (R, K) float32: softmax of model `model[r]` on sample `sample[r]`, one row per (model, held-out sample);
- `sample` (R,) int64, `model` (R,) int32;
- `train_mask` (M, N) bool: True where model m trained on sample n (False: it held the sample out);
- `given_label` (N,) int64: the labels the models were trained and graded on (the run's given labels);
- `accuracy` (M,): each model's accuracy on the samples it held out, against the given labels; `accuracy_true` (M,)
  against the data set's own labels; `test_accuracy` (M,); `seconds` (M,) to train and predict;
- `model_runs` (M,) str: the run each model was trained as (under paths.pretrained; `recipe` method);
- `identity` str: hash of the settings below and the run's identity; `run_identity` str; `settings` str (JSON of
  the holdout section and the recipe used); `source` str: one sentence saying what made the probabilities.
`models.csv` / `.md`: one row per model (run, trained on, held out, held-out accuracy, test accuracy, seconds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..io import load_npz

FILE = "holdout.npz"


def holdout_dir(scores: Path, name: str = "") -> Path:
    """curv_scores/<run>/holdout/, or holdout_<name>/ for a named variant (`holdout.name`)."""
    return Path(scores) / (f"holdout_{name}" if name else "holdout")


@dataclass
class Holdout:
    """What the holdout files say about a run's N samples and K classes."""

    probs: np.ndarray  # (R, K)
    sample: np.ndarray  # (R,)
    model: np.ndarray  # (R,)
    train_mask: np.ndarray  # (M, N)
    accuracy: np.ndarray  # (M,)
    test_accuracy: np.ndarray  # (M,)
    source: str
    settings: dict[str, Any]
    identity: str

    @property
    def n_out(self) -> np.ndarray:
        """(N,) how many models held each sample out."""
        return (~self.train_mask).sum(0)

    def mean_probs(self) -> np.ndarray:
        """(N, K) float64: each sample's held-out probabilities averaged over the models that held it out (NaN rows
        for a sample no model held out)."""
        n, k = self.train_mask.shape[1], self.probs.shape[1]
        total = np.zeros((n, k))
        np.add.at(total, self.sample, self.probs.astype(np.float64))
        count = np.bincount(self.sample, minlength=n)[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            return total / count

    def given_probs(self, given: np.ndarray) -> np.ndarray:
        """(R,) each row's probability of its sample's given label (`given` (N,))."""
        return self.probs[np.arange(len(self.sample)), np.asarray(given)[self.sample]].astype(np.float64)

    def describe(self) -> str:
        """'2 models (folds), held-out accuracy 0.912-0.918: <source>'."""
        acc = self.accuracy
        return (f"{len(acc)} models ({self.settings.get('scheme', '?')}), held-out accuracy on the given labels "
                f"{acc.min():.3f}-{acc.max():.3f}, test accuracy {np.nanmin(self.test_accuracy):.3f}-"
                f"{np.nanmax(self.test_accuracy):.3f}: {self.source}")


def load_holdout(scores: Path, run_identity: str, given: np.ndarray, required: bool = False,
                 name: str = "") -> Holdout | None:
    """The holdout files of a run (`scores` = curv_scores/<run>), checked against the run (its identity and given
    labels (N,)); None when there are none and not `required`. One-line UserErrors for a stale or foreign file."""
    path = holdout_dir(scores, name) / FILE
    how = f"run holdout.py run={Path(scores).name}" + (f" holdout.name={name}" if name else "")
    if not path.is_file():
        if required:
            raise UserError(f"{path} not found; {how} first")
        return None
    z = load_npz(path, how, require=("probs", "sample", "model", "train_mask", "given_label", "run_identity"))
    if str(z["run_identity"]) != run_identity or not np.array_equal(z["given_label"], np.asarray(given)):
        raise UserError(f"{path} was made for another version of run {Path(scores).name} (its identity or labels "
                        f"differ); {how} again")
    return Holdout(z["probs"], z["sample"].astype(np.int64), z["model"].astype(np.int64), z["train_mask"].astype(bool),
                   z["accuracy"], z["test_accuracy"], str(z["source"]), json.loads(str(z["settings"])),
                   str(z["identity"]))
