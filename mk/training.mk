# Training, evaluation and model cards (issue 3). Outputs go to $(ARTIFACTS)/<model>/ (gitignored);
# `make evaluate` also writes docs/models/*.png and model_store/{README.md,<model>.md}.
ARTIFACTS ?= artifacts
DATA ?=
DEVICE ?= $(shell $(PY) -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
THREADS ?= 2
TRAIN_ARGS ?=
MAX_MINUTES ?= 55
# distillation is optional: TEACHER=artifacts/xception_bigru uses its soft labels (the shipped models do not)
TEACHER ?=
DATA_ARG := $(if $(DATA),--data $(DATA),)

.PHONY: train train-all evaluate smear-gate

# One model; rerunning resumes from $(ARTIFACTS)/$(MODEL)/checkpoint.pt.
train: setup
	$(PY) -m training.train --model $(MODEL) --artifacts $(ARTIFACTS) --device $(DEVICE) --threads $(THREADS) $(DATA_ARG) $(TRAIN_ARGS)

# Xception first (frozen stem + cached features, last blocks fine-tuned), then the random-init models
# (time-boxed, optionally distilled from TEACHER), then effnetb3_vit on effnetb3_bigru's CNN stage.
train-all: setup
	$(PY) -m training.train --model xception_bigru --artifacts $(ARTIFACTS) --device $(DEVICE) --threads $(THREADS) $(DATA_ARG)
	for m in mobilenetv3_lstm effnetb3_bigru; do \
	  $(PY) -m training.train --model $$m --artifacts $(ARTIFACTS) --device $(DEVICE) --threads $(THREADS) $(DATA_ARG) \
	    $(if $(TEACHER),--teacher $(TEACHER),) --max-minutes $(MAX_MINUTES) $(TRAIN_ARGS); \
	done
	# effnetb3_vit shares effnetb3_bigru's trained CNN stage (frozen) and trains its transformer on cached maps
	$(PY) -m training.train --model effnetb3_vit --artifacts $(ARTIFACTS) --device $(DEVICE) --threads $(THREADS) $(DATA_ARG) \
	  --init-weights $(ARTIFACTS)/effnetb3_bigru/model

$(ARTIFACTS)/smear_gate.json:
	$(PY) -m training.fit_gate --out $@ $(DATA_ARG)

smear-gate: setup $(ARTIFACTS)/smear_gate.json

# Every trained model (or MODEL=...): metrics, plots, calibration, abstention, gate, card.json + Markdown.
evaluate: setup $(ARTIFACTS)/smear_gate.json
	$(PY) -m training.evaluate --artifacts $(ARTIFACTS) --threads $(THREADS) $(DATA_ARG) $(if $(filter command line,$(origin MODEL)),--model $(MODEL),)
