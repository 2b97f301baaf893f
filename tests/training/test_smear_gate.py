"""Smear gate: smears from this data set and from another lab (BCCD) pass, non-smears are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.errors import RequestError
from served_model.gate_statistics import FEATURE_NAMES, image_statistics
from served_model.smear_gate import GateResult, SmearGate
from tests.conftest import DATA_ALL4, SHARED
from training.smear_gate import fit_smear_gate, synthetic_negatives

BCCD = SHARED / "data" / "bccd" / "JPEGImages"


def _images(paths: list[Path]) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in paths]


@pytest.fixture(scope="module")
def split_paths() -> dict[str, list[Path]]:
    if not DATA_ALL4.is_dir() or not BCCD.is_dir():
        pytest.fail(f"shared data missing under {SHARED}")
    from training.data import load_split

    s = load_split(DATA_ALL4 / "original")
    bccd = sorted(BCCD.glob("*.jpg"))
    return {
        "train": [x.path for x in s.train[::30]],
        "val": [x.path for x in s.val[::10]],
        "bccd_fit": bccd[0::8],
        "bccd_test": bccd[1::6],
    }


@pytest.fixture(scope="module")
def gate(split_paths: dict[str, list[Path]]) -> SmearGate:
    return fit_smear_gate(
        _images(split_paths["train"]), extra_positives=_images(split_paths["bccd_fit"]), n_negatives=270, seed=0
    )


def test_statistics_shape_and_finite() -> None:
    v = image_statistics(Image.new("RGB", (50, 40), (10, 200, 30)))
    assert v.shape == (len(FEATURE_NAMES),)
    assert np.isfinite(v).all()


def test_accepts_smears_from_both_labs(gate: SmearGate, split_paths: dict[str, list[Path]]) -> None:
    for key in ("val", "bccd_test"):
        results = [gate.evaluate(im) for im in _images(split_paths[key])]
        assert all(isinstance(r, GateResult) and 0.0 <= r.score <= 1.0 for r in results)
        rate = np.mean([r.accepted for r in results])
        assert rate >= 0.95, f"{key}: only {rate:.2%} accepted"


def test_accepts_colour_perturbed_smears(gate: SmearGate, split_paths: dict[str, list[Path]]) -> None:
    from training.augment import PERTURBATIONS

    ims = _images(split_paths["val"][:12])
    for name, fn in PERTURBATIONS.items():
        rate = np.mean([gate.evaluate(fn(im)).accepted for im in ims])
        assert rate >= 0.9, f"{name}: {rate:.2%}"


def test_refuses_non_smears(gate: SmearGate) -> None:
    # a different seed than the fit: new noise, text pages, gradients, photo crops ...
    negs = list(synthetic_negatives(90, seed=777))
    accepted = [kind for kind, im in negs if gate.evaluate(im).accepted]
    assert len(accepted) <= 2, accepted
    for kind in ("flat", "uniform_noise", "text"):
        assert kind not in accepted


def test_refuses_unseen_photo_and_segmented_frames(gate: SmearGate) -> None:
    import matplotlib.cbook as cbook

    photo = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    assert not gate.evaluate(photo).accepted
    segmented = sorted((DATA_ALL4 / "segmented" / "Pro").glob("*.jpg"))[:5]
    assert not any(gate.evaluate(im).accepted for im in _images(segmented))


def test_roundtrip_through_json(gate: SmearGate, split_paths: dict[str, list[Path]]) -> None:
    d = json.loads(json.dumps(gate.to_dict()))
    again = SmearGate.from_dict(d)
    im = Image.open(split_paths["val"][0])
    assert again.evaluate(im).score == pytest.approx(gate.evaluate(im).score)
    assert again.threshold == gate.threshold


def test_pooled_feature_distance(gate: SmearGate, split_paths: dict[str, list[Path]]) -> None:
    import torch

    g = SmearGate.from_dict(gate.to_dict())
    rng = np.random.default_rng(0)
    g.fit_feature_statistics(rng.normal(size=(200, 8)))
    im = Image.open(split_paths["val"][0])
    near = g.evaluate(im, pooled_features=torch.zeros(8))
    far = g.evaluate(im, pooled_features=torch.full((8,), 50.0))
    assert near.accepted and "feature_distance" in near.details
    assert not far.accepted


def test_from_dict_rejects_bad_input(gate: SmearGate) -> None:
    d = gate.to_dict()
    with pytest.raises(ValueError):
        SmearGate.from_dict({**d, "kind": "other"})
    with pytest.raises(ValueError):
        SmearGate.from_dict({**d, "coef": d["coef"][:-1]})


def test_fast_statistics_count_as_numpy_does() -> None:
    """The lookup-table hue/saturation histogram equals np.histogram2d on the HSV bytes / 255, for every
    byte value and on real and random images; distinct colours counted by bincount equal np.unique's."""
    from served_model import gate_statistics

    values = np.arange(256, dtype=np.float32) / 255.0
    for bins, lut in zip(gate_statistics._HIST_BINS, (gate_statistics._HUE_BIN, gate_statistics._SAT_BIN), strict=True):
        for k, v in enumerate(values):
            hist, _ = np.histogram(np.array([v]), bins=bins, range=(0.0, 1.0))
            assert int(np.argmax(hist)) == lut[k], (bins, k)
    rng = np.random.default_rng(0)
    frames = [Image.open(p).convert("RGB") for p in sorted((DATA_ALL4 / "original" / "Pre").glob("*.jpg"))[:5]]
    frames += [Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)) for _ in range(3)]
    for image in frames:
        rgb = gate_statistics._prepare(image)
        hsv = np.asarray(Image.fromarray((rgb * 255).astype(np.uint8)).convert("HSV"), dtype=np.float32) / 255.0
        ref, _, _ = np.histogram2d(
            hsv[..., 0].ravel(), hsv[..., 1].ravel(), bins=gate_statistics._HIST_BINS, range=((0.0, 1.0), (0.0, 1.0))
        )
        assert np.array_equal(gate_statistics._hue_sat_hist(rgb), ref.ravel() / ref.sum())
        q = (rgb * 31.999).astype(np.int32)
        codes = q[..., 0] * 1024 + q[..., 1] * 32 + q[..., 2]
        distinct = image_statistics(image)[FEATURE_NAMES.index("log_unique_colour_fraction")]
        assert distinct == pytest.approx(np.log(len(np.unique(codes)) / codes.size + 1e-4), abs=0, rel=1e-15)
        chroma = image_statistics(image)[FEATURE_NAMES.index("chroma_mean")]
        assert chroma == (rgb.max(axis=-1) - rgb.min(axis=-1)).mean()


