# The model update loop (docs/guides/model_updates.md): the lab's sign-offs -> a dataset -> a candidate version -> the gate
# against the served version on the locked test set -> promotion (TorchServe's default version) -> rollback.
# State lives in var/ (datasets, candidate archives, gate reports, the promotion record; LEUKEMIA_MODEL_VERSIONS).
VERSION ?=
RETRAIN_ARGS ?=
BY ?= $(USER)

.PHONY: dataset retrain gate other-eval promote rollback

dataset: setup
	$(PY) portal/manage.py export_dataset

retrain: setup
	$(PY) -m model_update.$(if $(filter wbc_cells,$(MODEL)),cell_retrain,retrain) --model $(MODEL) --threads $(THREADS) $(if $(filter cuda,$(DEVICE)),--device cuda) $(RETRAIN_ARGS)

gate: setup
	$(PY) -m model_update.gate --model $(MODEL) $(if $(VERSION),--version $(VERSION))

# A frame model's candidate against the served version on the holdout half of the other labs' normal frames
# (a candidate trained with RETRAIN_ARGS="--other-benign 2"; every frame is normal: an ALL answer is a false alarm).
other-eval: setup
	$(PY) -m model_update.other_eval --model $(MODEL) $(if $(VERSION),--version $(VERSION))

promote: setup
	@test -n "$(VERSION)" || { echo "make promote MODEL=<name> VERSION=<version>"; exit 2; }
	$(PY) portal/manage.py promote_model --model $(MODEL) --model-version $(VERSION) --by "$(BY)"

rollback: setup
	$(PY) portal/manage.py rollback_model --model $(MODEL) --by "$(BY)"
