# Serving: model archives, a local TorchServe, benchmarks (see docs/guides/serving.md, docs/results/benchmarks.md).
ARTIFACTS ?= artifacts
MODEL_STORE ?= model_store
TS_CONFIG ?= docker/torchserve/config.properties
TS_WORKDIR ?= .torchserve

PORTAL_COLUMN = $(if $(wildcard docs/results/portal_latency_models.json),--portal-json docs/results/portal_latency_models.json)

.PHONY: bench-gate-side bench-ts-config bench-ts-overhead bench-kserve bench-portal bench-runtimes bench-cells archive repack serve stop bench loadtest scale-bench test-serving

archive: setup
	$(PY) -m release.archive --artifacts $(ARTIFACTS) --out $(MODEL_STORE)

# Code-only change: rebuild every model_store/*.mar with the tree's code around its own weights and card.
repack: setup
	$(PY) -m release.archive --repack --out $(MODEL_STORE)

serve: setup
	$(PY) -m serving.cli start --model-store $(MODEL_STORE) --config $(TS_CONFIG) --workdir $(TS_WORKDIR)

stop: setup
	$(PY) -m serving.cli stop --workdir $(TS_WORKDIR)

bench: setup kserve-env
	OMP_NUM_THREADS=1 $(PY) -m bench.serving --model-store $(MODEL_STORE) --out docs/results/benchmarks
	OMP_NUM_THREADS=1 $(PY) -m bench.portal_latency --model-store $(MODEL_STORE) --portal-json docs/results/portal_latency_models.json
	OMP_NUM_THREADS=1 $(PY) -m bench.runtimes --model-store $(MODEL_STORE) --out docs/results/benchmarks --portal-json docs/results/portal_latency_models.json
	OMP_NUM_THREADS=1 $(PY) -m bench.cells --model-store $(MODEL_STORE) --out docs/results/benchmarks_cells
	OMP_NUM_THREADS=1 $(PY) -m bench.ts_overhead --model-store $(MODEL_STORE) --out docs/results/ts_overhead
	OMP_NUM_THREADS=1 $(PY) -m bench.kserve_overhead --model-store $(MODEL_STORE) --out docs/results/kserve_overhead

# forward runtimes, the limit, step shares alone (merged into docs/results/benchmarks.json/.md; `make bench` runs it too)
bench-runtimes: setup
	OMP_NUM_THREADS=1 $(PY) -m bench.runtimes --model-store $(MODEL_STORE) --out docs/results/benchmarks $(PORTAL_COLUMN)

# the cell-level model alone (docs/results/benchmarks_cells.md)
bench-cells: setup
	OMP_NUM_THREADS=1 $(PY) -m bench.cells --model-store $(MODEL_STORE) --out docs/results/benchmarks_cells

# Upload-to-result through the portal, one frame at a time (bench/portal_latency.py) -> docs/results/portal_latency.md;
# its per-model p50 (docs/results/portal_latency_models.json) fills the runtimes table's portal column once it exists
bench-portal: setup
	OMP_NUM_THREADS=1 $(PY) -m bench.portal_latency --model-store $(MODEL_STORE) --portal-json docs/results/portal_latency_models.json

# What TorchServe adds to a single request, split by its own metrics (bench/ts_overhead.py; `make bench` too)
bench-ts-overhead: setup
	OMP_NUM_THREADS=1 $(PY) -m bench.ts_overhead --model-store $(MODEL_STORE) --out docs/results/ts_overhead

# What KServe's model server adds in front of TorchServe (bench/kserve_overhead.py; `make bench` too)
bench-kserve: setup kserve-env
	OMP_NUM_THREADS=1 $(PY) -m bench.kserve_overhead --model-store $(MODEL_STORE) --out docs/results/kserve_overhead

# The smear gate's statistics on a smaller copy of the image: time, and a gate refitted at each side
# (bench/gate_side.py, about 5 min on 2 cores) -> docs/results/gate_side.md
bench-gate-side: setup
	OMP_NUM_THREADS=1 $(PY) -m bench.gate_side --sides 128 96 64 --out docs/results/gate_side

# TorchServe workers / threads / batch / delay for the frame models, by measurement (bench/ts_config.py)
bench-ts-config: setup
	OMP_NUM_THREADS=1 $(PY) -m bench.ts_config --model-store $(MODEL_STORE)

# Uploads under load and faults through the real stack (bench/load.py) -> docs/results/reliability.md
LOAD_ARGS ?= --fault-after 8 --outage 20
loadtest: setup
	$(PY) -m bench.load --model-store $(MODEL_STORE) $(LOAD_ARGS)

# The compose services as local processes, 1 vs 2 of each behind nginx (bench/scale.py) -> docs/results/scale.md
SCALE_ARGS ?= --max-load 0.5
scale-bench: setup
	$(PY) -m bench.scale --model-store $(MODEL_STORE) $(SCALE_ARGS)

test-serving: setup
	$(PY) -m pytest tests/handlers tests/integration -q
