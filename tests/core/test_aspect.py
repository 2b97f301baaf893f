"""Squashed 224x224 frames are widened to their 4:3 camera shape; boxes go back to the upload's pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.aspect import SQUASH_X_SCALE, to_upload_box, to_upload_polygon, true_shape, x_scale_of


def test_only_an_exactly_224_square_is_widened() -> None:
    assert x_scale_of((224, 224)) == pytest.approx(4 / 3)
    for size in [(225, 224), (224, 225), (640, 480), (360, 363), (1024, 768), (223, 223)]:
        assert x_scale_of(size) == 1.0
        image = Image.new("RGB", size)
        same, scale = true_shape(image)
        assert same is image and scale == 1.0


def test_a_squashed_circle_comes_back_round() -> None:
    # a disc drawn on a 4:3 frame, then squashed to 224x224 as the data set was, is an ellipse 3:4 wide:tall
    yy, xx = np.mgrid[0:768, 0:1024]
    disc = ((xx - 512) ** 2 + (yy - 384) ** 2 < 200**2).astype(np.uint8) * 255
    squashed = Image.fromarray(np.stack([disc] * 3, -1)).resize((224, 224), Image.Resampling.BOX)
    widened, scale = true_shape(squashed)
    assert widened.size == (299, 224) and scale == SQUASH_X_SCALE
    mask = np.asarray(widened)[..., 0] > 127
    ys, xs = np.nonzero(mask)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert width / height == pytest.approx(1.0, abs=0.04)


def test_boxes_and_polygons_map_back_inside_the_upload() -> None:
    assert to_upload_box((0, 10, 299, 50), SQUASH_X_SCALE) == [0, 10, 224, 50]
    assert to_upload_box((40, 10, 80, 50), SQUASH_X_SCALE) == [30, 10, 60, 50]
    assert to_upload_box((3, 4, 5, 6), 1.0) == [3, 4, 5, 6]
    assert to_upload_polygon([[40, 1], [80, 2]], SQUASH_X_SCALE) == [[30, 1], [60, 2]]
    assert to_upload_polygon([[40, 1]], 1.0) == [[40, 1]]
