"""Training, evaluation, calibration and fitting of the leukemia models (the model itself, its
preprocessing, the cell typer and the smear gate are :mod:`served_model`, which this imports).

Importing any ``training`` module first runs :mod:`served_model.compat` (through ``served_model``), which
makes torchvision (and so timm) importable with the CPU-only torch; anything that uses timm imports it
through, or after, a ``training`` or ``served_model`` module.
"""

from served_model import compat as compat  # noqa: F401  (must run before timm/torchvision are imported)
