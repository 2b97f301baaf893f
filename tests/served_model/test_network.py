"""The four hybrid architectures: shapes, batch consistency, gradients, serialisation, init weights."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from core.registry import CLASS_NAMES, REGISTRY, get_spec
from served_model.network import HybridClassifier, create_model, load_model, save_model
from served_model.transforms import data_config
from tests.conftest import REPO, XCEPTION_WEIGHTS

MODEL_NAMES = list(REGISTRY)


@pytest.fixture(scope="module", params=MODEL_NAMES)
def model(request: pytest.FixtureRequest) -> HybridClassifier:
    torch.manual_seed(0)
    return create_model(request.param).eval()


def _images(model: HybridClassifier, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    s = model.spec.input_size
    return torch.randn(n, 3, s, s, generator=g)


def test_registry_entries() -> None:
    assert set(REGISTRY) == {"xception_bigru", "effnetb3_bigru", "effnetb3_vit", "mobilenetv3_lstm"}
    kinds = {n: s.sequence.kind for n, s in REGISTRY.items()}
    assert kinds == {
        "xception_bigru": "bigru",
        "effnetb3_bigru": "bigru",
        "effnetb3_vit": "transformer",
        "mobilenetv3_lstm": "lstm",
    }
    for spec in REGISTRY.values():
        assert spec.classes == CLASS_NAMES == ("Benign", "Early", "Pre", "Pro")


def test_normalisation_comes_from_pretrained_config() -> None:
    import timm

    for spec in REGISTRY.values():
        cfg = timm.get_pretrained_cfg(spec.timm_name)
        dc = data_config(spec)
        assert dc["mean"] == pytest.approx(cfg.mean) and dc["std"] == pytest.approx(cfg.std)
        assert dc["input_size"] == (3, spec.input_size, spec.input_size)
        assert dc["crop_pct"] == 1.0
    assert data_config(get_spec("xception_bigru"))["mean"] == (0.5, 0.5, 0.5)


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(KeyError, match="registered"):
        get_spec("resnet_gru")


@pytest.mark.parametrize("batch", [1, 3])
def test_logits_shape(model: HybridClassifier, batch: int) -> None:
    with torch.inference_mode():
        out = model(_images(model, batch))
    assert out.shape == (batch, 4)
    assert torch.isfinite(out).all()


def test_batched_rows_equal_single_images(model: HybridClassifier) -> None:
    x = _images(model, 3)
    with torch.inference_mode():
        batched = model(x)
        singles = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=0)


def test_forward_split_matches_forward(model: HybridClassifier) -> None:
    x = _images(model, 2)
    with torch.inference_mode():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
        fmap = model.forward_cnn(x)
    assert feats.ndim == 3 and feats.shape[0] == 2
    n_tokens = fmap.shape[2] * fmap.shape[3]
    assert feats.shape[1] == n_tokens + (1 if model.spec.sequence.kind == "transformer" else 0)
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(logits, model(x))


def test_gradients_reach_backbone_and_sequence_stage(model: HybridClassifier) -> None:
    model.train()
    try:
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(_images(model, 2)), torch.tensor([0, 3]))
        loss.backward()
        backbone_grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
        seq_grads = [p.grad for p in model.sequence.parameters() if p.grad is not None]
        assert backbone_grads and any(g.abs().sum() > 0 for g in backbone_grads)
        assert seq_grads and all(g.abs().sum() > 0 for g in seq_grads)
        # the very first convolution of the CNN receives gradient
        first = next(p for n, p in model.backbone.named_parameters() if p.ndim == 4)
        assert first.grad is not None and first.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_save_and_reload_gives_identical_outputs(model: HybridClassifier, tmp_path) -> None:
    save_model(model, tmp_path)
    reloaded = load_model(tmp_path)
    x = _images(model, 2)
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(x), model(x), atol=0, rtol=0)


def test_fp16_storage_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = create_model("mobilenetv3_lstm").eval()
    save_model(model, tmp_path, dtype=torch.float16)
    reloaded = load_model(tmp_path)
    assert all(p.dtype == torch.float32 for p in reloaded.parameters())
    # a reload of the same fp16 file is bit-identical
    again = load_model(tmp_path)
    x = _images(model, 1)
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(x), again(x), atol=0, rtol=0)


def test_shared_xception_weights_load_strictly() -> None:
    assert XCEPTION_WEIGHTS.is_file(), XCEPTION_WEIGHTS
    model = create_model("xception_bigru", init_weights=str(XCEPTION_WEIGHTS))
    assert model.init_info["source"] == "file" and model.init_info["strict"] is True
    assert len(model.init_info["sha256"]) == 64
    # strict loading raises on any missing or unexpected key; check the weights really landed
    from safetensors.torch import load_file

    ref = load_file(str(XCEPTION_WEIGHTS))
    torch.testing.assert_close(model.backbone.conv1.weight, ref["conv1.weight"].float())


def test_random_init_is_recorded() -> None:
    assert create_model("mobilenetv3_lstm").init_info == {"source": "random"}


def test_describe_command_prints_every_model() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "training.describe", "--repeats", "1", "--models", "mobilenetv3_lstm"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("mobilenetv3_lstm"))
    assert f" {get_spec('mobilenetv3_lstm').input_size} " in line and "lstm" in line


@pytest.mark.parametrize(
    ("name", "cut"), [("xception_bigru", "block12"), ("effnetb3_bigru", "blocks"), ("mobilenetv3_lstm", "bn1")]
)
def test_cnn_split_composes_to_the_cnn_stage(name: str, cut: str) -> None:
    model = create_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    stem, tail = model.cnn_split(cut)
    with torch.no_grad():
        assert torch.equal(tail(stem(x)), model.forward_cnn(x))
        whole, identity = model.cnn_split(None)
        assert torch.equal(identity(whole(x)), model.forward_cnn(x))
    # the tail's parameters are the backbone's own, so training it trains the model
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in tail.parameters()} <= backbone_ids
    with pytest.raises(ValueError, match="cannot cut"):
        model.cnn_split("global_pool")
