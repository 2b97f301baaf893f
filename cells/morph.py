"""Binary morphology by Euclidean distance: cost independent of the radius, which grows with the image's scale."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    if radius <= 0 or not mask.any():
        return mask.copy()
    return np.asarray(ndi.distance_transform_edt(~mask) <= radius)


def erode(mask: np.ndarray, radius: float) -> np.ndarray:
    if radius <= 0:
        return mask.copy()
    # Pixels outside the image count as foreground, so objects touching the border are not eaten from that side.
    padded = np.pad(mask, 1, constant_values=True)
    return np.asarray(ndi.distance_transform_edt(padded)[1:-1, 1:-1] > radius)


def close(mask: np.ndarray, radius: float) -> np.ndarray:
    return erode(dilate(mask, radius), radius)


def open_(mask: np.ndarray, radius: float) -> np.ndarray:
    return dilate(erode(mask, radius), radius) & mask
