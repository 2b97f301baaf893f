# Deployment: offline checks of docker/ (compose, Dockerfiles, Kubernetes/KServe manifests) and the
# KServe storage layout. See docs/guides/deployment.md. `make test` runs the same checks (tests/docker).
MODEL_STORE ?= model_store
KSERVE_LAYOUT ?= var/kserve

KSERVE_VENV := .venv-kserve
KSERVE_LOCK := requirements/kserve.txt
KSERVE_STAMP := $(KSERVE_VENV)/.installed-$(shell cat $(KSERVE_LOCK) $(CONSTRAINTS) 2>/dev/null | sha1sum | cut -c1-12)

.PHONY: compose-check manifests kserve-layout kserve-env serve-kserve
KSERVE_PORT ?= 8090
KSERVE_MODELS ?=

compose-check: setup
	$(PY) docker/validate.py

# The files written from the per-model manifest (core/manifest.py): config.properties' models block and the
# KServe InferenceServices (serving/manifests.py; tests/core/test_manifest.py fails while one is stale).
manifests: setup
	$(PY) -m serving.manifests

kserve-layout: setup
	$(PY) docker/kserve_layout.py --model-store $(MODEL_STORE) --out $(KSERVE_LAYOUT)

# KServe's model server in its own environment (its pins clash with the serving stack's): the integration
# tests run it in front of TorchServe (tests/integration/test_kserve.py) and as the project's own predictor
# with the frame and cell runtimes (kserve_predictor/, tests/integration/test_kserve_predictor.py), hence
# torch: -c pins the local CPU wheel. Idempotent: reinstalls only when the lock or the constraints change
# (the stamp), and pip keeps what already matches. `make test` builds it.
kserve-env: $(KSERVE_STAMP)

$(KSERVE_STAMP): $(KSERVE_LOCK) $(CONSTRAINTS)
	@test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install -q --no-deps -c $(CONSTRAINTS) -r $(KSERVE_LOCK)
	$(KSERVE_VENV)/bin/python -c "import torch; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
	$(KSERVE_VENV)/bin/python -m pip check
	rm -f $(KSERVE_VENV)/.installed-*
	touch $@

# The project's KServe predictor (kserve_predictor/: KServe's model server with the runtimes, no TorchServe)
# on the model store, in the foreground; every archive unless KSERVE_MODELS=a,b. docs/guides/serving.md.
serve-kserve: kserve-env
	$(KSERVE_VENV)/bin/python -m kserve_predictor --model_dir $(MODEL_STORE) --http_port $(KSERVE_PORT) \
	  $(if $(KSERVE_MODELS),--models $(KSERVE_MODELS))
