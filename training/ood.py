"""Fit, choose and measure each frame model's out-of-distribution score (:mod:`core.ood`); per-source tables.

``python -m training.ood`` (``make ood``) reads the served outputs cached by :mod:`evaluation.ood_features`
(logits and pooled features of every frame model on the training and validation blocks of the B-ALL set and
on other sources), and per model:

1. fits every candidate score on the training blocks' pooled features (or logits): Mahalanobis distance to
   the class means under the tied covariance (Ledoit-Wolf shrunk; all directions, or the leading 64/128
   principal directions, with or without the residual), to a single mean, the kNN cosine distance
   (k = 10, measured only: it would ship the training features), the energy of the logits, and the
   current baselines (the maximum softmax probability, the smear gate's pooled-feature distance);
2. sets each score's threshold at the smallest value that keeps at least 97% of the same-source validation
   frames (and measures, cross-fitted over two halves of the validation blocks, what share a threshold
   fitted on one half keeps of the other);
3. measures per source the AUROC against the validation frames and the share beyond the threshold;
4. keeps the served candidate with the best mean AUROC over the other-lab sources (BCCD frames, PBC cells,
   PBC mosaics) and writes it into ``model_store/<model>.card.json`` (``ood``), with the per-source table
   of what the served model now answers (refused by the smear gate / out of distribution / abstained /
   Benign / ALL) before and after;
5. for the consensus (:mod:`portal.analyses.consensus`, the shipped ensemble) the same table, and on the
   validation frames its coverage and macro-F1 beside each model's: ``docs/ood.md`` and ``docs/ood.json``.

The archives take the new cards with ``make repack``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.metrics import f1_score, roc_auc_score

from core.ood import OODScorer
from core.paths import REPO
from core.prediction import OUT_OF_DISTRIBUTION, decide
from core.registry import CLASS_NAMES, model_names
from served_model.smear_gate import SmearGate
from training.card import OOD_HEADING, ood_markdown
from training.data import load_split
from training.ood_cache import CACHE_DIR, SHIFTS, load_source

__all__ = ["KEEP", "OTHER_LAB", "Candidate", "fit_candidates", "keep_threshold", "mahalanobis_candidate", "main"]

#: share of the same-source validation frames the threshold keeps (at least). The target is 97% of frames the fit has
#: not seen, and the consensus refers a frame that any one of the four models flags, so the union counts: set at 98%
#: here (docs/ood.md: the cross-fitted share per model, the consensus's out_of_distribution share on validation).
KEEP = 0.98
OTHER_LAB = ("bccd", "pbc_cells", "pbc_mosaic")
SOURCES = ("all4_val", *OTHER_LAB, *(f"val_{s}" for s in SHIFTS))
COMMAND = "python -m evaluation.ood_features && python -m training.ood"
_KNN = 10
DEALS = 10  # deals of the validation blocks for the cross-fitted consensus coverage
_BENIGN = CLASS_NAMES.index("Benign")


@dataclass
class Candidate:
    """One score: ``fn(outputs) -> scores`` (outputs: pooled, logits, statistics of a source); ``scorer``: the
    served form (None: measured only)."""

    name: str
    fn: Callable[[dict[str, np.ndarray]], np.ndarray]
    scorer: OODScorer | None = None


def _softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def mahalanobis_candidate(x: np.ndarray, y: np.ndarray | None, k: int | None, residual: bool, name: str) -> Candidate:
    """Class-conditional (``y``) or single-mean Mahalanobis on the Ledoit-Wolf shrunk tied covariance."""
    labels = np.zeros(len(x), dtype=np.int64) if y is None else y
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(axis=0) for c in classes])
    centred = x - means[np.searchsorted(classes, labels)]
    cov = LedoitWolf(assume_centered=True).fit(centred).covariance_
    evals, evecs = np.linalg.eigh(cov)
    evals, evecs = evals[::-1], evecs[:, ::-1]
    k = len(evals) if k is None else k
    whitening = evecs[:, :k] / np.sqrt(evals[:k])
    rest = float(evals[k:].mean()) if residual and k < len(evals) else None
    scorer = OODScorer(
        method="mahalanobis",
        threshold=0.0,
        means=[[float(f"{v:.7g}") for v in row] for row in means],
        whitening=[[float(f"{v:.7g}") for v in row] for row in whitening],
        residual_scale=None if rest is None else float(f"{rest:.7g}"),
    )
    return Candidate(name, lambda o: scorer.scores(o["pooled"], o["logits"]), scorer)


def _knn(x: np.ndarray) -> Candidate:
    bank = x / np.linalg.norm(x, axis=1, keepdims=True)

    def fn(o: dict[str, np.ndarray]) -> np.ndarray:
        p = o["pooled"].astype(np.float64)
        q = p / np.linalg.norm(p, axis=1, keepdims=True)
        sims = np.sort(q @ bank.T, axis=1)[:, -_KNN]
        return 1.0 - sims

    return Candidate(f"knn_cosine_k{_KNN}", fn)


def _image_whitening(stats: np.ndarray) -> dict[str, Any]:
    """Mean and whitening matrix (Ledoit-Wolf shrunk covariance) of the training frames' image statistics."""
    mean = stats.mean(axis=0)
    cov = LedoitWolf().fit(stats - mean).covariance_
    evals, evecs = np.linalg.eigh(cov)
    w = evecs / np.sqrt(np.maximum(evals, 1e-12))
    return {"mean": [float(f"{v:.9g}") for v in mean], "whitening": [[float(f"{v:.9g}") for v in r] for r in w]}


