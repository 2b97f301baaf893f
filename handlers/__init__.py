"""TorchServe handler for the leukemia models and the plain modules it is built on.

The handler (:mod:`handlers.leukemia_handler`) is kept thin: request decoding
(:mod:`handlers.decode`), error mapping (:mod:`handlers.errors`), post-processing
(:mod:`handlers.postprocess`), Grad-CAM explanations (:mod:`handlers.explain`) and the loaded model
(:mod:`handlers.runtime`) are plain Python, tested without TorchServe. :mod:`handlers.serve` starts
and stops a local TorchServe.
"""

# training.models imports timm, which needs the torchvision shim first (training/compat.py).
from training import compat as _compat  # noqa: F401

__all__: list[str] = []
