"""Evaluation through the served path: the handlers' own runtimes (:mod:`handlers.runtime`,
:mod:`handlers.cell_runtime`) run on evaluation data, so what is measured is what TorchServe answers.

- :mod:`evaluation.cell_served`: every cell metric of ``wbc_cells`` through its served pipeline;
- :mod:`evaluation.ood_features`: each frame model's served outputs on same- and other-source images,
  cached for the out-of-distribution fit (:mod:`training.ood`).

Sits above ``handlers/`` and ``training/`` (it imports both; neither imports it).
"""

__all__: list[str] = []