def test_fast_statistics_equal_the_straightforward_numpy() -> None:
    """The serving path's shortcuts (percentiles from one sort or one partition, the spectral sums as one product over a
    real FFT's half spectrum, the Gaussian smoothing as matrix products) give what ``np.percentile``,
    ``np.median``, sums over ``np.fft.fft2``'s full spectrum and ``ndimage.gaussian_filter`` give."""
    from scipy import fft as sp_fft
    from scipy import ndimage

    from served_model import gate_statistics as sg

    rng = np.random.default_rng(3)
    frames = [Image.open(p).convert("RGB") for p in sorted((DATA_ALL4 / "original" / "Early").glob("*.jpg"))[:4]]
    lums = [sg._prepare(im) @ np.array([0.299, 0.587, 0.114], dtype=np.float32) for im in frames]
    lums += [rng.random((128, 128), dtype=np.float32) ** e for e in (0.3, 1.0, 4.0)]
    lums += [np.round(rng.random((128, 128), dtype=np.float32) * 3) / 3]  # many ties
    for lum in lums:
        ordered = np.sort(lum, axis=None)
        qs = (5.0, 10.0, 50.0, 70.0, 95.0)
        assert sg._percentiles(ordered, qs) == np.percentile(lum, qs).tolist()
        assert sg._percentile_of_scalar_q(ordered, 90) == float(np.percentile(lum, 90))
        assert sg._median(ordered) == float(np.median(lum))
        for part in (lum, lum[:, :-1], lum[:1, :3]):  # even, odd and tiny counts
            assert sg._percentile_of_scalar_q(sg._ordered_at(part, 90), 90) == float(np.percentile(part, 90))
            assert sg._median(sg._ordered_at(part, None)) == float(np.median(part))

        x = (lum - lum.mean()).astype(np.float64)
        power = np.abs(np.fft.fft2(x)) ** 2
        want = [power.sum()]
        want += [power[i == sg._BAND].sum() for i in range(sg._N_BANDS)]
        want += [power[i == sg._SECTOR].sum() for i in range(4)]
        want += [(power * gain).sum() for gain in sg._LOG_GAIN]
        half = sp_fft.rfft2(x)
        got = sg._SPECTRUM_WEIGHTS @ (half.real**2 + half.imag**2).ravel()
        np.testing.assert_allclose(got, want, rtol=1e-9)

        stack = np.stack([lum, lum * lum, 1 - lum])
        np.testing.assert_allclose(
            sg._SMOOTH @ stack @ sg._SMOOTH.T, ndimage.gaussian_filter(stack, (0.0, 2.0, 2.0)), rtol=0, atol=2e-6
        )


# -- the shipped gate (version 2) and kinds of image it never saw (issue 13 item 4) -------------------------------
STORE = Path(__file__).resolve().parents[2] / "model_store"


