"""Localizing memorization (Maini et al., ICML 2023).

- `groups`: layer groups read off a model's module tree, unit masks;
- `selection`: the examples under study (`localization.examples`: injected noise, a memorization report's top
  rows, or a CSV of indices), `studied_examples(run)`; every method takes its "noisy" set from it;
- `methods`: shared helpers (`split_accuracy`, `out_dir`), layer rewinding, layer retraining, the evaluation
  of example-tied dropout;
- `accounting`: gradient accounting (a training callback);
- `flipping`: neuron flipping;
- `etd`: the example-tied dropout module (imported by `utils.runs`);
- `report`: figures, the accounting summary, `load_results` for notebooks.

Runs are opened with `utils.runs.open_run`. This package imports nothing on purpose: `utils.runs`
imports `utils.localization.etd` at module level, and an import here would make a cycle.
"""
