from __future__ import annotations

import math

import pytest
import torch

from core.prediction import ABSTAIN_MESSAGE, build_prediction
from handlers.postprocess import calibrated_probabilities

CLASSES = ["Benign", "Early", "Pre", "Pro"]


def test_temperature_scaling_matches_the_formula() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0]])
    p = calibrated_probabilities(logits, 2.0)[0]
    z = [math.exp(v / 2.0) for v in (2.0, 0.5, -1.0, 0.0)]
    assert torch.allclose(p, torch.tensor([v / sum(z) for v in z]), atol=1e-7)
    assert calibrated_probabilities(logits, 1.0)[0].max() > p.max()  # T > 1 softens
    with pytest.raises(ValueError):
        calibrated_probabilities(logits, 0.0)


def test_prediction_fields_and_malignant_probability() -> None:
    body = build_prediction(
        [0.1, 0.2, 0.6, 0.1],
        classes=CLASSES,
        model="m",
        version="1.0",
        abstain_threshold=0.5,
        quality={"is_blood_smear": True, "smear_score": 0.9},
        timing_ms={"inference": 1.23456},
    )
    assert body["label"] == "Pre" and body["class_index"] == 2 and body["abstained"] is False
    assert body["confidence"] == pytest.approx(0.6)
    assert body["malignant_probability"] == pytest.approx(0.9)
    assert body["probabilities"] == {"Benign": 0.1, "Early": 0.2, "Pre": 0.6, "Pro": 0.1}
    assert body["quality"]["smear_score"] == 0.9 and body["timing_ms"] == {"inference": 1.235}
    assert body["model"] == "m" and body["version"] == "1.0" and "notice" in body


def test_abstention_gives_no_label() -> None:
    body = build_prediction([0.3, 0.3, 0.2, 0.2], classes=CLASSES, model="m", version="1", abstain_threshold=0.5)
    assert body["abstained"] is True and body["label"] is None and body["class_index"] is None
    assert body["message"] == ABSTAIN_MESSAGE and body["confidence"] == pytest.approx(0.3)


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        build_prediction([1.0], classes=CLASSES, model="m", version="1", abstain_threshold=0.0)
