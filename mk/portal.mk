# Portal: `make run` starts TorchServe (handlers.serve) with the archives in model_store/, the Django
# portal and the retry loop; prints the URL and the demo admin's login. PORTAL_PORT, PORTAL_HOST,
# TS_PORT (first of five ports; default 8080...) and DATABASE_URL override the defaults.
MODEL_STORE ?= model_store
PORTAL_PORT ?= 8000
PORTAL_HOST ?= 127.0.0.1
TS_PORT ?=
RUN_TS_WORKDIR ?= .torchserve

.PHONY: run portal-migrate portal-retry test-portal

run: setup
	$(PY) -m portal.run --host $(PORTAL_HOST) --port $(PORTAL_PORT) --model-store $(MODEL_STORE) \
		--torchserve-workdir $(RUN_TS_WORKDIR) $(if $(TS_PORT),--torchserve-port $(TS_PORT))

portal-migrate: setup
	$(PY) portal/manage.py migrate

portal-retry: setup
	$(PY) portal/manage.py retry_pending

test-portal: setup
	$(PY) -m pytest tests/portal -q
