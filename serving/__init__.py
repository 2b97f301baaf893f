"""Running the model server: start, stop and watch a local TorchServe (:mod:`serving.torchserve`).

Kept apart from ``handlers/`` (the code TorchServe runs inside its workers, packed into every .mar):
this is operations code that runs beside TorchServe, used by `make serve`, `make run`, the tests and
the benchmarks; it imports neither torch nor the handler.
"""

__all__: list[str] = []
