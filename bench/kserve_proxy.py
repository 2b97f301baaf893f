"""KServe's model server in front of TorchServe, as KServe's TorchServe runtime runs it: run in KServe's
own environment (``make kserve-env``) by :func:`bench.kserve_server.start_model_server`, never imported.

TorchServe's KServe wrapper is a ``kserve.Model`` per served model whose ``predict`` is KServe's own
forwarding to the predictor host (TorchServe in the same pod); this is that model server, with
KServe's own :class:`kserve.Model` forwarding Open Inference Protocol (v2) requests to TorchServe's
``/v2/models/{model}/infer``. Configured from the environment:

    KSERVE_HTTP_PORT=8090 KSERVE_PREDICTOR=127.0.0.1:8080 KSERVE_MODELS=mobilenetv3_lstm,wbc_cells \\
        .venv-kserve/bin/python bench/kserve_proxy.py
"""

from __future__ import annotations

import os

import kserve  # type: ignore[import-not-found]
from kserve.predictor_config import PredictorConfig  # type: ignore[import-not-found]


class Forwarding(kserve.Model):
    """A model served elsewhere (the predictor host): KServe forwards every request there."""

    def load(self) -> bool:
        self.ready = True
        return self.ready


def main() -> None:
    config = PredictorConfig(predictor_host=os.environ["KSERVE_PREDICTOR"], predictor_protocol="v2")
    models = [Forwarding(name) for name in os.environ["KSERVE_MODELS"].split(",")]
    for model in models:
        model.load()
    kserve.ModelServer(http_port=int(os.environ["KSERVE_HTTP_PORT"]), enable_grpc=False, predictor_config=config).start(
        models
    )


if __name__ == "__main__":
    main()
