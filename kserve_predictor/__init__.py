"""The models as a KServe custom predictor: KServe's own model server running the runtimes the TorchServe
handlers run, with no TorchServe in the process or the image.

Why: TorchServe's repository is archived (limited maintenance since 2025-08-07, last release 0.12.0) and
KServe is removing its TorchServe runtime. TorchServe stays the server ``make run`` and ``make serve``
start; the scale-out path (docker/k8s, one InferenceService per model) runs this predictor instead, and
KServe's TorchServe runtime stays in the manifests as the alternative (docs/guides/deployment.md).

Choices:

- The same runtimes, not a re-implementation: :class:`handlers.runtime.ModelRuntime` and
  :class:`handlers.cell_runtime.CellRuntime` answer, through their public calls (``predict``,
  ``explain``, ``analyse``), so every field they put in an answer (and any they add later) reaches the
  client unchanged, and the v2 form is :func:`core.v2.to_v2`, as in the handlers.
- The same artefacts: each model is loaded from its ``.mar`` (a zip: ``model/`` and ``model_card.json``,
  :mod:`kserve_predictor.artefacts`), in the same KServe storage layout the TorchServe runtime mounts,
  so both runtimes serve the same bytes and the answers are identical (tests/integration).
- The same batching and threads as TorchServe: ``batchSize``/``maxBatchDelay`` from the TorchServe
  configuration, one inference thread per model, ``LEUKEMIA_TORCH_THREADS`` (:mod:`kserve_predictor.model`).
- Refusals are the contract's 4xx with ``{"code", "message"}`` (KServe's TorchServe runtime turned them
  into its own HTTP 500), plus the v2 ``error`` text.
- One process per model (one InferenceService each, as the manifests deploy) or several models in one
  server (``--models``): measured on 2 cores in docs/guides/deployment.md.

Run in KServe's environment (``make kserve-env``: kserve 0.21.0 with the runtimes' dependencies) or the
image docker/Dockerfile.kserve-predictor. Modules: :mod:`kserve_predictor.artefacts`,
:mod:`kserve_predictor.model`, :mod:`kserve_predictor.server`.
"""
