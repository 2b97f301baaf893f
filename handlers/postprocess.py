"""Calibrated probabilities from logits: ``softmax(logits / T)`` with ``T`` from the model card.

The body built from them is :func:`core.prediction.build_prediction` (torch-free, shared with the
portal's reading of it).
"""

from __future__ import annotations

import torch

__all__ = ["calibrated_probabilities"]


def calibrated_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature-scaled softmax over the last dimension, in float32."""
    if not temperature > 0:
        raise ValueError("temperature must be positive")
    return torch.softmax(logits.float() / float(temperature), dim=-1)
