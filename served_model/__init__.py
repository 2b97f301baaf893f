"""The served model: everything that decides what a model answers, imported by ``handlers/`` (serving)
and ``training/`` (training and evaluation) alike, so one definition is trained and served.

- :mod:`served_model.network`: the hybrid CNN + sequence classifier (:class:`~served_model.network.HybridClassifier`),
  built from the registry (:mod:`core.registry`), saved and loaded;
- :mod:`served_model.transforms`: the eval preprocessing and the backbone's data config;
- :mod:`served_model.stain`: luminance standardisation and stain normalisation (and the colour spaces
  training's stain augmentation uses);
- :mod:`served_model.cell_typer`: the cell model's typer (model, crop, preprocessing, save/load);
- :mod:`served_model.smear_gate` and :mod:`served_model.gate_statistics`: the smear gate and its image statistics;
- :mod:`served_model.compat`: makes timm importable with the CPU-only torch.

Packed whole into every .mar (with ``core/``, ``cells/`` and ``handlers/``); never imports ``training``
or ``handlers``. Importing any ``served_model`` module first runs :mod:`served_model.compat`, before
timm or torchvision is imported.
"""

from served_model import compat as compat  # noqa: F401  (must run before timm/torchvision are imported)
