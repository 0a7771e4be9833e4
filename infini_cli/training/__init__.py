"""Training: the loop (`train.py`), its data (passkey prompts, BABILong samples, book windows,
number distractors) and checkpoint averaging. Nothing outside this package imports it except
the CLI's `train` and `average` commands."""
