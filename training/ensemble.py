"""Fit and measure the ensemble and the Benign operating points: ``python -m training.ensemble``.

Reads only the cached validation logits of the four frame models (:mod:`training.member_outputs`,
``artifacts/ensemble/val_logits.npz``). Everything is cross-fitted as the cards' calibration is
(:func:`training.calibrate.block_folds`: validation blocks dealt into folds; for each fold every
parameter is fitted on the other folds and applied to it; the out-of-fold answers are pooled):

- each member: temperature, abstention threshold and Benign threshold (before/after the Benign rule);
- the ensemble, for each combiner of :data:`COMBINERS`: the members' temperatures, then the
  combiner's weights and temperature, its abstention threshold and Benign threshold. The combiner with
  the best out-of-fold macro-F1 is kept (ties: the simpler one, in the order listed); the cost of each
  member missing (weights renormalised) is measured out of fold with the same fitted parameters.

The shipped parameters are then fitted on all validation blocks (members calibrated with their cards'
temperatures, as the portal receives them) and written to ``model_store/ensemble.json`` with the
metrics, ``model_store/ensemble.md`` (the card) and ``docs/models/ensemble_{confusion,reliability}.png``;
each member's ``model_store/<model>.card.json`` gets its ``benign_threshold`` and the measured
operating point (``metrics.benign_operating_point``) and its Markdown card is re-rendered.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.card import validate_card
from core.ensemble import ENSEMBLE_SCHEMA_VERSION, Ensemble
from core.registry import BENIGN_INDEX, CLASS_NAMES, model_names
from training.calibrate import (
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    softmax,
)
from training.member_outputs import CACHE_FILE, MemberOutputs, load_outputs
from training.operating_point import (
    TARGET_ACCURACY,
    THRESHOLD_WORDS,
    cross_fitted_operating_point,
    decisions,
    fit_benign_threshold,
    member_operating_point,
    operating_point_metrics,
    threshold_words,
)

__all__ = [
    "COMBINERS",
    "DEALS",
    "ENSEMBLE_VERSION",
    "MIN_MEMBERS",
    "EnsembleFit",
    "fit_combiner",
    "pool_probs",
    "member_report",
    "ensemble_report",
    "macro_f1_over_deals",
    "main",
]

REPO = Path(__file__).resolve().parent.parent
ENSEMBLE_VERSION = "1.0"
#: The ensemble answers with at least this many of its members (one may be missing: measured in the card).
MIN_MEMBERS = 3
FOLDS = 2
_FLOOR = 1e-12
#: name -> (core.ensemble method, whether the weights are fitted). Order = preference on ties.
COMBINERS: dict[str, tuple[str, bool]] = {
    "mean": ("linear_pool", False),  # mean of the calibrated probabilities, then a temperature
    "geometric_mean": ("log_linear_pool", False),  # equal-weight log-linear pool, then a temperature
    "log_linear_fitted": ("log_linear_pool", True),  # weights and temperature by minimum NLL
    "logistic_stacker": ("stacker", True),  # multinomial logistic regression on the members' log-probabilities
}


# -- pooling (numpy, the same formulas as core.ensemble.pool) -----------------------------------
def pool_probs(method: str, weights: np.ndarray, probs: np.ndarray, temperature: float) -> np.ndarray:
    """Rows of pooled probabilities from ``probs`` [n, members, classes] (weights renormalised)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    p = np.clip(np.asarray(probs, dtype=np.float64), _FLOOR, None)
    if method == "log_linear_pool":
        scores = np.einsum("nmc,m->nc", np.log(p), w)
    elif method == "linear_pool":
        scores = np.log(np.clip(np.einsum("nmc,m->nc", np.asarray(probs, dtype=np.float64), w), _FLOOR, None))
    else:
        raise ValueError(f"no numpy pool for {method!r}")
    return softmax(scores, temperature)


