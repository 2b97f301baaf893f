"""TorchServe handler for the leukemia models and the plain modules it is built on (packed into every .mar).

The handler (:mod:`handlers.leukemia_handler`) is kept thin: request decoding (:mod:`core.decode`),
error codes (:mod:`core.errors`), the response body (:mod:`core.prediction`), calibrated
probabilities (:mod:`handlers.postprocess`), Grad-CAM explanations (:mod:`handlers.explain`) and the
loaded model (:mod:`handlers.runtime`) are plain Python, tested without TorchServe. Starting and
stopping TorchServe itself is :mod:`serving.torchserve`.
"""

__all__: list[str] = []
