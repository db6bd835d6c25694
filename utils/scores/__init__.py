"""The catalogue of per-sample evidence: every score and every category declared once (`catalogue.py`)."""
