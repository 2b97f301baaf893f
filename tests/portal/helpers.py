"""Test helpers: put an analysis into a final state through the same code path the worker uses."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image as PILImage

from core.prediction import ABSTAIN_MESSAGE, LOW_CONFIDENCE, FramePrediction
from portal.actions.outcomes import store_outcome
from portal.analyses.inference import Prediction
from portal.analyses.models import Analysis


def png_bytes(size: int = 32) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (size, size), (255, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def prediction(
    label: str = "Pre", confidence: float = 0.9, abstained: bool = False, heatmap: bool = True
) -> Prediction:
    rest = (1.0 - confidence) / 3
    probs = {c: (confidence if c == label else rest) for c in ("Benign", "Early", "Pre", "Pro")}
    body = FramePrediction(  # the contract's body (core.prediction), as the handler writes it
        model="m",
        version="1.0",
        label=None if abstained else label,
        class_index=None if abstained else list(probs).index(label),
        confidence=confidence,
        probabilities=probs,
        malignant_probability=1.0 - probs["Benign"],
        abstained=abstained,
        abstain_reason=LOW_CONFIDENCE if abstained else None,
        abstain_threshold=0.5,
        benign_threshold=None,
        quality={"is_blood_smear": True, "smear_score": 0.9},
        timing_ms={"total": 12.0},
        message=ABSTAIN_MESSAGE if abstained else None,
    ).to_json()
    return Prediction(body=body, latency_ms=42.0, heatmap_png=png_bytes() if heatmap else None, explained_class=label)


def complete(analysis: Analysis, label: str = "Pre", abstained: bool = False, heatmap: bool = True) -> Analysis:
    store_outcome(analysis.pk, prediction(label, abstained=abstained, heatmap=heatmap))
    analysis.refresh_from_db()
    return analysis


__all__ = ["complete", "png_bytes", "prediction"]


def uncompressed_pdf(specimen: Any, monkeypatch: Any) -> bytes:
    """The specimen's PDF report with uncompressed page streams, so a test can find its text."""
    from reportlab import rl_config

    from portal.analyses.pdf_report import build_pdf

    monkeypatch.setattr(rl_config, "pageCompression", 0)
    return build_pdf(specimen, "rev")
