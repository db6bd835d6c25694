"""The memorization report: ranking chosen by evidence (ranking.py), the per-sample table and categories
(table.py), figures (figures.py), the self-contained page (html.py), the stage itself (build.py)."""
