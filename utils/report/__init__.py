"""The memorization report (`memorization_report.py`): ranking, categories, suspects.csv, figures and report.html."""