def _with_image(base: Candidate, image: dict[str, Any], val: dict[str, np.ndarray]) -> Candidate:
    """``base`` (served) combined with the image-statistics distance, each part scaled by its own validation
    threshold (so that either part alone beyond its own keeps the same meaning)."""
    assert base.scorer is not None
    probe = OODScorer(method="mahalanobis", threshold=0.0, means=[[0.0]], whitening=[[1.0]])
    probe.image = image | {"scale": 1.0}
    image_val = probe.image_scores(val["statistics"])
    d = base.scorer.to_dict() | {
        "feature_scale": keep_threshold(base.fn(val)),
        "image": image | {"scale": keep_threshold(image_val)},
    }
    scorer = OODScorer.from_dict(d)
    return Candidate(
        f"{base.name}+image_statistics", lambda o: scorer.scores(o["pooled"], o["logits"], o["statistics"]), scorer
    )


def fit_candidates(train: dict[str, np.ndarray], card: dict[str, Any], val: dict[str, np.ndarray]) -> list[Candidate]:
    """Every candidate score fitted on the training blocks' outputs (``val``: only the scales of the parts of
    a combined score; the threshold is set afterwards)."""
    x, y = train["pooled"].astype(np.float64), train["labels"]
    energy = OODScorer(method="energy", threshold=0.0)
    gate = SmearGate.from_dict(card["smear_gate"])
    t = float(card["temperature"])
    image = _image_whitening(train["statistics"])
    probe = OODScorer(method="energy", threshold=0.0, feature_scale=1.0, image=image | {"scale": 1.0})
    features = [
        mahalanobis_candidate(x, y, None, False, "mahalanobis_tied"),
        mahalanobis_candidate(x, y, 128, True, "mahalanobis_tied_pca128_residual"),
        mahalanobis_candidate(x, y, 64, True, "mahalanobis_tied_pca64_residual"),
        mahalanobis_candidate(x, y, 64, False, "mahalanobis_tied_pca64"),
        mahalanobis_candidate(x, None, None, False, "mahalanobis_single_mean"),
        Candidate("energy", lambda o: energy.scores(o["pooled"], o["logits"]), energy),
    ]
    compact = [c for c in features if c.name in ("mahalanobis_tied_pca64_residual", "mahalanobis_tied_pca64")]
    return [
        *features,
        *(_with_image(c, image, val) for c in compact),
        _knn(x),
        Candidate("max_softmax (1 - p)", lambda o: 1.0 - _softmax(o["logits"].astype(np.float64), t).max(axis=1)),
        Candidate("gate_feature_distance", lambda o: gate._feature_distance(o["pooled"])),
        Candidate("image_statistics", lambda o: probe.image_scores(o["statistics"])),
    ]


