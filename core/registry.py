"""The model registry: each model's architecture and I/O contract, built from the manifest (:mod:`core.manifest`).

Archiving, the TorchServe handler and the portal read input size, normalisation and class names
from here (or from the model card written from here into each .mar), never from a second copy.

Normalisation comes from the backbone's pretrained configuration in timm
(:func:`served_model.transforms.data_config`, which needs timm), so it matches the ImageNet weights a
user may load; this module stays torch- and timm-free so the portal can import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from core import manifest

__all__ = [
    "CLASS_NAMES",
    "CLASS_DESCRIPTIONS",
    "BENIGN_INDEX",
    "SequenceStage",
    "ModelSpec",
    "REGISTRY",
    "get_spec",
    "model_names",
    "CELL_CLASSES",
    "LEUKOCYTE_CLASSES",
    "CELL_DESCRIPTIONS",
    "CellModelSpec",
    "CELL_REGISTRY",
    "get_cell_spec",
    "cell_model_names",
    "served_model_names",
]

#: Output classes, in logit order. Short names are the folder names of the public data set.
CLASS_NAMES: tuple[str, ...] = ("Benign", "Early", "Pre", "Pro")
CLASS_DESCRIPTIONS: dict[str, str] = {
    "Benign": "Benign (hematogones)",
    "Early": "Early Pre-B ALL",
    "Pre": "Pre-B ALL",
    "Pro": "Pro-B ALL",
}
BENIGN_INDEX = CLASS_NAMES.index("Benign")

SequenceKind = Literal["bigru", "lstm", "transformer"]


@dataclass(frozen=True)
class SequenceStage:
    """The sequence model that reads the CNN's grid of spatial tokens."""

    kind: SequenceKind
    hidden_size: int = 256  # per direction for recurrent stages; model width for transformer
    num_layers: int = 1
    bidirectional: bool = False
    num_heads: int = 4  # transformer only
    mlp_ratio: float = 2.0  # transformer only
    dropout: float = 0.1


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build a model and to feed it correctly."""

    name: str
    backbone: str  # timm model name
    pretrained_tag: str  # timm pretrained tag whose config gives normalisation
    sequence: SequenceStage
    input_size: int  # square side in pixels: the whole frame is resized (squashed) to this
    version: str = "1.0"
    classes: tuple[str, ...] = CLASS_NAMES
    token_dim: int = 256  # CNN channels are projected to this width before the sequence stage
    head_dropout: float = 0.2
    # None, "reinhard", "grayscale" or "luminance" (see served_model.stain.get_normalizer)
    stain_normalization: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def timm_name(self) -> str:
        return f"{self.backbone}.{self.pretrained_tag}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d


#: The frame classifiers, from the manifest (core.manifest: why each input size and normalisation).
REGISTRY: dict[str, ModelSpec] = {
    e.name: ModelSpec(
        name=e.name,
        version=e.version,
        backbone=e.backbone,
        pretrained_tag=e.pretrained_tag,
        sequence=SequenceStage(**e.sequence),
        input_size=e.input_size,
        stain_normalization=e.stain_normalization,
    )
    for e in manifest.entries("frame")
}


def model_names() -> list[str]:
    """The frame classifiers (leukemia models); :func:`served_model_names` adds the cell-level model."""
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(REGISTRY)}") from None


# -- cell-level model ----------------------------------------------------------------------------

#: Cell types the cell-level model tells apart, in logit order: the eight classes of the PBC data set
#: (Acevedo et al. 2020), then blast. Red cells are not typed (they are not listed in answers at all).
CELL_CLASSES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
    "blast",
)
#: The white-cell (leukocyte) types: the differential's percentages are of these (plus white cells not yet
#: typed), as in a manual 100-cell differential; nucleated red cells (erythroblasts) are reported per 100
#: white cells and platelets as a count, never in the white-cell denominator.
LEUKOCYTE_CLASSES: tuple[str, ...] = tuple(c for c in CELL_CLASSES if c not in ("erythroblast", "platelet"))
CELL_DESCRIPTIONS: dict[str, str] = {
    "basophil": "Basophil",
    "eosinophil": "Eosinophil",
    "erythroblast": "Erythroblast (nucleated red cell)",
    "ig": "Immature granulocyte (promyelocyte, myelocyte, metamyelocyte)",
    "lymphocyte": "Lymphocyte",
    "monocyte": "Monocyte",
    "neutrophil": "Neutrophil",
    "platelet": "Platelet",
    "blast": "Blast",
}


@dataclass(frozen=True)
class CellModelSpec:
    """The cell-level model: a classical cell finder (:mod:`cells.segment`) and a CNN typing each crop."""

    name: str
    backbone: str  # timm model name of the cell typer
    input_size: int  # square side of a cell crop fed to the typer
    version: str = "1.0"
    classes: tuple[str, ...] = CELL_CLASSES
    #: crop = the cell's box grown by this fraction of its side on every side (context, as the PBC crops)
    crop_margin: float = 0.25
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


#: The cell-level model(s), from the manifest.
CELL_REGISTRY: dict[str, CellModelSpec] = {
    e.name: CellModelSpec(name=e.name, version=e.version, backbone=e.backbone, input_size=e.input_size)
    for e in manifest.entries("cell")
}


def get_cell_spec(name: str) -> CellModelSpec:
    try:
        return CELL_REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown cell model {name!r}; registered: {', '.join(CELL_REGISTRY)}") from None


def cell_model_names() -> list[str]:
    return list(CELL_REGISTRY)


def served_model_names() -> list[str]:
    """Every model TorchServe serves: the four frame classifiers, then the cell-level model(s)."""
    return model_names() + cell_model_names()
