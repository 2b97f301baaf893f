"""torchvision compatibility for a CPU-only torch.

The only torchvision 0.28.0 wheel available here is a CUDA build. With the CPU torch its C++
extension cannot load, and ``import torchvision`` then fails in ``_meta_registrations`` with
``operator torchvision::nms does not exist``; timm imports torchvision, so timm fails too.

:func:`ensure_torchvision` declares the schemas of torchvision's custom operators *only* when the
extension cannot be loaded, so that the pure-Python parts of torchvision (transforms, which timm
uses) import. The operators themselves stay unimplemented: calling one (e.g. ``nms``) raises.
Where torchvision's extension loads, this module does nothing.

Import order matters: call :func:`ensure_torchvision` (or ``import served_model.compat``) before the
first ``import timm`` / ``import torchvision``. ``served_model/__init__.py`` does this in one place.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

__all__ = ["ensure_torchvision", "SHIM_ACTIVE"]

# Operator schemas of torchvision 0.28 (torchvision/csrc/ops/*.cpp, TORCH_LIBRARY_FRAGMENT).
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, "
    "float rois_scale, int rois_zero_point, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, "
    "SymInt channels, SymInt height, SymInt width) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width) -> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width) -> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
    "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, "
    "Tensor mask, Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, "
    "SymInt dilation_h, SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)",
)

SHIM_ACTIVE = False
_library: torch.library.Library | None = None


def _extension_loads() -> bool:
    """True when torchvision's compiled extension loads (or torchvision is already imported)."""
    if "torchvision" in sys.modules:
        return True
    if _operator_declared("nms"):
        return True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # torchvision not installed: nothing to fix, timm will report it
    pkg_dir = list(spec.submodule_search_locations)[0]
    candidates = [f for f in os.listdir(pkg_dir) if f.startswith("_C") and f.endswith(".so")]
    if not candidates:
        return False
    try:
        torch.ops.load_library(os.path.join(pkg_dir, candidates[0]))
    except (OSError, RuntimeError):
        return False
    return _operator_declared("nms")


def _operator_declared(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def ensure_torchvision() -> bool:
    """Make ``import torchvision`` work; returns True if the shim had to declare the operators."""
    global SHIM_ACTIVE, _library
    if SHIM_ACTIVE or _extension_loads():
        return SHIM_ACTIVE
    _library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 (kept alive globally)
    for schema in _SCHEMAS:
        _library.define(schema)
    SHIM_ACTIVE = True
    return True


ensure_torchvision()
