# Training, evaluation and model cards (issue 3). Outputs go to $(ARTIFACTS)/<model>/ (gitignored);
# `make evaluate` also writes docs/models/*.png and model_store/{README.md,<model>.md}.
ARTIFACTS ?= artifacts
DATA ?=
DEVICE ?= $(shell $(PY) -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
THREADS ?= 2
# extra options for training.train, overriding fields of the model's recipe (training/recipes.py), e.g. "--epochs 5"
TRAIN_ARGS ?=
# data-loading worker processes (0: in the main process; on a GPU machine the augmentation is the bottleneck:
# the shipped GPU runs used WORKERS=3-5, see each recipe's shipped_on)
WORKERS ?= 0
DATA_ARG := $(if $(DATA),--data $(DATA),)

.PHONY: train train-all evaluate smear-gate smear-gate-cards evaluate-ensemble ood

# One model; rerunning resumes from $(ARTIFACTS)/$(MODEL)/checkpoint.pt. MODEL=wbc_cells trains the cell typer
# (training.train_cells: PBC + BCCD crops); its cell finder is classical and has nothing to train.
# (the manifest's cell-level models, core/manifest.py; asked only when MODEL is set)
CELL_MODELS = $(if $(MODEL),$(shell $(PY) -m core.manifest cell))
train: setup
ifeq ($(filter $(MODEL),$(CELL_MODELS)),)
	$(PY) -m training.train --model $(MODEL) --artifacts $(ARTIFACTS) --device $(DEVICE) --threads $(THREADS) $(DATA_ARG) \
	  --workers $(WORKERS) $(TRAIN_ARGS)
else
	$(PY) -m training.train_cells --out $(ARTIFACTS)/wbc_cells --threads $(THREADS) $(TRAIN_ARGS)
endif

# Every frame model with its own recipe (training/recipes.py: the numbers the shipped cards state), in an order
# that trains effnetb3_bigru before effnetb3_vit, which starts from its CNN stage; then the cell typer. The
# time-boxed recipes were shipped from an H100 (DEVICE=cuda WORKERS=5); on the CPU they reach fewer epochs.
train-all: setup
	for m in $$($(PY) -m training.recipes); do \
	  $(PY) -m training.train --model $$m --artifacts $(ARTIFACTS) --device $(DEVICE) --threads $(THREADS) $(DATA_ARG) \
	    --workers $(WORKERS) $(TRAIN_ARGS) || exit 1; \
	done
	$(PY) -m training.train_cells --out $(ARTIFACTS)/wbc_cells --threads $(THREADS)

$(ARTIFACTS)/smear_gate.json:
	$(PY) -m training.fit_gate --out $@ $(DATA_ARG)

smear-gate: setup $(ARTIFACTS)/smear_gate.json

# Refit the smear gate (leave-one-family-out measures included, about 2 min on 2 cores) and write it into the
# frame models' cards in model_store/ (their pooled-feature statistics kept); the archives take it when repacked.
smear-gate-cards: setup
	$(PY) -m training.fit_gate --out $(ARTIFACTS)/smear_gate.json --cards model_store $(DATA_ARG)

# Every trained model (or MODEL=...): metrics, plots, calibration, abstention, gate, card.json + Markdown.
# MODEL=wbc_cells (or no MODEL, once its typer is trained): typer and finder metrics, smear gate, card.
evaluate: setup $(ARTIFACTS)/smear_gate.json
ifeq ($(filter $(MODEL),$(CELL_MODELS)),)
	$(PY) -m training.evaluate --artifacts $(ARTIFACTS) --threads $(THREADS) $(DATA_ARG) $(if $(filter command line,$(origin MODEL)),--model $(MODEL),)
endif
ifneq ($(or $(filter $(MODEL),$(CELL_MODELS)),$(if $(MODEL),,$(wildcard $(ARTIFACTS)/wbc_cells/model))),)
	$(PY) -m training.cell_typer_eval --model $(ARTIFACTS)/wbc_cells/model --out $(ARTIFACTS)/wbc_cells --threads $(THREADS)
	$(PY) -m training.cell_eval --out $(ARTIFACTS)/wbc_cells/finder_metrics.json
	$(PY) -m training.cell_card --artifacts $(ARTIFACTS)
endif

# The ensemble and the Benign safety operating points (issue 13): each frame model's validation logits from its
# committed archive (cached in $(ARTIFACTS)/ensemble/, recomputed only when an archive changes), then the cross-fitted
# fit: model_store/ensemble.{json,md}, docs/models/ensemble_*.png, every member card's benign_threshold (+ Markdown)
# and model_store/README.md. The portal's consensus applies model_store/ensemble.json (core.ensemble); the archives
# whose card changed are repacked, so that TorchServe serves the new thresholds.
evaluate-ensemble: setup
	nice -n 10 $(PY) -m training.member_outputs --threads $(THREADS) --cache $(ARTIFACTS)/ensemble/val_logits.npz $(DATA_ARG)
	$(PY) -m training.ensemble --cache $(ARTIFACTS)/ensemble/val_logits.npz
	$(PY) -m release.archive --repack --out $(MODEL_STORE)

# Out-of-distribution scores (issue 30): every frame model's served outputs on the B-ALL blocks and on other sources
# (BCCD, PBC, shifted validation frames; cached in $(ARTIFACTS)/ood/, about an hour on 2 busy cores), then the fit,
# the choice and the per-source tables: each card's `ood` block, docs/ood.{md,json}; the archives are repacked.
ood: setup
	nice -n 10 $(PY) -m evaluation.ood_features --threads $(THREADS) $(DATA_ARG)
	$(PY) -m training.ood
	$(PY) -m release.archive --repack --out $(MODEL_STORE)