def _fit_log_linear(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, float]:
    """Weights (sum 1) and temperature of ``softmax(sum_m beta_m log p_m)``, beta >= 0 by minimum NLL."""
    from scipy.optimize import minimize

    logp = np.log(np.clip(probs, _FLOOR, None))
    n, m, _ = logp.shape
    rows = np.arange(n)

    def nll(beta: np.ndarray) -> tuple[float, np.ndarray]:
        z = np.einsum("nmc,m->nc", logp, beta)
        z = z - z.max(axis=1, keepdims=True)
        q = np.exp(z)
        q /= q.sum(axis=1, keepdims=True)
        loss = -np.log(np.clip(q[rows, labels], _FLOOR, None)).mean()
        # d loss / d beta_m = mean_n (E_q[logp_m] - logp_m[y])
        grad = (np.einsum("nc,nmc->nm", q, logp) - logp[rows, :, labels]).mean(axis=0)
        return float(loss), grad

    res = minimize(nll, np.full(m, 1.0 / m), jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * m)
    beta = np.asarray(res.x, dtype=np.float64)
    if beta.sum() <= 0:
        beta = np.full(m, 1.0 / m)
    return beta / beta.sum(), float(1.0 / beta.sum())


class EnsembleFit:
    """A fitted combination: members' temperatures, then the combiner. Callable on stacked member logits."""

    def __init__(
        self,
        combiner: str,
        member_temperatures: Sequence[float],
        weights: np.ndarray | None = None,
        temperature: float = 1.0,
        stacker: Any = None,
    ) -> None:
        self.combiner = combiner
        self.method = COMBINERS[combiner][0]
        self.member_temperatures = [float(t) for t in member_temperatures]
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.temperature = float(temperature)
        self.stacker = stacker

    def member_probs(self, logits: np.ndarray) -> np.ndarray:
        """[n, members, classes] calibrated probabilities from stacked logits [n, members * classes]."""
        m = len(self.member_temperatures)
        x = np.asarray(logits, dtype=np.float64).reshape(len(logits), m, -1)
        return np.stack([softmax(x[:, i], t) for i, t in enumerate(self.member_temperatures)], axis=1)

    def __call__(self, logits: np.ndarray, drop: int | None = None) -> np.ndarray:
        probs = self.member_probs(logits)
        if self.method == "stacker":
            if drop is not None:
                raise ValueError("the stacker has no rule for a missing member")
            feats = np.log(np.clip(probs, _FLOOR, None)).reshape(len(probs), -1)
            return softmax(self.stacker.decision_function(feats), self.temperature)
        assert self.weights is not None
        keep = [i for i in range(probs.shape[1]) if i != drop]
        return pool_probs(self.method, self.weights[keep], probs[:, keep], self.temperature)


def fit_combiner(
    combiner: str,
    probs: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    member_temperatures: Sequence[float],
) -> EnsembleFit:
    """Fit ``combiner`` on calibrated member probabilities [n, members, classes] of the fitting frames."""
    method, fitted = COMBINERS[combiner]
    m = probs.shape[1]
    if method == "stacker":
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        feats = np.log(np.clip(probs, _FLOOR, None)).reshape(len(probs), -1)

        def model() -> Any:
            return LogisticRegression(C=1.0, max_iter=5000)

        # its temperature from inner out-of-fold decision values, not from its own fit; frames, not blocks, are
        # dealt (a fitting fold may hold a single Benign block, which a block-wise inner split would leave out)
        inner = cross_val_predict(
            model(),
            feats,
            labels,
            cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=0),
            method="decision_function",
        )
        t = fit_temperature(inner, labels)
        return EnsembleFit(combiner, member_temperatures, temperature=t, stacker=model().fit(feats, labels))
    if fitted:
        weights, t = _fit_log_linear(probs, labels)
        return EnsembleFit(combiner, member_temperatures, weights, t)
    weights = np.full(m, 1.0 / m)
    scores = np.log(pool_probs(method, weights, probs, 1.0))
    return EnsembleFit(combiner, member_temperatures, weights, fit_temperature(scores, labels))


