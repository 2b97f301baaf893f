"""Model definitions, data, training, evaluation, calibration and export for the leukemia models."""
