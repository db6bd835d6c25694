"""Input-loss curvature (Garg, Ravikumar, Roy, ICML 2024): estimator, scoring, detection tables against the
baselines, conflicting duplicates, Feldman–Zhang memorization and their figures."""
