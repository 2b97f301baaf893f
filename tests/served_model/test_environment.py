"""The installed environment: pinned torch, working timm, clean pip, the torchvision shim."""

from __future__ import annotations

import subprocess
import sys

import torch

from tests.conftest import REPO


def test_torch_is_the_pinned_cpu_build() -> None:
    assert torch.__version__.split("+")[0] == "2.13.0"


def test_pip_check_is_clean() -> None:
    res = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_timm_imports_and_runs_in_a_fresh_process() -> None:
    code = (
        "import served_model.network, timm, torch, torchvision.transforms.v2 as T;"
        "m = timm.create_model('mobilenetv3_small_050', num_classes=4).eval();"
        "print(tuple(m(torch.randn(1, 3, 64, 64)).shape))"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "(1, 4)"


def test_shim_is_idempotent_and_a_noop_once_torchvision_is_imported() -> None:
    import served_model.compat as compat

    import torchvision  # noqa: F401

    before = compat.SHIM_ACTIVE
    assert compat.ensure_torchvision() == before
    assert compat._extension_loads() is True  # torchvision already imported: nothing to do


def test_shim_only_declares_when_extension_cannot_load() -> None:
    from served_model import compat

    if compat.SHIM_ACTIVE:
        # the extension really cannot load here: its ops are declared but unimplemented
        import pytest
        import torchvision

        with pytest.raises(RuntimeError):
            torchvision.ops.nms(torch.rand(2, 4), torch.rand(2), 0.5)
    else:
        assert torch.ops.torchvision.nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([1.0]), 0.5).tolist() == [0]
