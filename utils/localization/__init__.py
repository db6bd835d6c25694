"""Localizing memorization (Maini et al., ICML 2023).

- `groups`: layer groups read off a model's module tree, unit masks;
- `selection`: the examples under study (`localization.examples`: injected noise, a memorization report's top
  rows, or a CSV of indices), `studied_examples(run)`; every method takes its "noisy" set from it;
- `methods`: shared helpers (`split_accuracy`, `out_dir`), layer rewinding, layer retraining, the evaluation
  of example-tied dropout;
- `accounting`: gradient accounting (a training callback);
- `flipping`: neuron flipping;
- `etd`: the example-tied dropout module; importing the package registers it with the model registry's wrapper
  hook (`utils.models.register_wrapper`: models of runs with `model.etd_p_mem > 0` are wrapped in every stage);
- `report`: figures, the accounting summary, `load_results` for notebooks.

Runs are opened with `utils.runs.open_run`. The shared core imports nothing of this package: the top-level
scripts import it (one line), and a run trained with example-tied dropout records `utils.localization.etd` in its
run.json ("plugins"), which `utils.runs.model_for` imports before rebuilding the model.
"""

from . import etd  # noqa: F401  (registers example-tied dropout with utils.models.register_wrapper)

