"""Families of non-smear images (and smear sources) for fitting and testing the smear gate, all offline.

A *family* is one kind of image the gate must refuse: colour photographs, grayscale photographs,
astronomy, retina fundus, tissue (histology / IHC), fluorescence microscopy, other microscopy
(cells on black, phase contrast, single cells on a blank field), other medical imaging (MRI, CT
phantom), documents and graphics, and synthetic patterns. Each family is built from the images
bundled with installed libraries (scikit-image's ``skimage.data`` entries that load without a
download, scikit-learn's two sample photos, matplotlib's sample data) and from principled
re-renderings of them (crops, rescalings, grayscale, channel changes, stain re-mapping of the IHC
image to H&E colours, its haematoxylin channel rendered as a DAPI-like fluorescence frame),
plus the synthetic kinds of :mod:`training.smear_gate`.

Families are kept apart so that a gate can be fitted on some and tested on one it never saw
(:func:`leave_one_family_out` in :mod:`training.fit_gate`). Every family is deterministic in its seed.

``skimage.data`` entries that need a download (``pooch``, absent offline) and so are not used:
brain, cells3d, eagle, human_mitosis, kidney, lily, nickel_solidification, palisades_of_vogt,
protein_transport, skin, vortex; scipy's ``scipy.datasets`` (face, ascent) needs one too.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from training.smear_gate import synthetic_negatives

__all__ = ["FAMILIES", "REGRESSION_CASES", "family_images", "regression_images"]

_SIZES = ((320, 240), (224, 224), (640, 480), (360, 360), (512, 384))


def _skimage(name: str) -> np.ndarray:
    import skimage.data

    return np.asarray(getattr(skimage.data, name)())


def _rgb(a: np.ndarray) -> Image.Image:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = a.astype(np.float64)
        a = (a - a.min()) / max(float(a.max() - a.min()), 1e-9) * 255
        a = a.astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    return Image.fromarray(a).convert("RGB")


def _mpl(name: str) -> Path:
    import matplotlib.cbook as cbook

    return Path(cbook.get_sample_data(name, asfileobj=False))


@cache
def _sources(family: str) -> tuple[Image.Image, ...]:
    """The real images a family is built from (loaded once)."""
    if family == "photo_colour":
        from sklearn.datasets import load_sample_images

        names = ("astronaut", "coffee", "chelsea", "cat", "rocket")
        ims = [_rgb(_skimage(n)) for n in names] + [_rgb(a) for a in load_sample_images().images]
        with Image.open(_mpl("grace_hopper.jpg")) as im:
            ims.append(im.convert("RGB"))
        with Image.open(_mpl("Minduka_Present_Blue_Pack.png")) as im:
            ims.append(im.convert("RGB"))
        return tuple(ims)
    if family == "photo_gray":
        return tuple(_rgb(_skimage(n)) for n in ("camera", "coins", "clock", "grass", "gravel", "brick"))
    if family == "astronomy":
        return (_rgb(_skimage("moon")), _rgb(_skimage("hubble_deep_field")))
    if family == "fundus":
        return (_rgb(_skimage("retina")), _rgb(_skimage("microaneurysms")))
    if family == "tissue":
        return (_rgb(_skimage("immunohistochemistry")),)
    if family == "medical_other":
        raw = gzip.decompress(_mpl("s1045.ima.gz").read_bytes())
        mri = np.frombuffer(raw, np.uint16).reshape(256, 256)
        return (_rgb(mri), _rgb(_skimage("shepp_logan_phantom")))
    if family == "documents":
        ims = [_rgb(_skimage(n)) for n in ("page", "text", "logo", "colorwheel", "checkerboard")]
        with Image.open(_mpl("logo2.png")) as im:
            ims.append(im.convert("RGB"))
        return tuple(ims)
    if family == "other_microscopy":
        return (_rgb(_skimage("cell")),)
    raise KeyError(family)


def _crop(src: Image.Image, rng: np.random.Generator, size: tuple[int, int], smin: float = 0.3) -> Image.Image:
    sw, sh = src.size
    s = rng.uniform(smin, 1.0)
    cw, ch = max(8, int(sw * s)), max(8, int(sh * s))
    x0, y0 = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    img = src.crop((x0, y0, x0 + cw, y0 + ch)).resize(size, Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def _jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Exposure and white-balance change, sometimes JPEG-like blur: a different camera."""
    a = np.asarray(img, dtype=np.float64)
    a = a * rng.uniform(0.8, 1.2) * rng.uniform(0.9, 1.1, size=3)
    out = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    return out


