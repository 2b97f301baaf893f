"""The other labs' normal frames as Benign evidence (model_update.other_benign): each source split in two halves
that never share a file, the train half written as Benign frames with changed copies, the holdout half measured
(model_update.other_eval); and the out-of-distribution refit of a retrained version
(model_update.ood_refit.refit_features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.ood import OODScorer
from core.paths import BCCD
from core.registry import CLASS_NAMES
from model_update import other_benign
from model_update.ood_refit import refit_features
from model_update.other_eval import shares


def test_halves_are_fixed_disjoint_and_both_used() -> None:
    names = [p.name for p in sorted((BCCD / "JPEGImages").glob("*.jpg"))]
    sides = [other_benign.half(f"bccd/{n}") for n in names]
    assert sides == [other_benign.half(f"bccd/{n}") for n in names]  # a hash, not a draw
    assert 0.35 < sides.count("train") / len(sides) < 0.65
    train = {p.name for p in other_benign._bccd("train")}
    holdout = {p.name for p in other_benign._bccd("holdout")}
    assert train and holdout and not train & holdout and train | holdout == set(names)
    pbc_train = {p for ps in other_benign._pbc_cells("train", True).values() for p in ps}
    pbc_holdout = {p for ps in other_benign._pbc_cells("holdout", True).values() for p in ps}
    assert pbc_train and pbc_holdout and not pbc_train & pbc_holdout


def test_training_frames_are_benign_pngs_with_changed_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    few = other_benign._bccd("train")[:2]
    monkeypatch.setattr(other_benign, "_bccd", lambda side: few)
    frames = other_benign.training_frames(tmp_path, views=3, mosaics=1)
    assert len(frames) == 3 * 3  # two BCCD frames and one mosaic, each as it is and two changed copies
    assert {f.label for f in frames} == {CLASS_NAMES.index("Benign")}
    assert all(f.path.is_file() and f.path.parent == tmp_path for f in frames)
    assert len({f.sha256 for f in frames}) == len(frames)  # every copy differs from the others
    with Image.open(frames[-1].path) as mosaic:
        assert mosaic.size == (720, 480)  # six cells at the 4:3 of a camera frame
    sources = {f.source.split(":")[1] for f in frames}
    assert sources == {"bccd", "pbc_mosaic"}


def test_scene_augment_keeps_the_frame_size_and_changes_it() -> None:
    with Image.open(other_benign._bccd("train")[0]) as im:
        image = im.convert("RGB")
    for seed in range(4):
        out = other_benign.SceneAugment()(image, np.random.default_rng(seed))
        assert out.size == image.size and out.mode == "RGB"
        assert not np.array_equal(np.asarray(out), np.asarray(image))


def test_shares_count_all_benign_referred_and_refused() -> None:
    def ans(label: str | None, top: str) -> dict:
        return {"label": label, "probabilities": {c: (0.7 if c == top else 0.1) for c in CLASS_NAMES}}

    s = shares([ans("Pre", "Pre"), ans("Benign", "Benign"), ans(None, "Early"), {"refused": "not_a_blood_smear"}])
    assert s == {
        "frames": 4,
        "answered_all": 0.25,
        "answered_benign": 0.25,
        "referred": 0.25,
        "refused": 0.25,
        "top_class_malignant": 0.5,
    }


def _ood(score: str) -> dict:
    return {
        "kind": "mahalanobis",
        "method": "mahalanobis",
        "threshold": 1.3,
        "means": [[0.0]],
        "whitening": [[1.0]],
        "feature_scale": 5.0,
        "image": {"mean": [0.0], "whitening": [[1.0]], "scale": 2.0},
        "info": {"score": score},
    }


def test_refit_features_fits_the_new_features_with_the_base_versions_scale_ratio() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 100)
    x = rng.normal(size=(400, 16)) + labels[:, None] * 3.0
    blocks = [f"b{i % 10}" for i in range(400)]
    ood = _ood("mahalanobis_tied_pca8_residual+image_statistics")
    same = refit_features(ood, x, labels, blocks, base_pooled=x)
    assert same["feature_scale"] == pytest.approx(5.0)  # features as the base's: the base's scale
    assert same["image"] == ood["image"] and same["threshold"] == 1.3  # untouched
    assert np.array(same["whitening"]).shape == (16, 8) and same["residual_scale"] is not None
    scorer = OODScorer.from_dict({**same, "image": None, "feature_scale": None})
    far = scorer.feature_scores(x + 25.0, np.zeros((400, 4)))
    inside = scorer.feature_scores(x, np.zeros((400, 4)))
    assert far.min() > inside.max()
    # a base version whose training features were looser (more within-class noise): the new, tighter features
    # keep the base's share with a proportionally smaller scale
    looser = x + rng.normal(size=x.shape) * 2.0
    tighter = refit_features(ood, x, labels, blocks, base_pooled=looser)
    assert tighter["feature_scale"] < 5.0
    assert "refitted" in tighter["info"] and tighter["info"]["score"].startswith("mahalanobis_tied_pca8")
    plain = refit_features({**_ood("mahalanobis_tied"), "image": None}, x, labels, blocks, base_pooled=x)
    assert plain["feature_scale"] is None and plain["threshold"] == pytest.approx(1.3)  # the threshold is the scale
    with pytest.raises(ValueError, match="cannot refit"):
        refit_features(_ood("energy"), x, labels, blocks, base_pooled=x)
