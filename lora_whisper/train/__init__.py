"""Training: recipes, data sources, synthetic speech, the trainer, evaluation and routing calibration."""
