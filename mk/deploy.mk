# Deployment: offline checks of docker/ (compose, Dockerfiles, Kubernetes/KServe manifests) and the
# KServe storage layout. See docs/deployment.md. `make test` runs the same checks (tests/docker).
MODEL_STORE ?= model_store
KSERVE_LAYOUT ?= var/kserve

KSERVE_VENV := .venv-kserve
KSERVE_LOCK := requirements/kserve.txt
KSERVE_STAMP := $(KSERVE_VENV)/.installed-$(shell cat $(KSERVE_LOCK) 2>/dev/null | sha1sum | cut -c1-12)

.PHONY: compose-check kserve-layout kserve-env

compose-check: setup
	$(PY) docker/validate.py

kserve-layout: setup
	$(PY) docker/kserve_layout.py --model-store $(MODEL_STORE) --out $(KSERVE_LAYOUT)

# KServe's model server in its own environment (its pins clash with the serving stack's): the integration
# tests run it in front of TorchServe (tests/integration/test_kserve.py). `make test` builds it.
kserve-env: $(KSERVE_STAMP)

$(KSERVE_STAMP): $(KSERVE_LOCK)
	@test -x $(KSERVE_VENV)/bin/python || $(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/python -m pip install -q --no-deps -r $(KSERVE_LOCK)
	$(KSERVE_VENV)/bin/python -m pip check
	rm -f $(KSERVE_VENV)/.installed-*
	touch $@
