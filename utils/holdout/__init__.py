"""Out-of-sample evidence: models that never saw a sample predict it (`holdout.py`), and the memorization estimate
p_in - p_out built on them. `stage.py` trains and predicts, `files.py` owns the files (the one reader),
`memorization.py` the estimate."""
