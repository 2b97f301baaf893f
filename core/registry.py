"""The model registry: the one source of truth for each model's architecture and I/O contract.

Archiving, the TorchServe handler and the portal read input size, normalisation and class names
from here (or from the model card written from here into each .mar), never from a second copy.

Normalisation comes from the backbone's pretrained configuration in timm
(:func:`served_model.transforms.data_config`, which needs timm), so it matches the ImageNet weights a
user may load; this module stays torch- and timm-free so the portal can import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

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


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="xception_bigru",
            backbone="legacy_xception",
            pretrained_tag="tf_in1k",
            sequence=SequenceStage(kind="bigru", hidden_size=256, bidirectional=True),
            # 224, not Xception's usual 299: the data set's frames are 224x224, so 299 only upsamples,
            # and 224 costs 1.8x less (the difference between finishing on the 2-core CPU or not).
            input_size=224,
            # Luminance only, standardised per image: class is confounded with acquisition colour (and
            # exposure) in the training data, so the model sees neither (training and serving apply the
            # same served_model.stain.standardize_luminance).
            stain_normalization="luminance",
        ),
        ModelSpec(
            name="effnetb3_bigru",
            version="1.1",  # weights retrained on a GPU (model card: training)
            backbone="efficientnet_b3",
            pretrained_tag="ra2_in1k",
            sequence=SequenceStage(kind="bigru", hidden_size=256, bidirectional=True),
            # 128, not 224: random initialisation, trained on a shared 2-core CPU inside one session.
            input_size=128,
            stain_normalization="luminance",  # luminance only, as xception_bigru (colour confound)
        ),
        ModelSpec(
            name="effnetb3_vit",
            version="1.1",  # weights retrained on a GPU (model card: training)
            backbone="efficientnet_b3",
            pretrained_tag="ra2_in1k",
            sequence=SequenceStage(kind="transformer", hidden_size=256, num_layers=2, num_heads=4),
            # shares effnetb3_bigru's trained CNN stage (frozen), so the same input size and normalisation
            input_size=128,
            stain_normalization="luminance",
        ),
        ModelSpec(
            name="mobilenetv3_lstm",
            version="1.1",  # weights retrained on a GPU (model card: training)
            backbone="mobilenetv3_large_100",
            pretrained_tag="ra_in1k",
            sequence=SequenceStage(kind="lstm", hidden_size=256, bidirectional=False),
            # 128, not 224: trained from random initialisation on a shared 2-core CPU inside one session;
            # at 224 it could not see enough epochs (cells stay 9-15 px across at 128).
            input_size=128,
            stain_normalization="luminance",  # luminance only, as xception_bigru (colour confound)
        ),
    )
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


CELL_REGISTRY: dict[str, CellModelSpec] = {
    spec.name: spec
    for spec in (
        CellModelSpec(
            name="wbc_cells",
            version="2.0",  # blast learned beside the eight normal types
            # the only ImageNet-initialised small backbone available offline (mean = std = 0.5)
            backbone="mobilenetv2_100",
            input_size=128,
        ),
    )
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
