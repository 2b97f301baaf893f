# Portal: `make run` starts TorchServe (serving.torchserve) with the archives in model_store/, the portal's
# web server (gunicorn, DEBUG off) and its job workers (django-q2 cluster), supervised (portal/run.py);
# prints the URL and the demo admin's login. `make dev`: the same with Django's development server and
# DEBUG on. PORTAL_PORT, PORTAL_HOST, PORTAL_WORKERS, TS_PORT (first of five ports; default 8080...)
# and DATABASE_URL override the defaults. `make worker`: one more job cluster (another terminal or host).
# `make stop` stops a `make run` (from another terminal, or what a killed one left) before TorchServe.
MODEL_STORE ?= model_store
PORTAL_PORT ?= 8000
PORTAL_HOST ?= 127.0.0.1
TS_PORT ?=
RUN_TS_WORKDIR ?= .torchserve

PORTAL_WORKERS ?= 4
RUN_ARGS = --host $(PORTAL_HOST) --port $(PORTAL_PORT) --model-store $(MODEL_STORE) --workers $(PORTAL_WORKERS) \
	--torchserve-workdir $(RUN_TS_WORKDIR) $(if $(TS_PORT),--torchserve-port $(TS_PORT))

.PHONY: run dev worker portal-migrate portal-run-queued test-portal stop-portal

run: setup
	$(PY) -m portal.run $(RUN_ARGS)

dev: setup
	$(PY) -m portal.run --dev $(RUN_ARGS)

# `make stop` (mk/serving.mk) stops the portal first
stop: stop-portal
stop-portal: setup
	$(PY) -m portal.run --stop

worker: setup
	PORTAL_WORKERS=$(PORTAL_WORKERS) $(PY) portal/manage.py qcluster

portal-migrate: setup
	$(PY) portal/manage.py migrate

portal-run-queued: setup
	$(PY) portal/manage.py run_queued --sweep

test-portal: setup
	$(PY) -m pytest tests/portal -q
