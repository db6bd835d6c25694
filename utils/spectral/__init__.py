"""Parameter-Hessian spectra and early spectral memorization (ESM).

- `hessian`: the Hessian-vector-product operator over a fixed sample set, Lanczos, SLQ, Hutchinson.
- `rmt`: Marchenko-Pastur fit of the bulk, Tracy-Widom edge margin, the ESM metric and its thresholds.
- `esm`: spectrum capture (per checkpoint, per training step), the ESM grid and its analysis.
- `plots`: the grid's figures.
"""
