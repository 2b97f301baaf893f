"""The serving integration tests use the session TorchServe of tests/conftest.py (``torchserve``).

It serves the committed ``model_store/*.mar`` when all four models are there; otherwise archives
built from random-init test artifacts (tests/handlers/artifacts.py) with ``release.archive``.
"""
