"""Parameter-Hessian spectra and early spectral memorization (ESM).

- `hessian`: the Hessian-vector-product operator over a fixed sample set, Lanczos, SLQ, Hutchinson.
- `rmt`: Marchenko-Pastur fit of the bulk, Tracy-Widom edge margin, the ESM metric and `classify`, the one
  clean / memorizing rule (participation of the top 3K eigenvalues against 1.3 K).
- `capture`: the spectrum of a model over a fixed sample set, per checkpoint or per training step.
- `esm`: the ESM grid (clean vs random labels, several seeds, early steps) and its analysis.
- `plots`: the grid's figures.
"""
