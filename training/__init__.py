"""Model definitions, data, training, evaluation, calibration and export for the leukemia models.

Importing any ``training`` module first runs :mod:`training.compat`, which makes torchvision (and so
timm) importable with the CPU-only torch. This is the one place it is imported; anything that uses
timm imports it through, or after, a ``training`` module.
"""

from training import compat as compat  # noqa: F401  (must run before timm/torchvision are imported)
