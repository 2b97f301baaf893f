from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from core.prediction import (
    ABSTAIN_MESSAGE,
    ABSTAIN_MESSAGES,
    BENIGN_NOT_CONFIRMED,
    LOW_CONFIDENCE,
    PREDICTION_KEYS,
    build_prediction,
    decide,
)
from handlers.postprocess import calibrated_probabilities

CLASSES = ["Benign", "Early", "Pre", "Pro"]
REPO = Path(__file__).resolve().parents[2]


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


def test_benign_is_answered_only_above_the_benign_threshold() -> None:
    body = build_prediction(
        [0.9, 0.05, 0.03, 0.02], classes=CLASSES, model="m", version="1", abstain_threshold=0.5, benign_threshold=0.95
    )
    assert body["abstained"] is True and body["label"] is None and body["class_index"] is None
    assert body["abstain_reason"] == BENIGN_NOT_CONFIRMED and body["benign_threshold"] == pytest.approx(0.95)
    assert body["message"] == ABSTAIN_MESSAGES[BENIGN_NOT_CONFIRMED]
    assert body["confidence"] == pytest.approx(0.9) and body["malignant_probability"] == pytest.approx(0.1)
    # P(Benign) equal to the threshold is not above it: still referred
    tie = build_prediction(
        [0.95, 0.03, 0.01, 0.01], classes=CLASSES, model="m", version="1", abstain_threshold=0.5, benign_threshold=0.95
    )
    assert tie["label"] is None and tie["abstain_reason"] == BENIGN_NOT_CONFIRMED
    above = build_prediction(
        [0.97, 0.01, 0.01, 0.01], classes=CLASSES, model="m", version="1", abstain_threshold=0.5, benign_threshold=0.95
    )
    assert above["label"] == "Benign" and above["abstained"] is False and above["abstain_reason"] is None
    # the Benign threshold never touches a malignant answer
    pre = build_prediction(
        [0.3, 0.05, 0.6, 0.05], classes=CLASSES, model="m", version="1", abstain_threshold=0.5, benign_threshold=0.99
    )
    assert pre["label"] == "Pre" and pre["abstain_reason"] is None


def test_low_confidence_wins_over_benign_and_old_cards_keep_the_confidence_rule() -> None:
    low = build_prediction(
        [0.4, 0.3, 0.2, 0.1], classes=CLASSES, model="m", version="1", abstain_threshold=0.5, benign_threshold=0.3
    )
    assert low["label"] is None and low["abstain_reason"] == LOW_CONFIDENCE and low["message"] == ABSTAIN_MESSAGE
    old = build_prediction([0.6, 0.2, 0.1, 0.1], classes=CLASSES, model="m", version="1", abstain_threshold=0.5)
    assert old["label"] == "Benign" and old["benign_threshold"] is None and old["abstain_reason"] is None
    assert set(old) == PREDICTION_KEYS and set(low) == PREDICTION_KEYS | {"message"}


def test_decide_matches_the_body() -> None:
    assert decide([0.1, 0.2, 0.6, 0.1], CLASSES, abstain_threshold=0.5) == (2, None)
    assert decide([0.7, 0.1, 0.1, 0.1], CLASSES, abstain_threshold=0.5, benign_threshold=0.8) == (
        None,
        BENIGN_NOT_CONFIRMED,
    )


def test_card_benign_threshold_is_optional_and_checked() -> None:
    from core.card import CardError, validate_card

    card = json.loads((REPO / "model_store" / "xception_bigru.card.json").read_text())
    card.pop("benign_threshold", None)
    validate_card(card)
    for bad in (1.5, -0.1, "0.9", True):
        with pytest.raises(CardError):
            validate_card(card | {"benign_threshold": bad})
    validate_card(card | {"benign_threshold": 0.97})