def keep_threshold(scores: np.ndarray, keep: float = KEEP) -> float:
    """The smallest threshold that keeps (score <= threshold) at least ``keep`` of ``scores``."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    return float(s[min(len(s) - 1, int(np.ceil(keep * len(s))) - 1)])


def _other_half_thresholds(scores: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Each frame's threshold fitted on the other half of the frames (``first``: the frames of one half)."""
    return np.where(first, keep_threshold(scores[~first]), keep_threshold(scores[first]))


def _cross_fitted_keep(scores: np.ndarray, blocks: Sequence[str]) -> float:
    """Share kept when the threshold is fitted on one half of the validation blocks and applied to the other."""
    first = np.isin(np.asarray(blocks), sorted(set(blocks))[0::2])
    return float((scores <= _other_half_thresholds(scores, first)).mean())


def _answers(card: dict[str, Any], out: dict[str, np.ndarray], ood: np.ndarray | None) -> list[tuple[str, Any]]:
    """What the served model answers per image: ("refused"|"ood"|"abstained"|"benign"|"all", label index)."""
    probs = _softmax(out["logits"].astype(np.float64), float(card["temperature"]))
    rows: list[tuple[str, Any]] = []
    for i, p in enumerate(probs):
        if not out["gate_accepted"][i]:
            rows.append(("refused", None))
            continue
        if ood is not None and ood[i]:
            rows.append(("ood", None))
            continue
        idx, _ = decide(
            p,
            CLASS_NAMES,
            abstain_threshold=float(card["abstain_threshold"]),
            benign_threshold=card["benign_threshold"],
        )
        rows.append(("abstained", None) if idx is None else ("benign" if idx == _BENIGN else "all", idx))
    return rows


def _shares(rows: list[tuple[str, Any]]) -> dict[str, float]:
    n = len(rows)
    return {
        k: round(sum(1 for r in rows if r[0] == k) / n, 4) for k in ("refused", "ood", "abstained", "benign", "all")
    }


def _val_metrics(rows: list[tuple[str, Any]], labels: np.ndarray) -> dict[str, Any]:
    answered = [i for i, r in enumerate(rows) if r[1] is not None]
    pred = np.array([rows[i][1] for i in answered])
    true = labels[answered]
    return {
        "coverage": round(len(answered) / len(rows), 4),
        "macro_f1_answered": round(float(f1_score(true, pred, average="macro")), 4),
        "malignant_answered_benign": int(((true != _BENIGN) & (pred == _BENIGN)).sum()),
    }


def evaluate_model(name: str, card: dict[str, Any], cache: Path) -> tuple[dict[str, Any], OODScorer, dict]:
    """Candidates, the kept score (threshold set) and per-source answers of one model."""
    train = _load(name, "all4_train", cache)
    outs = {s: _load(name, s, cache) for s in SOURCES if (cache / name / f"{s}.npz").is_file()}
    missing = [s for s in ("all4_val", *OTHER_LAB) if s not in outs]
    if missing:
        raise FileNotFoundError(
            f"{name}: no cached outputs for {', '.join(missing)} (python -m evaluation.ood_features)"
        )
    val = outs["all4_val"]
    blocks = _val_blocks([str(i) for i in val["ids"]])
    table: dict[str, Any] = {}
    best: tuple[float, Candidate, float] | None = None
    for cand in fit_candidates(train, card, val):
        v = cand.fn(val)
        thr = keep_threshold(v)
        row: dict[str, Any] = {"threshold": thr, "val_kept": round(float((v <= thr).mean()), 4)}
        row["val_kept_cross_fitted"] = round(_cross_fitted_keep(v, blocks), 4)
        for s in list(outs)[1:]:
            o = cand.fn(outs[s])
            auroc = roc_auc_score(np.r_[np.zeros(len(v)), np.ones(len(o))], np.r_[v, o])
            row[s] = {"auroc": round(float(auroc), 4), "beyond": round(float((o > thr).mean()), 4)}
        row["other_lab_auroc"] = round(float(np.mean([row[s]["auroc"] for s in OTHER_LAB])), 4)
        table[cand.name] = row
        if cand.scorer is not None and (best is None or row["other_lab_auroc"] > best[0]):
            best = (row["other_lab_auroc"], cand, thr)
    assert best is not None
    _, kept, thr = best
    assert kept.scorer is not None
    scorer = kept.scorer
    scorer.threshold = thr
    answers: dict[str, Any] = {}
    per_image: dict[str, Any] = {}
    for s, out in outs.items():
        scores = scorer.scores(out["pooled"], out["logits"], out["statistics"])
        beyond = scores > thr
        before, after = _answers(card, out, None), _answers(card, out, beyond)
        answers[s] = {"n": len(out["ids"]), "before": _shares(before), "after": _shares(after)}
        per_image[s] = {
            "ids": [str(i) for i in out["ids"]],
            "before": before,
            "after": after,
            "logits": out["logits"],
            "gate_accepted": out["gate_accepted"],
            "scores": scores,
            "beyond": beyond,
        }
    for when, rows in (("before", _answers(card, val, None)), ("after", per_image["all4_val"]["after"])):
        answers["all4_val"][f"metrics_{when}"] = _val_metrics(rows, val["labels"])
    report = {
        "candidates": table,
        "kept": kept.name,
        "threshold": thr,
        "answers": answers,
        "n_train": len(train["ids"]),
    }
    return report, scorer, per_image