def ensemble_fitter(combiner: str, members: int) -> Callable[[np.ndarray, np.ndarray, Sequence[str]], EnsembleFit]:
    """A :data:`training.operating_point.Fitter`: member temperatures, then ``combiner``, on the fitting rows."""

    def fitter(logits: np.ndarray, labels: np.ndarray, groups: Sequence[str]) -> EnsembleFit:
        x = logits.reshape(len(logits), members, -1)
        temps = [fit_temperature(x[:, i], labels) for i in range(members)]
        probs = np.stack([softmax(x[:, i], t) for i, t in enumerate(temps)], axis=1)
        return fit_combiner(combiner, probs, labels, groups, temps)

    return fitter


# -- reports ------------------------------------------------------------------------------------
def _summary(probs: np.ndarray, labels: np.ndarray, op: dict[str, Any]) -> dict[str, Any]:
    m = classification_metrics(probs, labels, CLASS_NAMES, are_probs=True)
    return {
        "accuracy": m["accuracy"],
        "macro_f1": m["macro_f1"],
        "ece": m["ece"],
        "confusion_matrix": m["confusion_matrix"],
        "per_class": m["per_class"],
        "before": op["before"],
        "after": op["after"],
        "per_fold": op["per_fold"],
    }


def member_report(outputs: MemberOutputs, name: str, folds: int = FOLDS) -> dict[str, Any]:
    """One member's out-of-fold metrics: macro-F1 (argmax), calibration and the operating point."""
    logits = outputs.logits[name]
    op = cross_fitted_operating_point(logits, outputs.labels, outputs.blocks, folds)
    out = _summary(op["probs"], outputs.labels, op)
    out["macro_f1"] = classification_metrics(logits, outputs.labels, CLASS_NAMES)["macro_f1"]  # argmax: T-free
    return out


def _stacked(outputs: MemberOutputs, members: Sequence[str]) -> np.ndarray:
    return np.concatenate([outputs.logits[m] for m in members], axis=1)


def ensemble_report(
    outputs: MemberOutputs, combiner: str, members: Sequence[str], folds: int = FOLDS
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(out-of-fold metrics of ``combiner``, out-of-fold metrics with each member missing)."""
    x = _stacked(outputs, members)
    labels = outputs.labels
    op = cross_fitted_operating_point(x, labels, outputs.blocks, folds, fitter=ensemble_fitter(combiner, len(members)))
    fits: list[EnsembleFit] = op["calibrators"]
    fold = op["fold"]
    report = _summary(op["probs"], labels, op)
    if COMBINERS[combiner][0] != "stacker":
        report["weights_per_fold"] = [[round(float(w), 4) for w in f.weights] for f in fits if f.weights is not None]
    report["temperature_per_fold"] = [round(f.temperature, 4) for f in fits]
    missing: dict[str, Any] = {}
    if COMBINERS[combiner][0] == "stacker":
        return report, missing
    for d, name in enumerate(members):
        probs = np.zeros((len(labels), len(CLASS_NAMES)))
        answers = np.zeros(len(labels), dtype=np.int64)
        for k, fit in enumerate(fits):
            apply = fold == k
            pf = op["per_fold"][k]
            probs[apply] = fit(x[apply], drop=d)
            answers[apply] = decisions(probs[apply], pf["abstain_threshold"], pf["benign_threshold"])[0]
        m = classification_metrics(probs, labels, CLASS_NAMES, are_probs=True)
        missing[name] = {
            "macro_f1": m["macro_f1"],
            "accuracy": m["accuracy"],
            "after": operating_point_metrics(answers, labels),
        }
    return report, missing


#: random deals of the blocks into folds behind the card's spread of the out-of-fold macro-F1
DEALS = 30


def macro_f1_over_deals(
    outputs: MemberOutputs, combiner: str, members: Sequence[str], folds: int = FOLDS, deals: int = DEALS
) -> dict[str, Any]:
    """The combiner's out-of-fold macro-F1 (argmax) over ``deals`` random deals of the blocks (seeds 0..deals-1 of
    :func:`training.calibrate.block_folds`): the fixed deal is one draw of many, and with 21 blocks which blocks
    share a fold moves the figure by more than the target's margin."""
    x = _stacked(outputs, members)
    fitter = ensemble_fitter(combiner, len(members))
    scores = []
    for seed in range(deals):
        op = cross_fitted_operating_point(x, outputs.labels, outputs.blocks, folds, fitter=fitter, seed=seed)
        scores.append(classification_metrics(op["probs"], outputs.labels, CLASS_NAMES, are_probs=True)["macro_f1"])
    values = np.array(scores)
    return {
        "deals": deals,
        "folds": folds,
        "mean": round(float(values.mean()), 4),
        "sd": round(float(values.std()), 4),
        "min": round(float(values.min()), 4),
        "max": round(float(values.max()), 4),
    }


