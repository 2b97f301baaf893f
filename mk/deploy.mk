# Deployment: offline checks of docker/ (compose, Dockerfiles, Kubernetes/KServe manifests) and the
# KServe storage layout. See docs/deployment.md. `make test` runs the same checks (tests/docker).
MODEL_STORE ?= model_store
KSERVE_LAYOUT ?= var/kserve

.PHONY: compose-check kserve-layout

compose-check: setup
	$(PY) docker/validate.py

kserve-layout: setup
	$(PY) docker/kserve_layout.py --model-store $(MODEL_STORE) --out $(KSERVE_LAYOUT)
