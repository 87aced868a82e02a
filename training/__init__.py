"""DDA training data, training, evaluation and export (see the training issue)."""
