"""``python -m kserve_predictor``: :func:`kserve_predictor.server.main`."""

from kserve_predictor.server import main

main()