def _load(model: str, source: str, cache: Path) -> dict[str, np.ndarray]:
    """A source's cached outputs of ``model`` with the smear gate's image statistics of its images."""
    out = load_source(model, source, cache)
    with np.load(cache / "gate" / f"{source}.npz", allow_pickle=False) as z:
        stats = np.asarray(z["statistics"], dtype=np.float64)
        if "ids" in z.files:  # the statistics of every image of the source; the model may have run on a subset
            row = {str(i): k for k, i in enumerate(z["ids"])}
            stats = stats[[row[str(i)] for i in out["ids"]]]
        out["statistics"] = stats
    if len(out["statistics"]) != len(out["ids"]):
        raise ValueError(f"{source}: {len(out['statistics'])} gate statistics for {len(out['ids'])} images")
    return out


def _val_blocks(ids: Sequence[str]) -> list[str]:
    by_rel = {s.relpath: s.block for s in load_split().val}
    return [by_rel[str(i)] for i in ids]


def _consensus_outcomes(
    cards: dict[str, dict[str, Any]], per_image: dict[str, dict[str, Any]], source: str
) -> dict[str, Any]:
    """The consensus (the rules now) and the ensemble alone (the old rule) on every image of ``source``, with
    the consensus's variants: rule 5 counting answers only (``answers_only``), and both without the
    out-of-distribution score (``no_ood``, ``no_ood_answers_only``: what the other rules alone would answer)."""
    from core.ensemble import Ensemble
    from portal.analyses.consensus import MODEL_REFUSED, Answer, consensus

    ens = Ensemble.load()
    names = list(per_image)
    n = len(per_image[names[0]][source]["ids"])
    variants: dict[str, list[str]] = {"after": [], "answers_only": [], "no_ood": [], "no_ood_answers_only": []}
    labels: dict[str, list[int]] = {"after": [], "answers_only": []}
    old: list[str] = []
    two_all = 0
    for i in range(n):
        rows: dict[str, list[Answer]] = {"after": [], "before": []}
        for m in names:
            card, got = cards[m], per_image[m][source]
            probs = _softmax(got["logits"][i : i + 1].astype(np.float64), float(card["temperature"]))[0]
            p = dict(zip(CLASS_NAMES, (float(v) for v in probs), strict=True))
            for when in rows:
                kind, idx = got[when][i]
                rows[when].append(
                    Answer(
                        status="rejected" if kind == "refused" else "done",
                        label="" if idx is None else CLASS_NAMES[idx],
                        abstained=kind in ("ood", "abstained"),
                        malignant_probability=1.0 - p["Benign"],
                        probabilities=p,
                        model_name=m,
                        model_version=str(card["version"]),
                        abstain_reason=OUT_OF_DISTRIBUTION if kind == "ood" else "",
                    )
                )
        two_all += sum(1 for r in rows["after"] if r.label and r.label != "Benign") >= 2
        for variant, outcomes in variants.items():
            c = consensus(
                rows["before" if variant.startswith("no_ood") else "after"],
                ensemble=ens,
                rank_abstainers=not variant.endswith("answers_only"),
            )
            if c is None or c.label is None:  # None: every model refused the image (the smear gate)
                outcomes.append(f"refer: {c.reason if c else MODEL_REFUSED}")
            else:
                outcomes.append("benign" if c.label == "Benign" else "all")
            if variant in labels:
                labels[variant].append(-1 if c is None or c.label is None else CLASS_NAMES.index(c.label))
        if any(r.status == "rejected" for r in rows["after"]):
            old.append("refer")
        else:
            a = ens.combine({r.model_name: (r.model_version, r.probabilities) for r in rows["after"]})
            old.append("refer" if a is None or a.label is None else ("benign" if a.label == "Benign" else "all"))
    shares = {v: {k: round(o.count(k) / n, 4) for k in sorted(set(o))} for v, o in variants.items()}
    return {
        "n": n,
        "after": shares.pop("after"),
        "variants": shares,
        "before_all": round(old.count("all") / n, 4),
        "before_benign": round(old.count("benign") / n, 4),
        "frames_two_models_all": two_all,
        "labels": labels,
    }


