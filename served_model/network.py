"""Hybrid CNN + sequence classifiers.

Each model is a timm CNN that turns the image into a grid of feature vectors, a projection of
each grid cell to a token, a sequence stage that reads the tokens in raster order (bidirectional
GRU, LSTM, or a transformer encoder with a class token and learned position embeddings), pooling,
and a linear classifier. The split follows timm: :meth:`HybridClassifier.forward_features`
returns the sequence stage's output tokens, :meth:`HybridClassifier.forward_head` pools and
classifies (``pre_logits=True`` returns the pooled features), :meth:`forward` does both.
:meth:`HybridClassifier.forward_cnn` exposes the CNN feature map (used for Grad-CAM).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from core.registry import ModelSpec, SequenceStage, get_spec
from served_model.provenance import file_sha256

__all__ = [
    "HybridClassifier",
    "create_model",
    "load_backbone_weights",
    "save_model",
    "load_model",
    "count_parameters",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
]

WEIGHTS_FILE = "weights.safetensors"
CONFIG_FILE = "model_config.json"


class _RecurrentStage(nn.Module):
    """GRU or LSTM over the token sequence; output (B, N, D) with D = hidden * directions."""

    def __init__(self, stage: SequenceStage, in_dim: int) -> None:
        super().__init__()
        rnn_cls = nn.GRU if stage.kind == "bigru" else nn.LSTM
        self.rnn = rnn_cls(
            input_size=in_dim,
            hidden_size=stage.hidden_size,
            num_layers=stage.num_layers,
            batch_first=True,
            bidirectional=stage.bidirectional,
            dropout=stage.dropout if stage.num_layers > 1 else 0.0,
        )
        self.out_dim = stage.hidden_size * (2 if stage.bidirectional else 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(tokens)
        return out

    def pool(self, seq: torch.Tensor) -> torch.Tensor:
        # Mean over tokens: every grid cell contributes, independent of scan direction.
        return seq.mean(dim=1)


class _TransformerStage(nn.Module):
    """Hybrid ViT: class token + learned position embeddings + pre-norm transformer encoder."""

    def __init__(self, stage: SequenceStage, in_dim: int, grid: int) -> None:
        super().__init__()
        width = stage.hidden_size
        self.grid = grid
        self.in_proj = nn.Identity() if in_dim == width else nn.Linear(in_dim, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=stage.num_heads,
            dim_feedforward=int(width * stage.mlp_ratio),
            dropout=stage.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=stage.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out_dim = width

    def _pos_embed(self, n_tokens: int) -> torch.Tensor:
        if n_tokens == self.grid * self.grid:
            return self.pos_embed
        # Another input size: resample the grid part of the position embedding (as timm does).
        side = int(math.isqrt(n_tokens))
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid_pos = grid_pos.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(grid_pos, size=(side, side), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, grid_pos.permute(0, 2, 3, 1).reshape(1, side * side, -1)], dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(tokens)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self._pos_embed(tokens.shape[1])
        return self.norm(self.encoder(x))

    def pool(self, seq: torch.Tensor) -> torch.Tensor:
        return seq[:, 0]


#: backbone children where the feature map ends (pooling and classifier); what follows is head
_NON_FEATURE_CHILDREN = frozenset({"global_pool", "fc", "classifier", "head", "head_drop", "flatten"})


class _CNNStage(nn.Module):
    """``model.forward_cnn`` as a module (the uncut stem)."""

    def __init__(self, model: HybridClassifier) -> None:
        super().__init__()
        self.backbone = model.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)


class HybridClassifier(nn.Module):
    """CNN feature grid -> tokens -> sequence stage -> pooled features -> classifier."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = spec.num_classes
        backbone: Any = timm.create_model(spec.backbone, pretrained=False, num_classes=0, global_pool="")
        self.backbone = backbone
        cnn_dim = int(backbone.num_features)
        self.token_proj = nn.Sequential(nn.Linear(cnn_dim, spec.token_dim), nn.LayerNorm(spec.token_dim))
        if spec.sequence.kind == "transformer":
            reduction = int(backbone.feature_info[-1]["reduction"])
            grid = math.ceil(spec.input_size / reduction)
            self.sequence: _RecurrentStage | _TransformerStage = _TransformerStage(spec.sequence, spec.token_dim, grid)
        else:
            self.sequence = _RecurrentStage(spec.sequence, spec.token_dim)
        self.num_features = self.sequence.out_dim
        self.head_drop = nn.Dropout(spec.head_dropout)
        self.head = nn.Linear(self.num_features, spec.num_classes)
        self.init_info: dict[str, Any] = {"source": "random"}

    # -- timm-style API ----------------------------------------------------------------------
    def forward_cnn(self, x: torch.Tensor) -> torch.Tensor:
        """The CNN stage's feature map, (B, C, H, W)."""
        return self.backbone.forward_features(x)

    def cnn_split(self, after: str | None) -> tuple[nn.Module, nn.Module]:
        """The CNN stage cut after the backbone child ``after``: ``(stem, tail)``, with
        ``tail(stem(x)) == forward_cnn(x)``; ``None`` gives (the whole CNN stage, identity).

        For training on cached maps with the last blocks fine-tuned: the frozen stem's output is
        cached, the tail trains. The modules are the backbone's own (shared, not copied). Valid for
        backbones whose ``forward_features`` runs their children in order (legacy_xception,
        efficientnet_b3; tests check the identity).
        """
        if after is None:
            return _CNNStage(self), nn.Identity()
        names: list[str] = []
        for n, _ in self.backbone.named_children():
            if n in _NON_FEATURE_CHILDREN:  # pooling / classifier: the feature map ends here
                break
            names.append(n)
        if after not in names[:-1]:
            raise ValueError(f"cannot cut {self.spec.backbone} after {after!r}; children: {', '.join(names)}")
        i = names.index(after) + 1
        children = dict(self.backbone.named_children())
        return (
            nn.Sequential(*(children[n] for n in names[:i])),
            nn.Sequential(*(children[n] for n in names[i:])),
        )

    def tokens_from_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """Grid cells in raster order, projected: (B, H*W, token_dim)."""
        return self.token_proj(fmap.flatten(2).transpose(1, 2))

    def forward_sequence(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.sequence(self.tokens_from_map(fmap))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Sequence-stage output tokens, (B, N, D)."""
        return self.forward_sequence(self.forward_cnn(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = self.sequence.pool(x)
        if pre_logits:
            return pooled
        return self.head(self.head_drop(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()  # type: ignore[assignment]

    def sequence_parameters(self) -> list[nn.Parameter]:
        """Everything after the CNN stage (token projection, sequence stage, head)."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]


def load_backbone_weights(model: HybridClassifier, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a timm backbone state dict (safetensors, any float dtype) strictly into the CNN stage."""
    from safetensors.torch import load_file

    path = Path(path)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.backbone.load_state_dict(state, strict=True)
    info = {"source": "file", "path": path.name, "sha256": file_sha256(path), "strict": True}
    model.init_info = info
    return info


def create_model(name: str | ModelSpec, init_weights: str | None = None) -> HybridClassifier:
    """Build a registered model.

    ``init_weights``: ``None`` or ``"random"`` for random initialisation, ``"hub"`` for timm's
    ImageNet weights (needs network access to the model hub), or a path to a safetensors file
    with the backbone's state dict (e.g. ``../shared/weights/legacy_xception...safetensors``).
    The choice is recorded in ``model.init_info`` for the model card.
    """
    spec = get_spec(name) if isinstance(name, str) else name
    model = HybridClassifier(spec)
    if init_weights in (None, "random"):
        model.init_info = {"source": "random"}
    elif init_weights == "hub":
        hub = timm.create_model(spec.timm_name, pretrained=True, num_classes=0, global_pool="")
        model.backbone.load_state_dict(hub.state_dict(), strict=True)
        model.init_info = {"source": "hub", "timm_name": spec.timm_name}
    else:
        load_backbone_weights(model, init_weights)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(
    model: HybridClassifier,
    directory: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``weights.safetensors`` (state dict in ``dtype``) and ``model_config.json``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    config = {"spec": model.spec.to_dict(), "init": model.init_info, "dtype": str(dtype).removeprefix("torch.")}
    config.update(extra or {})
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def spec_from_dict(d: dict[str, Any]) -> ModelSpec:
    d = dict(d)
    d["sequence"] = SequenceStage(**d["sequence"])
    d["classes"] = tuple(d["classes"])
    return ModelSpec(**d)


def load_model(directory: str | os.PathLike[str], map_location: str = "cpu") -> HybridClassifier:
    """Rebuild a model written by :func:`save_model`; weights are cast to float32; eval mode."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = json.loads((directory / CONFIG_FILE).read_text())
    model = HybridClassifier(spec_from_dict(config["spec"]))
    state = {k: v.float() for k, v in load_file(str(directory / WEIGHTS_FILE), device=map_location).items()}
    model.load_state_dict(state, strict=True)
    model.init_info = config.get("init", {})
    return model.eval()
