"""TorchServe handler for the leukemia models and the plain modules it is built on.

The handler (:mod:`handlers.leukemia_handler`) is kept thin: request decoding
(:mod:`core.decode`), error mapping (:mod:`core.errors`), post-processing
(:mod:`handlers.postprocess`), Grad-CAM explanations (:mod:`handlers.explain`) and the loaded model
(:mod:`handlers.runtime`) are plain Python, tested without TorchServe. :mod:`handlers.serve` starts
and stops a local TorchServe.

Importing this package imports nothing heavy: the portal uses :mod:`handlers.serve` and the limits
in :mod:`core.decode` without loading torch. The torchvision shim that timm needs runs when the
``training`` package is first imported (training/__init__.py).
"""

__all__: list[str] = []