# -- shipped fit --------------------------------------------------------------------------------
def _cards(store: Path, members: Sequence[str]) -> dict[str, dict[str, Any]]:
    return {m: json.loads((store / f"{m}.card.json").read_text()) for m in members}


def shipped_fit(
    outputs: MemberOutputs, combiner: str, members: Sequence[str], cards: dict[str, dict[str, Any]]
) -> tuple[EnsembleFit, np.ndarray, float, float]:
    """(fit, in-sample probabilities, abstain threshold, Benign threshold) on all validation frames, members
    calibrated with their cards' temperatures."""
    from training.calibrate import abstention_threshold

    temps = [float(cards[m]["temperature"]) for m in members]
    x = _stacked(outputs, members)
    probs_members = EnsembleFit(combiner, temps, np.ones(len(members))).member_probs(x)
    fit = fit_combiner(combiner, probs_members, outputs.labels, outputs.blocks, temps)
    probs = fit(x)
    thr = abstention_threshold(probs, outputs.labels, TARGET_ACCURACY)["threshold"]
    return fit, probs, float(thr), fit_benign_threshold(probs, outputs.labels)


# -- documents ----------------------------------------------------------------------------------
def _ci(s: dict[str, Any]) -> str:
    return f"{s['value']:.4f} [{s['ci95'][0]:.4f}, {s['ci95'][1]:.4f}]"


def _op_cells(r: dict[str, Any]) -> str:
    b, a = r["before"], r["after"]
    return (
        f"{r['macro_f1']:.4f} | {r['accuracy']:.4f} | {a['coverage']:.4f} | {a['accepted_accuracy']:.4f} | "
        f"{b['malignant_answered_benign']} -> {a['malignant_answered_benign']} of {a['malignant_frames']} | "
        f"{b['benign_coverage']:.4f} -> {a['benign_coverage']:.4f} | {_ci(a['sensitivity'])} | "
        f"{_ci(a['malignant_answered_malignant'])}"
    )


OP_HEADER = (
    "| | macro-F1 | accuracy | coverage | accepted accuracy | malignant answered Benign (before -> after) | "
    "Benign frames answered (before -> after) | sensitivity for malignancy [95% CI] | "
    "malignant answered malignant [95% CI] |\n|---|---|---|---|---|---|---|---|---|"
)
OP_NOTE = (
    "All out of fold: the validation blocks dealt into {folds} folds (as the cards' calibration), every parameter "
    "(temperatures, combination, abstention threshold at {target:.0%} accepted accuracy, Benign threshold) fitted on "
    "the other fold and applied to this one. macro-F1 and accuracy: the most probable class on every frame. "
    "Coverage and accepted accuracy: at the operating point (abstention and Benign rule). *Before*: the confidence "
    "rule alone; *after*: Benign answered only when P(Benign) is above "
    + threshold_words("frame of the fitting fold")
    + ". Sensitivity for malignancy: Early/Pre/Pro frames not answered Benign (answered malignant or "
    "referred to a reviewer); the stricter column counts only frames answered with a malignant class. Wilson 95% "
    "intervals."
)