@pytest.fixture(scope="module")
def shipped_gates() -> dict[str, SmearGate]:
    from core.registry import model_names

    return {
        m: SmearGate.from_dict(json.loads((STORE / f"{m}.card.json").read_text())["smear_gate"]) for m in model_names()
    }


def test_shipped_gate_refuses_the_issue_regression_cases(shipped_gates: dict[str, SmearGate]) -> None:
    """The grayscale moon photograph and the retina fundus image the previous gate let through."""
    from training.gate_families import regression_images

    for name, gate in shipped_gates.items():
        assert gate.version == 2 and gate.density is not None, name
        for case, im in regression_images().items():
            result = gate.evaluate(im)
            assert not result.accepted and result.score < gate.threshold, (name, case, result.score)
            with pytest.raises(RequestError) as err:
                gate.check(im)
            assert err.value.code == "not_a_blood_smear"


def test_shipped_gate_accepts_held_out_smears_and_refuses_new_draws(shipped_gates: dict[str, SmearGate]) -> None:
    """Validation parts of the three smear sources (never fitted on) >= 99% accepted; new draws of every
    negative family (another seed than the fit's) refused."""
    from training.augment import PERTURBATIONS
    from training.cell_data import bccd_split, pbc_split
    from training.data import load_split
    from training.gate_families import FAMILIES, family_images

    gate = shipped_gates["xception_bigru"]
    val = _images([s.path for s in load_split(DATA_ALL4 / "original").val[::12]])
    smears = val + [fn(im) for fn in PERTURBATIONS.values() for im in val[::4]]
    smears += _images([f.image for f in bccd_split()[1][::3]]) + _images([s.path for s in pbc_split()[1][::16]])
    accepted = np.mean([gate.evaluate(im).accepted for im in smears])
    assert len(smears) >= 120 and accepted >= 0.99, accepted
    for fam in FAMILIES:
        refused = [not gate.evaluate(im).accepted for im in family_images(fam, 10, seed=5)]
        assert all(refused), (fam, refused)


def test_leave_one_family_out_refuses_the_family_it_never_saw() -> None:
    """A gate fitted without the fundus, astronomy (moon) or grayscale-photo family (small samples: seconds)
    refuses >= 99% of that family and still accepts >= 99% of the held-out smears."""
    from training.fit_gate import gate_data, leave_one_family_out

    data = gate_data(family_size=24, every=(12, 4, 12), val_every=10)
    held = ("fundus", "astronomy", "photo_gray")
    rates = leave_one_family_out(data, families=held, sources=())
    for fam in held:
        r = rates[f"unseen_family_{fam}"]
        assert r["n"] == 24 and 1 - r["accepted"] >= 0.99, (fam, r)
        smears = rates[f"smears_without_{fam}"]
        assert smears["n"] >= 150 and smears["accepted"] >= 0.99, (fam, smears)


def test_scoring_uses_the_fitted_numbers_and_follows_a_refit(
    shipped_gates: dict[str, SmearGate], split_paths: dict[str, list[Path]]
) -> None:
    """SmearGate turns the card's lists into arrays once (``_arrays``) and computes an image's log-density
    once per evaluation: the density is the mixture's (as scikit-learn scores it from the same numbers), the
    reported one is the one scored, and a fitted value set afterwards (training sets them one by one) is
    what the next score uses."""
    from sklearn.mixture import GaussianMixture

    gate = SmearGate.from_dict(shipped_gates["effnetb3_bigru"].to_dict())
    assert gate.density is not None and gate.pos_mean is not None and gate.pos_scale is not None
    im = Image.open(split_paths["val"][0]).convert("RGB")
    v = gate.statistics(im)
    result = gate.evaluate(im)
    mixture = GaussianMixture(len(gate.density["weights"]), covariance_type="full")
    mixture.weights_ = np.asarray(gate.density["weights"])
    mixture.means_ = np.asarray(gate.density["means"])
    mixture.precisions_cholesky_ = np.asarray(gate.density["precisions_cholesky"])
    z = (v - np.asarray(gate.pos_mean)) / np.asarray(gate.pos_scale)
    assert gate.log_density(v)[0] == pytest.approx(mixture.score_samples(z[None])[0], rel=1e-9)
    assert result.details["log_density"] == round(float(gate.log_density(v)[0]), 5)
    assert result.accepted and result.score == round(gate._score_vector(v), 6)

    moved = gate.to_dict()
    moved["pos_mean"] = (np.asarray(gate.pos_mean) + 3 * np.asarray(gate.pos_scale)).tolist()
    gate.pos_mean = moved["pos_mean"]  # after the arrays were made
    assert gate.evaluate(im).details["log_density"] == SmearGate.from_dict(moved).evaluate(im).details["log_density"]
    assert gate.log_density(v)[0] < mixture.score_samples(z[None])[0] - 10
