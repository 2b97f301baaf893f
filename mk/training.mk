# Training, evaluation and model cards (issue 3). Outputs go to $(ARTIFACTS)/<model>/ (gitignored);
# `make evaluate` also writes docs/models/*.png and model_store/{README.md,<model>.md}.
ARTIFACTS ?= artifacts
DATA ?=
DEVICE ?= $(shell $(PY) -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
THREADS ?= 2
TRAIN_ARGS ?=
MAX_MINUTES ?= 55
# distillation is optional: TEACHER=artifacts/xception_bigru uses its soft labels (computed from its model/ if
# its teacher_train.npy is missing, e.g. model/ unpacked from model_store/xception_bigru.mar)
TEACHER ?=
# domain pretraining of the random-init CNN stages on cell types first: PRETRAIN=pbc (../shared/data/pbc)
PRETRAIN ?=
# data-loading worker processes (0: in the main process; on a GPU machine the augmentation is the bottleneck)
WORKERS ?= 0
# effnetb3_vit on effnetb3_bigru's CNN stage: frozen + cached maps (CPU), or fine-tuned end to end (GPU)
VIT_RECIPE ?= $(if $(filter cuda%,$(DEVICE)),end2end,cached)
# The GPU recipe of the random-init models (issue 13; one H100, ~65 epochs each in a 6-min box, 3-4 runs side by side):
#   make train-all DEVICE=cuda WORKERS=3 MAX_MINUTES=6 TRAIN_ARGS="--epochs 200 --val-every 5"
# The shipped runs, each the best of 2-5 such runs on the validation blocks (see the cards' training notes):
#   make train MODEL=effnetb3_bigru DEVICE=cuda WORKERS=3 \
#     TRAIN_ARGS="--epochs 200 --max-minutes 6 --val-every 5 --pretrain-data pbc --pretrain-epochs 10"
#   make train MODEL=mobilenetv3_lstm DEVICE=cuda WORKERS=5 TRAIN_ARGS="--epochs 300 --max-minutes 7.6 --val-every 5"
#   make train MODEL=effnetb3_vit DEVICE=cuda WORKERS=5 TRAIN_ARGS="--recipe end2end --lr 1e-3 \
#     --init-weights <a plain effnetb3_bigru run>/model --epochs 300 --max-minutes 7.6 --val-every 5"
DATA_ARG := $(if $(DATA),--data $(DATA),)

.PHONY: train train-all evaluate smear-gate

# One model; rerunning resumes from $(ARTIFACTS)/$(MODEL)/checkpoint.pt.
train: setup
	$(PY) -m training.train --model $(MODEL) --artifacts $(ARTIFACTS) --device $(DEVICE) --threads $(THREADS) $(DATA_ARG) \
	  --workers $(WORKERS) $(TRAIN_ARGS)

# Xception first (frozen stem + cached features, last blocks fine-tuned), then the random-init models
# (time-boxed, optionally distilled from TEACHER), then effnetb3_vit on effnetb3_bigru's CNN stage.
train-all: setup
	$(PY) -m training.train --model xception_bigru --artifacts $(ARTIFACTS) --device $(DEVICE) --threads $(THREADS) $(DATA_ARG)
	for m in mobilenetv3_lstm effnetb3_bigru; do \
	  $(PY) -m training.train --model $$m --artifacts $(ARTIFACTS) --device $(DEVICE) --threads $(THREADS) $(DATA_ARG) \
	    $(if $(TEACHER),--teacher $(TEACHER),) $(if $(PRETRAIN),--pretrain-data $(PRETRAIN),) --workers $(WORKERS) \
	    --max-minutes $(MAX_MINUTES) $(TRAIN_ARGS); \
	done
	# effnetb3_vit starts from effnetb3_bigru's trained CNN stage: frozen, its transformer trained on cached maps
	# (VIT_RECIPE=cached), or the whole model fine-tuned end to end at lr 1e-3 (VIT_RECIPE=end2end, the GPU default)
	$(PY) -m training.train --model effnetb3_vit --artifacts $(ARTIFACTS) --device $(DEVICE) --threads $(THREADS) $(DATA_ARG) \
	  --init-weights $(ARTIFACTS)/effnetb3_bigru/model --recipe $(VIT_RECIPE) \
	  $(if $(filter end2end,$(VIT_RECIPE)),--lr 1e-3 --workers $(WORKERS) --max-minutes $(MAX_MINUTES) $(TRAIN_ARGS),)

$(ARTIFACTS)/smear_gate.json:
	$(PY) -m training.fit_gate --out $@ $(DATA_ARG)

smear-gate: setup $(ARTIFACTS)/smear_gate.json

# Every trained model (or MODEL=...): metrics, plots, calibration, abstention, gate, card.json + Markdown.
evaluate: setup $(ARTIFACTS)/smear_gate.json
	$(PY) -m training.evaluate --artifacts $(ARTIFACTS) --threads $(THREADS) $(DATA_ARG) $(if $(filter command line,$(origin MODEL)),--model $(MODEL),)
