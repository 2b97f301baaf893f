"""True cell shape for frames that were squashed to a square (torch- and numpy-free: the portal uses it too).

The B-ALL data set's frames (and any frame resized the same way) are 4:3 camera frames
(1024x768 and larger) resized to 224x224 without keeping the aspect ratio: every cell is narrowed
to three quarters of its width. Finding and typing cells on such a frame would see tall, thin
cells that no other source shows (PBC crops, BCCD frames, a lab's own camera).

Rule (one definition for training, evaluation and serving): an input of exactly
:data:`SQUASHED_SIZE` is taken as such a frame and widened by :data:`SQUASH_X_SCALE` (bicubic)
before the finder and the typer see it; every other size is used as it is. Boxes and outlines
found on the widened image are mapped back to the uploaded image's pixels by dividing x by the
same factor, so a client draws them on what it sent; the answer states the factor so the cells
can be shown at their true shape. A genuinely square 224x224 upload would be widened too: the
rule is documented in the model card and the answer, and a laboratory's camera frames are larger.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

__all__ = ["SQUASHED_SIZE", "SQUASH_X_SCALE", "true_shape", "x_scale_of", "to_upload_box", "to_upload_polygon"]

#: the size of a squashed 4:3 frame (the B-ALL data set's distribution format)
SQUASHED_SIZE = (224, 224)
#: width factor that restores the 4:3 camera frame
SQUASH_X_SCALE = 4.0 / 3.0


def x_scale_of(size: tuple[int, int]) -> float:
    """The width factor for an image of ``size`` (width, height): 4/3 for a squashed frame, else 1."""
    return SQUASH_X_SCALE if tuple(size) == SQUASHED_SIZE else 1.0


def true_shape(image: Image.Image) -> tuple[Image.Image, float]:
    """``(image at its true aspect, x_scale)``: a squashed frame widened to 299x224, anything else unchanged."""
    scale = x_scale_of(image.size)
    if scale == 1.0:
        return image, 1.0
    width = int(round(image.width * scale))
    return image.resize((width, image.height), Image.Resampling.BICUBIC), scale


def to_upload_box(box: Sequence[float], x_scale: float) -> list[int]:
    """A box ``(x0, y0, x1, y1)`` found on the widened image, in the uploaded image's pixels."""
    x0, y0, x1, y1 = box
    if x_scale == 1.0:
        return [int(x0), int(y0), int(x1), int(y1)]
    # rounded, not floored/ceiled: the widened frame's full width (299) maps back to exactly 224
    return [int(round(x0 / x_scale)), int(y0), int(round(x1 / x_scale)), int(y1)]


def to_upload_polygon(polygon: Sequence[Sequence[float]], x_scale: float) -> list[list[int]]:
    """A polygon found on the widened image, in the uploaded image's pixels."""
    if x_scale == 1.0:
        return [[int(x), int(y)] for x, y in polygon]
    return [[int(round(x / x_scale)), int(y)] for x, y in polygon]