def render_ensemble_markdown(doc: dict[str, Any]) -> str:
    m = doc["metrics"]
    lines = [
        f"# Ensemble card (version {doc['version']})",
        "",
        "Generated by `make evaluate-ensemble` (training/ensemble.py) from `ensemble.json`; do not edit by hand.",
        "",
        "## What it does",
        "- Members (name, version, weight): "
        + ", ".join(f"`{x['name']}` {x['version']} ({x['weight']:.4f})" for x in doc["members"]),
        f"- Method: `{doc['method']}` (combiner `{doc['combiner']}`) of the members' calibrated probabilities, "
        f"temperature {doc['temperature']:.4f}; refer below confidence {doc['abstain_threshold']:.4f}; Benign only "
        f"when P(Benign) > {doc['benign_threshold']:.6f} (core/ensemble.py applies it).",
        f"- Missing members (not finished, failed, refused, or another version): left out and the other weights "
        f"renormalised; at least {doc['min_members']} of {len(doc['members'])} members, else no ensemble answer. "
        "The cost of one missing member is measured below.",
        f"- Fitted on: {doc['fitted_on']}",
        "",
        "## Ensemble beside each member",
        "",
        OP_HEADER,
        f"| **ensemble** ({doc['combiner']}) | {_op_cells(m['ensemble'])} |",
        *[f"| {name} | {_op_cells(r)} |" for name, r in m["members"].items()],
        "",
        OP_NOTE.format(folds=m["folds"], target=TARGET_ACCURACY),
        "",
        f"Target: ensemble macro-F1 >= best single + 0.01 = {m['target_macro_f1']:.4f}: "
        f"{'met' if m['ensemble']['macro_f1'] >= m['target_macro_f1'] else 'missed'} "
        f"({m['ensemble']['macro_f1']:.4f}). The kept combiner's out-of-fold macro-F1 with 2, 3, 4 and 5 folds: "
        + ", ".join(f"{v:.4f}" for v in m["macro_f1_by_folds"].values())
        + " (one frame moves macro-F1 by about 0.002)."
        + (
            f" Over {d['deals']} random deals of the blocks into {d['folds']} folds: mean {d['mean']:.4f} (sd "
            f"{d['sd']:.4f}, {d['min']:.4f}-{d['max']:.4f}), against {m['best_single_macro_f1']:.4f} for the best "
            "single model."
            if (d := m.get("macro_f1_over_deals"))
            else ""
        ),
        "",
        f"At the shipped parameters on all validation frames (fitted there: optimistic): coverage "
        f"{m['in_sample']['coverage']:.4f}, accepted accuracy {m['in_sample']['accepted_accuracy']:.4f}, "
        f"malignant answered Benign {m['in_sample']['malignant_answered_benign']}, Benign frames answered "
        f"{m['in_sample']['benign_coverage']:.4f}.",
        "",
        "## Combiners tried (out of fold)",
        "",
        OP_HEADER,
        *[f"| {name} | {_op_cells(r)} |" for name, r in m["combiners"].items()],
        "",
        f"Kept: `{doc['combiner']}`, {m['choice']}",
        "",
        "## One member missing (out of fold, the same fitted parameters, weights renormalised)",
        "",
        "| missing | macro-F1 | accuracy | coverage | accepted accuracy | malignant answered Benign | "
        "sensitivity for malignancy [95% CI] |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {name} | {r['macro_f1']:.4f} | {r['accuracy']:.4f} | {r['after']['coverage']:.4f} | "
            f"{r['after']['accepted_accuracy']:.4f} | {r['after']['malignant_answered_benign']} | "
            f"{_ci(r['after']['sensitivity'])} |"
            for name, r in m["missing_member"].items()
        ],
        "",
        "## Out-of-fold confusion matrix and reliability",
        "",
        f"![confusion matrix](../{doc['plots']['confusion']}) ![reliability diagram](../{doc['plots']['reliability']})",
        "",
        "## Limitations",
        "- Fitted and measured on the same 483 validation frames (out of fold, but the three 1.1 members were each "
        "the best of several runs on these blocks, so their and the ensemble's figures are optimistic).",
        f"- The Benign threshold is {THRESHOLD_WORDS}: a malignant frame from "
        "elsewhere can still exceed it; it bounds the error seen here, not the error rate.",
        "- Decision support only: every result is reviewed and signed off by qualified staff.",
        "",
    ]
    return "\n".join(lines)