def cross_fitted_consensus(
    cards: dict[str, dict[str, Any]],
    per_image: dict[str, dict[str, Any]],
    labels: np.ndarray,
    blocks: Sequence[str],
    deals: int = DEALS,
) -> dict[str, Any]:
    """The consensus on the validation frames with each model's out-of-distribution threshold fitted on one half of
    the validation blocks and applied to the other (both ways), over ``deals`` deals of the blocks (the first: every
    second block in sorted order, as :func:`_cross_fitted_keep`; then random): the coverage a held-back set of new
    blocks would see, where the shipped thresholds are fitted on the frames they are measured on. The ensemble keeps
    its parameters (out of fold in its own card)."""
    names = sorted(set(blocks))
    where = np.asarray(blocks)
    cover: list[float] = []
    wrong: list[int] = []
    for deal in range(deals):
        order = names if deal == 0 else [str(b) for b in np.random.default_rng(deal).permutation(names)]
        first = np.isin(where, order[0::2])
        dealt = {}
        for m, got in per_image.items():
            v = got["all4_val"]
            beyond = v["scores"] > _other_half_thresholds(v["scores"], first)
            dealt[m] = {"all4_val": {**v, "after": _answers(cards[m], v, beyond)}}
        lab = np.asarray(_consensus_outcomes(cards, dealt, "all4_val")["labels"]["after"])
        cover.append(float((lab >= 0).mean()))
        wrong.append(int(((labels != _BENIGN) & (lab == _BENIGN)).sum()))
    return {
        "deals": deals,
        "coverage_mean": round(float(np.mean(cover)), 4),
        "coverage_min": round(min(cover), 4),
        "coverage_max": round(max(cover), 4),
        "malignant_answered_benign_max": max(wrong),
    }


def _fmt_share(x: float | None) -> str:
    return "" if x is None else f"{x:.3f}"