def _hed_image(src: Image.Image) -> np.ndarray:
    from skimage.color import rgb2hed

    return np.asarray(rgb2hed(np.asarray(src)))


def _hed_to_rgb(h: np.ndarray, e: np.ndarray) -> Image.Image:
    from skimage.color import hed2rgb

    rgb = hed2rgb(np.stack([h, e, np.zeros_like(h)], axis=-1))
    return Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))


def _synthetic_fundus(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """An orange-red disc on black, a bright optic disc, dark branching vessels."""
    w, h = size
    img = Image.new("RGB", size, (0, 0, 0))
    d = ImageDraw.Draw(img)
    r = min(w, h) * rng.uniform(0.42, 0.6)
    cx, cy = w / 2 + rng.uniform(-0.05, 0.05) * w, h / 2
    base = np.array([rng.uniform(170, 240), rng.uniform(60, 130), rng.uniform(10, 60)])
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in base))
    ox, oy = cx + rng.choice([-1, 1]) * r * rng.uniform(0.2, 0.5), cy + rng.uniform(-0.1, 0.1) * r
    orr = r * rng.uniform(0.1, 0.16)
    d.ellipse((ox - orr, oy - orr, ox + orr, oy + orr), fill=(250, 230, 170))
    vessel = tuple(int(v) for v in base * 0.55)
    for _ in range(int(rng.integers(6, 12))):
        x, y, ang = ox, oy, rng.uniform(0, 2 * math.pi)
        width = int(rng.integers(2, 6))
        for _ in range(40):
            nx, ny = x + math.cos(ang) * r * 0.06, y + math.sin(ang) * r * 0.06
            if math.hypot(nx - cx, ny - cy) > r:
                break
            d.line((x, y, nx, ny), fill=vessel, width=width)
            x, y, ang = nx, ny, ang + rng.normal(0, 0.25)
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    shade = 1.0 - 0.5 * (np.hypot(xx - cx, yy - cy) / r).clip(0, 1) ** 2  # vignetting
    arr = arr * shade[..., None] + rng.normal(0, 3, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _fluorescence_from_nuclei(src: Image.Image, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """The IHC image's haematoxylin (nuclei) and DAB channels rendered as a two-colour fluorescence frame."""
    hed = _hed_image(_crop(src, rng, size, smin=0.2))
    out = np.zeros((size[1], size[0], 3), dtype=np.float32)
    chans = rng.permutation(3)
    for k, c in enumerate((0, 2)):
        x = hed[..., c]
        x = (x - np.percentile(x, 50)) / max(float(np.percentile(x, 99.5) - np.percentile(x, 50)), 1e-6)
        out[..., chans[k]] += np.clip(x, 0, 1) * rng.uniform(0.5, 1.0)
    out += rng.normal(0, 0.02, size=out.shape)
    return Image.fromarray((np.clip(out, 0, 1) * 255).astype(np.uint8))


def _fluorescence_blobs(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """skimage's binary blobs (or round nuclei) as a blurred, bright-on-dark one- or two-channel frame."""
    from skimage.data import binary_blobs

    w, h = size
    n = max(w, h)
    blobs = binary_blobs(
        length=n,
        blob_size_fraction=float(rng.uniform(0.03, 0.12)),
        volume_fraction=float(rng.uniform(0.05, 0.3)),
        rng=int(rng.integers(0, 2**31)),
    )[:h, :w].astype(np.float32)
    img = Image.fromarray((blobs * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(float(rng.uniform(1, 4))))
    x = np.asarray(img, dtype=np.float32) / 255.0
    out = np.zeros((h, w, 3), dtype=np.float32)
    ch = int(rng.integers(0, 3))
    out[..., ch] = x * rng.uniform(0.4, 1.0)
    if rng.random() < 0.5:
        out[..., (ch + 1) % 3] = x * rng.uniform(0.1, 0.6)
    if rng.random() < 0.3:  # grayscale camera
        out = out.max(axis=-1, keepdims=True).repeat(3, axis=-1)
    out += rng.normal(0, 0.015, size=out.shape)
    return Image.fromarray((np.clip(out, 0, 1) * 255).astype(np.uint8))


def _cells_on_blank(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """One or a few cells (nucleus + cytoplasm, smooth edges) on an empty bright or dark field."""
    w, h = size
    dark = rng.random() < 0.4
    bg = (0, 0, 0) if dark else tuple(int(v) for v in rng.uniform(200, 255, size=3))
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        r = min(w, h) * rng.uniform(0.08, 0.3)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        cyto = tuple(int(v) for v in rng.uniform(120, 230, size=3))
        nuc = tuple(int(v) for v in rng.uniform(30, 140, size=3))
        d.ellipse((cx - r, cy - r * rng.uniform(0.8, 1.0), cx + r, cy + r), fill=cyto)
        rn = r * rng.uniform(0.4, 0.75)
        d.ellipse((cx - rn, cy - rn, cx + rn * rng.uniform(0.7, 1.0), cy + rn), fill=nuc)
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.8, 2.5))))


def _segmented_frames() -> list[Path]:
    from training.data import DEFAULT_DATA_ROOT

    return sorted((DEFAULT_DATA_ROOT.parent / "segmented").glob("*/*.jpg"))


def _family(name: str, n: int, seed: int) -> Iterator[Image.Image]:
    for i in range(n):
        rng = np.random.default_rng([seed, sum(map(ord, name)), i])
        size = _SIZES[int(rng.integers(0, len(_SIZES)))]
        yield _draw(name, rng, size, i)


def _draw(name: str, rng: np.random.Generator, size: tuple[int, int], i: int) -> Image.Image:
    if name in ("photo_colour", "documents", "medical_other"):
        srcs = _sources(name)
        img = _crop(srcs[i % len(srcs)], rng, size)
        if name == "medical_other" and rng.random() < 0.4:  # MRI / CT shown through a colour map
            import matplotlib

            cmap = matplotlib.colormaps[str(rng.choice(["viridis", "gray", "hot", "bone"]))]
            img = _rgb((cmap(np.asarray(img.convert("L")) / 255.0)[..., :3] * 255).astype(np.uint8))
        return _jitter(img, rng)
    if name == "photo_gray":
        if i % 2 == 0:
            srcs = _sources(name)
            return _jitter(_crop(srcs[(i // 2) % len(srcs)], rng, size), rng).convert("L").convert("RGB")
        colour = _sources("photo_colour")
        return ImageOps.grayscale(_crop(colour[(i // 2) % len(colour)], rng, size)).convert("RGB")
    if name == "astronomy":
        moon, hubble = _sources(name)
        src = moon if i % 2 == 0 else hubble
        img = _crop(src, rng, size, smin=0.4 if src is moon else 0.2)
        if rng.random() < 0.4:
            img = img.convert("L").convert("RGB")
        return _jitter(img, rng)
    if name == "fundus":
        retina, micro = _sources(name)
        k = i % 3
        if k == 0:  # the whole fundus (black surround), rescaled and re-exposed
            img = _crop(retina, rng, size, smin=0.85)
        elif k == 1:  # a crop inside the fundus, or the grayscale microaneurysm patch
            img = _crop(retina, rng, size, smin=0.2) if rng.random() < 0.7 else _crop(micro, rng, size, smin=0.6)
        else:
            img = _synthetic_fundus(rng, size)
        if rng.random() < 0.2:
            img = img.convert("L").convert("RGB")
        return _jitter(img, rng)
    if name == "tissue":
        (ihc,) = _sources(name)
        img = _crop(ihc, rng, size, smin=0.15)
        if i % 2 == 1:  # the same tissue as H&E: haematoxylin kept, DAB re-mapped to eosin, gains varied
            hed = _hed_image(img)
            img = _hed_to_rgb(hed[..., 0] * rng.uniform(0.8, 1.6), hed[..., 2] * rng.uniform(1.5, 4.0) + 0.02)
        return _jitter(img, rng)
    if name == "fluorescence":
        k = i % 3
        if k == 0:
            return _fluorescence_from_nuclei(_sources("tissue")[0], rng, size)
        if k == 1:
            return _fluorescence_blobs(rng, size)
        return next(
            im for _, im in synthetic_negatives(1, seed=int(rng.integers(0, 2**31)), size=size, kinds=("fluorescence",))
        )
    if name == "other_microscopy":
        k = i % 3
        if k == 0:
            (cell,) = _sources(name)
            return _jitter(_crop(cell, rng, size, smin=0.3), rng)
        if k == 1:
            seg = _segmented_frames()
            if seg:
                with Image.open(seg[int(rng.integers(0, len(seg)))]) as im:
                    return _jitter(im.convert("RGB"), rng)
        return _cells_on_blank(rng, size)
    if name == "synthetic":
        kinds = ("uniform_noise", "gaussian_noise", "flat", "gradient", "shapes", "stripes", "text")
        return next(
            im
            for _, im in synthetic_negatives(
                1, seed=int(rng.integers(0, 2**31)), size=size, kinds=(kinds[i % len(kinds)],)
            )
        )
    raise KeyError(name)


#: family -> what it holds (the docs' table lists the same)
FAMILIES: dict[str, str] = {
    "photo_colour": "colour photographs: skimage astronaut, coffee, chelsea, cat, rocket; sklearn china, flower; "
    "matplotlib grace_hopper, Minduka (crops, rescales, exposure / white balance)",
    "photo_gray": "grayscale photographs: skimage camera, coins, clock, grass, gravel, brick; grayscale crops of "
    "the colour photographs",
    "astronomy": "skimage moon and hubble_deep_field (crops, colour and grayscale)",
    "fundus": "retina fundus: skimage retina (whole and crops), microaneurysms, synthetic fundus (disc, optic disc, "
    "vessels, vignetting)",
    "tissue": "histology / IHC: skimage immunohistochemistry crops at many scales, and re-rendered as H&E "
    "(haematoxylin kept, DAB mapped to eosin)",
    "fluorescence": "fluorescence microscopy: the IHC image's nuclei as a DAPI-like two-channel frame, blurred "
    "binary blobs in one or two channels, synthetic Gaussian spots",
    "other_microscopy": "other microscopy: skimage cell (phase contrast), the B-ALL set's segmented frames "
    "(cells on black), single cells on an empty field",
    "medical_other": "other medical imaging: matplotlib's MRI slice (s1045), skimage Shepp-Logan CT phantom, "
    "grayscale and colour-mapped",
    "documents": "documents and graphics: skimage page, text, logo, colorwheel, checkerboard; matplotlib logo2",
    "synthetic": "synthetic patterns: noise, flat colour, gradients, shapes, stripes, text pages",
}


def family_images(name: str, n: int = 60, seed: int = 0) -> list[Image.Image]:
    """``n`` images of family ``name`` (see :data:`FAMILIES`), deterministic in ``seed``."""
    if name not in FAMILIES:
        raise KeyError(name)
    return list(_family(name, n, seed))


#: The issue's regression cases: the two everyday photos the shipped gate let through.
REGRESSION_CASES: dict[str, Callable[[], Image.Image]] = {
    "moon_grayscale": lambda: _rgb(_skimage("moon")),
    "retina_fundus": lambda: _rgb(_skimage("retina")),
}


def regression_images() -> dict[str, Image.Image]:
    return {k: f() for k, f in REGRESSION_CASES.items()}