def _plots(doc_probs: np.ndarray, before: np.ndarray, labels: np.ndarray, docs: Path) -> dict[str, str]:
    from training.evaluate import plot_confusion, plot_reliability

    cm = classification_metrics(doc_probs, labels, CLASS_NAMES, are_probs=True)["confusion_matrix"]
    plot_confusion(np.array(cm), CLASS_NAMES, "ensemble: out of fold", docs / "ensemble_confusion.png")
    plot_reliability(
        reliability_bins(before, labels),
        reliability_bins(doc_probs, labels),
        (expected_calibration_error(before, labels), expected_calibration_error(doc_probs, labels)),
        "ensemble: reliability (out of fold)",
        docs / "ensemble_reliability.png",
    )
    return {"confusion": "docs/models/ensemble_confusion.png", "reliability": "docs/models/ensemble_reliability.png"}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=REPO / CACHE_FILE)
    p.add_argument("--store", type=Path, default=REPO / "model_store")
    p.add_argument("--docs", type=Path, default=REPO / "docs" / "models")
    p.add_argument("--folds", type=int, default=FOLDS)
    p.add_argument("--no-member-cards", action="store_true", help="leave the members' cards as they are")
    args = p.parse_args(argv)
    outputs = load_outputs(args.cache)
    members = model_names()
    cards = _cards(args.store, members)
    stale = [m for m in members if m not in outputs.logits or outputs.versions[m] != cards[m]["version"]]
    if stale:
        raise SystemExit(f"the cache {args.cache} lacks or has other versions of {stale}: run training.member_outputs")
    labels = outputs.labels

    member_reports = {m: member_report(outputs, m, args.folds) for m in members}
    combiners: dict[str, dict[str, Any]] = {}
    missing: dict[str, dict[str, Any]] = {}
    for name in COMBINERS:
        combiners[name], missing[name] = ensemble_report(outputs, name, members, args.folds)
    for name, r in {**member_reports, **combiners}.items():
        print(f"{name:20s} {_op_cells(r)}", flush=True)
    best_single = max(r["macro_f1"] for r in member_reports.values())
    order = list(COMBINERS)
    chosen = max(order, key=lambda c: (combiners[c]["macro_f1"], -order.index(c)))
    choice = f"the best out-of-fold macro-F1 ({combiners[chosen]['macro_f1']:.4f}; ties go to the simpler combiner)."
    if COMBINERS[chosen][0] not in ("log_linear_pool", "linear_pool"):
        raise SystemExit(f"{chosen} won but core.ensemble cannot apply it")

    fit, probs_in, thr, b_thr = shipped_fit(outputs, chosen, members, cards)
    assert fit.weights is not None
    doc: dict[str, Any] = {
        "schema_version": ENSEMBLE_SCHEMA_VERSION,
        "name": "ensemble",
        "version": ENSEMBLE_VERSION,
        "classes": list(CLASS_NAMES),
        "benign_class": CLASS_NAMES[BENIGN_INDEX],
        "method": fit.method,
        "combiner": chosen,
        "members": [
            {
                "name": m,
                "version": cards[m]["version"],
                "weight": round(float(w), 6),
                "temperature": cards[m]["temperature"],
            }
            for m, w in zip(members, fit.weights, strict=True)
        ],
        "temperature": round(fit.temperature, 6),
        "abstain_threshold": thr,
        "benign_threshold": b_thr,
        "min_members": MIN_MEMBERS,
        "fitted_on": (
            f"the {len(labels)} validation frames (block-wise split, {len(set(outputs.blocks))} blocks), each member's "
            "probabilities calibrated with its card's temperature; weights and temperature by minimum NLL"
            if COMBINERS[chosen][1]
            else f"the {len(labels)} validation frames, equal weights, temperature by minimum NLL"
        ),
    }
    ens = Ensemble.from_dict(doc | {"metrics": {}})
    # the shipped parameters through the serving code (core.ensemble) reproduce the numpy fit
    member_probs = fit.member_probs(_stacked(outputs, members))
    served = np.array(
        [
            [
                a.probabilities[c]
                for c in CLASS_NAMES
                if (
                    a := ens.combine(
                        {
                            m: (cards[m]["version"], dict(zip(CLASS_NAMES, member_probs[i, j], strict=True)))
                            for j, m in enumerate(members)
                        }
                    )
                )
                is not None
            ]
            for i in range(len(labels))
        ]
    )
    if not np.allclose(served, probs_in, atol=1e-9):
        raise SystemExit("core.ensemble and the fit disagree")
    in_sample = operating_point_metrics(decisions(probs_in, thr, b_thr)[0], labels)

    oof = cross_fitted_operating_point(
        _stacked(outputs, members), labels, outputs.blocks, args.folds, fitter=ensemble_fitter(chosen, len(members))
    )
    chosen_fits = oof["calibrators"]
    before_t = np.zeros_like(oof["probs"])
    for k, f in enumerate(chosen_fits):
        rows = oof["fold"] == k
        before_t[rows] = pool_probs(f.method, f.weights, f.member_probs(_stacked(outputs, members)[rows]), 1.0)  # type: ignore[arg-type]
    doc["plots"] = _plots(oof["probs"], before_t, labels, args.docs)
    # how much the out-of-fold macro-F1 of the kept combiner moves with the number of folds (one frame ~ 0.002)
    by_folds = {
        str(k): combiners[chosen]["macro_f1"]
        if k == args.folds
        else ensemble_report(outputs, chosen, members, k)[0]["macro_f1"]
        for k in (2, 3, 4, 5)
    }
    doc["metrics"] = {
        "folds": args.folds,
        "target_accuracy": TARGET_ACCURACY,
        "best_single_macro_f1": best_single,
        "target_macro_f1": round(best_single + 0.01, 4),
        "ensemble": combiners[chosen],
        "members": member_reports,
        "combiners": combiners,
        "choice": choice,
        "missing_member": missing[chosen],
        "macro_f1_by_folds": by_folds,
        "macro_f1_over_deals": macro_f1_over_deals(outputs, chosen, members, args.folds),
        "in_sample": in_sample,
    }
    args.store.mkdir(parents=True, exist_ok=True)
    (args.store / "ensemble.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.store / "ensemble.md").write_text(render_ensemble_markdown(doc))
    print(f"kept {chosen}: weights {doc['members']} T {doc['temperature']} thr {thr:.4f} benign {b_thr:.6f}")

    if not args.no_member_cards:
        from training.card import render_markdown, splice_benign_markdown, write_model_store_readme

        for m in members:
            card = cards[m]
            thr_m, block = member_operating_point(
                outputs.logits[m],
                labels,
                outputs.blocks,
                float(card["temperature"]),
                float(card["abstain_threshold"]),
                args.folds,
            )
            card["benign_threshold"] = thr_m
            card["metrics"]["benign_operating_point"] = block
            validate_card(card)
            (args.store / f"{m}.card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
            md = args.store / f"{m}.md"
            md.write_text(splice_benign_markdown(md.read_text(), card) if md.is_file() else render_markdown(card))
        write_model_store_readme(list(cards.values()), args.store / "README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