def render_markdown(reports: dict[str, Any], cons: dict[str, Any]) -> str:
    """docs/ood.md: the chosen scores, the candidates, per-source answers of each model and of the consensus."""
    lines = [
        "# Out-of-distribution scores and what the models answer on other sources",
        "",
        f"Generated by `{COMMAND}` (training/ood.py); do not edit by hand. Every model was run as served (the",
        "handler's runtime on the encoded image, its smear gate), on the training and validation blocks of the B-ALL",
        "set and on sources none of them trained on: BCCD frames (another lab, camera and stain; healthy donors'",
        "white cells), PBC single-cell crops (CellaVision, healthy donors), 2x2 mosaics of PBC crops, and a third",
        "of the validation frames under shifted scale (zoom in 2x, zoom out 2x), blur, stain (HED, hue) and camera",
        "response (gamma 0.6, white balance). Scores fitted on the training blocks; each threshold keeps at least",
        f"{KEEP:.0%} of the same-source validation frames.",
        "",
        "## The kept score per model",
        "",
        "| model | score | training frames | threshold | validation kept (cross-fitted) | mean AUROC, other labs | "
        + " | ".join(f"AUROC {s}" for s in SOURCES[1:])
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(SOURCES[1:]),
    ]
    for m, r in reports.items():
        row = r["candidates"][r["kept"]]
        lines.append(
            f"| {m} | {r['kept']} | {r['n_train']} | {r['threshold']:.4g} | {row['val_kept']:.3f} "
            f"({row['val_kept_cross_fitted']:.3f}) | {row['other_lab_auroc']:.3f} | "
            + " | ".join(f"{row[s]['auroc']:.3f}" if s in row else "n/m" for s in SOURCES[1:])
            + " |"
        )
    lines += [
        "",
        "AUROC: the score separating the source's images from the same-source validation frames (0.5: not at all).",
        "`+image_statistics`: the feature score combined with the Mahalanobis distance of the smear gate's image",
        "statistics to the training frames' (core/ood.py); `image_statistics`: that distance alone (measured only).",
        "Kept: the served candidate with the best mean AUROC over the other-lab sources (bccd, pbc_cells, pbc_mosaic).",
        "",
        "## What each model answers per source (share of images), before -> after the out-of-distribution score",
        "",
        "n/m: not measured. Training frames: the score of each model was fitted on every training frame or on every",
        "2nd / 4th of them (sorted by path; the CPU time of this run), as the first table says.",
        "",
        "refused: the smear gate (unchanged); ood: out_of_distribution; abstained: low confidence or Benign not",
        "confirmed; ALL: Early, Pre or Pro.",
        "",
    ]
    for m, r in reports.items():
        lines += [
            f"### {m}",
            "",
            "| source | n | refused | ood | abstained | Benign | ALL before -> after |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in SOURCES:
            if s not in r["answers"]:
                lines.append(f"| {s} | not measured | | | | | |")
                continue
            a = r["answers"][s]
            b, f = a["before"], a["after"]
            lines.append(
                f"| {s} | {a['n']} | {f['refused']:.3f} | {f['ood']:.3f} | "
                f"{b['abstained']:.3f} -> {f['abstained']:.3f} | {f['benign']:.3f} | {b['all']:.3f} -> {f['all']:.3f} |"
            )
        mb, ma = r["answers"]["all4_val"]["metrics_before"], r["answers"]["all4_val"]["metrics_after"]
        lines += [
            "",
            f"Same-source validation: coverage {mb['coverage']:.4f} -> {ma['coverage']:.4f} (the cost of the score: "
            f"{mb['coverage'] - ma['coverage']:.4f}), macro-F1 of the answered frames {mb['macro_f1_answered']:.4f} -> "
            f"{ma['macro_f1_answered']:.4f}, malignant frames answered Benign {mb['malignant_answered_benign']} -> "
            f"{ma['malignant_answered_benign']}.",
            "",
        ]
    lines += [
        "## The consensus per source (portal.analyses.consensus with the shipped ensemble)",
        "",
        "*before*: the ensemble's label alone (the earlier rule, no out-of-distribution score); *after*: the rules",
        "now (a refusal or an out_of_distribution abstention refers; no label from a minority of the models: a",
        "strict majority ranks it first and at least two answer it). *answers only*: rule 5 counting the models'",
        "answers only, an abstention counted against (the rule before this one). *without the score*: the same",
        "rules on the answers the models give without their out-of-distribution score, what the consensus would",
        "answer on an image the score misses.",
        "",
        "| source | n | ALL before -> after | Benign before -> after | referred after (by reason) "
        "| ALL after, answers only | ALL without the score (after / answers only) "
        "| frames with >= 2 models answering ALL |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, c in cons.items():
        refer = ", ".join(f"{k[len('refer: ') :]} {v:.3f}" for k, v in c["after"].items() if k.startswith("refer"))
        var = c["variants"]
        lines.append(
            f"| {s} | {c['n']} | {c['before_all']:.3f} -> {c['after'].get('all', 0.0):.3f} | "
            f"{c['before_benign']:.3f} -> {c['after'].get('benign', 0.0):.3f} | {refer} | "
            f"{var['answers_only'].get('all', 0.0):.3f} | {var['no_ood'].get('all', 0.0):.3f} / "
            f"{var['no_ood_answers_only'].get('all', 0.0):.3f} | {c['frames_two_models_all']} |"
        )
    v = cons["all4_val"]
    w, x = v["metrics_answers_only"], v["cross_fitted"]
    lines += [
        "",
        "## Same-source validation frames: each model and the consensus (after the score)",
        "",
        "| | coverage | macro-F1 of the answered frames | malignant frames answered Benign |",
        "|---|---|---|---|",
        *(
            f"| {m} | {a['coverage']:.4f} | {a['macro_f1_answered']:.4f} | {a['malignant_answered_benign']} |"
            for m, r in reports.items()
            for a in (r["answers"]["all4_val"]["metrics_after"],)
        ),
        f"| **consensus** | {v['coverage']:.4f} | {v['macro_f1_answered']:.4f} | {v['malignant_answered_benign']} |",
        f"| consensus, rule 5 on answers only | {w['coverage']:.4f} | {w['macro_f1_answered']:.4f} | "
        f"{w['malignant_answered_benign']} |",
        "",
        f"Cross-fitted (each model's out-of-distribution threshold fitted on half the validation blocks and applied "
        f"to the other half, {x['deals']} deals of the blocks): consensus coverage {x['coverage_mean']:.4f} on "
        f"average ({x['coverage_min']:.4f}-{x['coverage_max']:.4f}), malignant frames answered Benign at most "
        f"{x['malignant_answered_benign_max']}. The table's figures use thresholds fitted on these very frames; "
        "frames of new blocks, as a held-back set, see about the cross-fitted coverage.",
        "",
        "The consensus refers a frame when any model flags it out of distribution, when its ensemble refers it, and",
        "when no strict majority of the models ranks the ensemble's label first with two of them answering it (the",
        "no_majority share above). A model that abstains under its own thresholds still ranks a class first: counted",
        "as an answer against (the rule before), a Benign frame that two models confirm and two find most probably",
        "Benign just under their Benign threshold was referred. The cost of counting them is in the columns above:",
        "the ALL share on other sources were the out-of-distribution score to miss them. The",
        "ensemble's own out-of-fold gain over the best single model is measured in model_store/ensemble.md (its",
        "parameters and thresholds are kept as fitted there).",
        "",
        "## All candidates (AUROC per source / share beyond the threshold)",
        "",
    ]
    for m, r in reports.items():
        lines += [
            f"### {m}",
            "",
            "| score | validation kept (cross-fitted) | mean AUROC, other labs | " + " | ".join(SOURCES[1:]) + " |",
            "|---|---|---|" + "---|" * len(SOURCES[1:]),
        ]
        for name, row in r["candidates"].items():
            lines.append(
                f"| {name} | {row['val_kept']:.3f} ({row['val_kept_cross_fitted']:.3f}) | "
                f"{row['other_lab_auroc']:.3f} | "
                + " | ".join(
                    f"{row[s]['auroc']:.3f} / {row[s]['beyond']:.2f}" if s in row else "n/m" for s in SOURCES[1:]
                )
                + " |"
            )
        lines.append("")
    lines += [
        "## Limitations",
        "- The thresholds are set on the same validation frames whose kept share is reported (by construction at",
        f"  least {KEEP:.0%}); the cross-fitted share (threshold from one half of the validation blocks, measured on",
        "  the other) is the estimate for new frames of this source.",
        "- The other sources stand in for other labs; a lab's own frames can lie elsewhere: measure there before use.",
        "- The models' own features decide what is unlike their training frames, so a frame that a model maps",
        "  confidently into a leukemia cluster can pass its score; the consensus refers when any one model flags it.",
        "",
    ]
    return "\n".join(lines)


def splice_section(markdown: str, section: str) -> str:
    """``markdown`` with its out-of-distribution section replaced by ``section`` (inserted before "Intended
    use" when it has none): the rest of a card's Markdown was written by other steps and stays as it is."""
    if OOD_HEADING in markdown:
        start = markdown.index(OOD_HEADING)
        end = markdown.find("\n## ", start + 1)
        end = len(markdown) if end < 0 else end + 1
        return markdown[:start] + section + "\n\n" + markdown[end:]
    at = markdown.index("## Intended use")
    return markdown[:at] + section + "\n\n" + markdown[at:]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=CACHE_DIR)
    p.add_argument("--store", type=Path, default=REPO / "model_store")
    p.add_argument("--docs", type=Path, default=REPO / "docs")
    p.add_argument("--model", action="append", help="only these models; default every frame model")
    p.add_argument("--dry-run", action="store_true", help="print the tables, write nothing")
    args = p.parse_args(argv)
    reports: dict[str, Any] = {}
    per_image: dict[str, Any] = {}
    cards: dict[str, Any] = {}
    scorers: dict[str, OODScorer] = {}
    for name in args.model or model_names():
        cards[name] = json.loads((args.store / f"{name}.card.json").read_text())
        reports[name], scorers[name], per_image[name] = evaluate_model(name, cards[name], args.cache)
        r = reports[name]
        print(f"{name}: kept {r['kept']} threshold {r['threshold']:.4g}", flush=True)
        for s in r["answers"]:
            a = r["answers"][s]
            print(f"  {s:18s} before {a['before']} after {a['after']}", flush=True)
    common = [s for s in SOURCES if all(s in per_image[m] for m in per_image)]
    cons = {s: _consensus_outcomes(cards, per_image, s) for s in common} if len(cards) == len(model_names()) else {}
    if cons:
        val = _load(next(iter(cards)), "all4_val", args.cache)
        for variant, got in cons["all4_val"].pop("labels").items():
            lab = np.asarray(got)
            answered = lab >= 0
            metrics = {
                "coverage": round(float(answered.mean()), 4),
                "macro_f1_answered": round(float(f1_score(val["labels"][answered], lab[answered], average="macro")), 4),
                "malignant_answered_benign": int(((val["labels"] != _BENIGN) & (lab == _BENIGN)).sum()),
            }
            if variant == "after":
                cons["all4_val"] |= metrics
            else:
                cons["all4_val"][f"metrics_{variant}"] = metrics
        blocks = _val_blocks(per_image[next(iter(per_image))]["all4_val"]["ids"])
        cons["all4_val"]["cross_fitted"] = cross_fitted_consensus(cards, per_image, val["labels"], blocks)
        for s in common[1:]:
            cons[s].pop("labels")
        for s, c in cons.items():
            print(f"consensus {s:18s} {c}", flush=True)
    if args.dry_run or not cons:
        return 0
    for name, scorer in scorers.items():
        r = reports[name]
        scorer.info = {
            "fitted_on": "the training blocks (block-wise split): the served runtime's pooled features and logits "
            "of the encoded frames, and the smear gate's image statistics",
            "threshold_rule": f"the smallest score keeping >= {KEEP:.0%} of the same-source validation frames",
            "command": COMMAND,
            "candidates_auroc_other_labs": {k: v["other_lab_auroc"] for k, v in r["candidates"].items()},
            "sources": {s: {"n": a["n"], **a["after"]} for s, a in r["answers"].items()},
            "validation": {
                "kept": r["candidates"][r["kept"]]["val_kept"],
                "kept_cross_fitted": r["candidates"][r["kept"]]["val_kept_cross_fitted"],
                "before": r["answers"]["all4_val"]["metrics_before"],
                "after": r["answers"]["all4_val"]["metrics_after"],
            },
            "score": r["kept"],
        }
        card = cards[name] | {"ood": scorer.to_dict()}
        (args.store / f"{name}.card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        md = args.store / f"{name}.md"
        md.write_text(splice_section(md.read_text(), "\n".join(ood_markdown(card))))
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "ood.md").write_text(render_markdown(reports, cons))
    (args.docs / "ood.json").write_text(
        json.dumps({"models": reports, "consensus": cons}, indent=1, sort_keys=True) + "\n"
    )
    print(f"wrote {args.docs / 'ood.md'} and the cards' ood blocks", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
