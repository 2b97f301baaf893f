"""The per-model manifest: each served model's facts, written once.

Name, version, stage (a frame classifier or the cell-level model), CNN and sequence stage, input size,
the forward runtime it serves with, TorchServe's batching and workers, KServe's scaling, its archive
and handler, and (frame models) its training recipe. Read by :mod:`core.registry` (the architectures),
:mod:`handlers.backends` (the runtimes), :mod:`training.recipes` (the recipes) and ``mk/training.mk``
(``python -m core.manifest cell``: the cell-level models); :mod:`serving.manifests` writes from it the
``models`` section of docker/torchserve/config.properties and the KServe InferenceServices
(docker/k8s/base/kserve-models.yaml, docker/k8s/overlays/torchserve-runtime/kustomization.yaml):
``make manifests`` after an edit here (tests/core/test_manifest.py fails while a generated file is stale).

Plain data, standard library only: the portal and the archives import it (an edit here changes the
archives' packed code too: ``make repack``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from core.paths import WEIGHTS

__all__ = ["Stage", "Batching", "Scaling", "ModelEntry", "MODELS", "entries", "get_entry", "names"]

Stage = Literal["frame", "cell"]
HANDLERS: dict[str, str] = {"frame": "handlers/leukemia_handler.py", "cell": "handlers/cells_handler.py"}


@dataclass(frozen=True)
class Batching:
    """TorchServe's per-model settings (``models`` in config.properties)."""

    batch_size: int
    max_batch_delay_ms: int
    workers: int = 1  # minWorkers = maxWorkers
    response_timeout_s: int = 120


@dataclass(frozen=True)
class Scaling:
    """The model's KServe InferenceService: replicas and the concurrency each replica is scaled on."""

    max_replicas: int
    scale_target: int  # requests in flight per replica
    container_concurrency: int
    #: why ``scale_target``: one line is written after it in the manifest, several above it
    note: tuple[str, ...] = ()
    min_replicas: int = 1
    timeout_s: int = 120


@dataclass(frozen=True)
class ModelEntry:
    """One served model."""

    name: str
    version: str
    stage: Stage
    backbone: str  # timm model name of the CNN stage (the cell typer's, for the cell model)
    input_size: int  # square side in pixels fed to the CNN (a frame squashed to it, or a cell crop)
    batching: Batching
    scaling: Scaling
    pretrained_tag: str = ""  # frame models: timm pretrained tag whose config gives normalisation
    #: frame models: the sequence stage reading the CNN's grid of tokens (core.registry.SequenceStage fields)
    sequence: Mapping[str, Any] = field(default_factory=dict)
    stain_normalization: str | None = None  # frame models: see core.registry.ModelSpec
    runtime: str = "eager"  # forward pass runtime (handlers.backends; bench.runtimes measured it)
    #: frame models: training.recipes.Recipe fields (``make train-all``; the cards' training sections)
    recipe: Mapping[str, Any] | None = None

    @property
    def archive(self) -> str:
        """The archive's file name in the model store."""
        return f"{self.name}.mar"

    @property
    def handler(self) -> str:
        """The TorchServe handler that serves it (path in the repository)."""
        return HANDLERS[self.stage]

    @property
    def service(self) -> str:
        """Its KServe InferenceService name (a DNS label)."""
        return self.name.replace("_", "-")


# batchSize / maxBatchDelay for the frame classifiers: chosen with bench/ (docs/results/benchmarks.md,
# docs/results/torchserve_config.md, docs/guides/deployment.md): batch 4; a single request waits at most 1 ms for
# batch-mates (5 ms before), under load a batch fills from requests already queued. Paired with in-process,
# TorchServe added 4-7 ms to a single request with 1 ms and 7-8 ms with 5 ms (every model, 2026-11-23
# sweep). Not 0: TorchServe 0.12 then added about 106 ms to a single request (an earlier sweep).
# mobilenetv3_lstm, whose forward pass is the shortest (3 ms per image), waits 2 ms: in 8 alternating
# runs each (2026-11-24, docs/guides/deployment.md) 2 ms gave TorchServe
# 0.87-1.02 (median 0.905) of in-process images/s at 8 in flight against 0.82-0.96 (median 0.864) with 1 ms,
# for 4.2-4.9 ms added to a single request against 3.1-3.6 ms.
# wbc_cells takes batchSize 1: its handler analyses one frame per request (find the cells, type each
# crop), and frames hold a variable number of cells, so requests are not batched together.
# KServe scaling: the concurrency sweep in docs/results/benchmarks.md.
MODELS: tuple[ModelEntry, ...] = (
    ModelEntry(
        name="xception_bigru",
        version="1.0",
        stage="frame",
        backbone="legacy_xception",
        pretrained_tag="tf_in1k",
        sequence={"kind": "bigru", "hidden_size": 256, "bidirectional": True},
        # 224, not Xception's usual 299: the data set's frames are 224x224, so 299 only upsamples,
        # and 224 costs 1.8x less (the difference between finishing on the 2-core CPU or not).
        input_size=224,
        # Luminance only, standardised per image: class is confounded with acquisition colour (and
        # exposure) in the training data, so the model sees neither (training and serving apply the
        # same served_model.stain.standardize_luminance).
        stain_normalization="luminance",
        runtime="onnxruntime",
        batching=Batching(batch_size=4, max_batch_delay_ms=1),
        scaling=Scaling(
            max_replicas=6,
            scale_target=2,
            container_concurrency=8,
            note=("Xception saturates one core at about 6 images/s: 2 requests in flight per replica",),
        ),
        # ImageNet Xception: stem (up to block12) frozen and cached, conv3/conv4 fine-tuned with the head
        recipe={
            "kind": "cached",
            "init_weights": str(WEIGHTS / "legacy_xception.keras_in1k.backbone.fp16.safetensors"),
            "epochs": 12,
            "lr": 1e-3,
            "finetune_after": "block12",
            "shipped_on": "CPU, 2 cores: 17 min of feature caching, then 12 epochs",
        },
    ),
    ModelEntry(
        name="effnetb3_bigru",
        version="1.1",  # weights retrained on a GPU (model card: training)
        stage="frame",
        backbone="efficientnet_b3",
        pretrained_tag="ra2_in1k",
        sequence={"kind": "bigru", "hidden_size": 256, "bidirectional": True},
        # 128, not 224: random initialisation, trained on a shared 2-core CPU inside one session.
        input_size=128,
        stain_normalization="luminance",  # luminance only, as xception_bigru (colour confound)
        runtime="onnxruntime",
        batching=Batching(batch_size=4, max_batch_delay_ms=1),
        scaling=Scaling(
            max_replicas=4,
            scale_target=8,
            container_concurrency=32,
            note=("throughput rises to c=8 (about 24 images/s per replica), p50 about 0.33 s",),
        ),
        # random init, domain-pretrained on the PBC cell types first
        recipe={
            "kind": "end2end",
            "init_weights": "random",
            "epochs": 200,
            "lr": 3e-3,
            "max_minutes": 6.0,
            "val_every": 5,
            "pretrain_data": "pbc",
            "pretrain_epochs": 10,
            "shipped_on": "one NVIDIA H100 (3 data workers): the time box ended it at epoch 64",
        },
    ),
    ModelEntry(
        name="effnetb3_vit",
        version="1.1",  # weights retrained on a GPU (model card: training)
        stage="frame",
        backbone="efficientnet_b3",
        pretrained_tag="ra2_in1k",
        sequence={"kind": "transformer", "hidden_size": 256, "num_layers": 2, "num_heads": 4},
        # shares effnetb3_bigru's trained CNN stage (frozen), so the same input size and normalisation
        input_size=128,
        stain_normalization="luminance",
        runtime="onnxruntime",
        batching=Batching(batch_size=4, max_batch_delay_ms=1),
        scaling=Scaling(max_replicas=4, scale_target=8, container_concurrency=32, note=("as effnetb3_bigru",)),
        # effnetb3_bigru's trained CNN stage, the whole model fine-tuned (train effnetb3_bigru first)
        recipe={
            "kind": "end2end",
            "init_weights": "model:effnetb3_bigru",
            "epochs": 300,
            "lr": 1e-3,
            "max_minutes": 7.6,
            "val_every": 5,
            "shipped_on": (
                "one NVIDIA H100 (5 data workers), from a plain effnetb3_bigru run (no PBC pretraining); the time box "
                "ended it at epoch 67"
            ),
        },
    ),
    ModelEntry(
        name="mobilenetv3_lstm",
        version="1.1",  # weights retrained on a GPU (model card: training)
        stage="frame",
        backbone="mobilenetv3_large_100",
        pretrained_tag="ra_in1k",
        sequence={"kind": "lstm", "hidden_size": 256, "bidirectional": False},
        # 128, not 224: trained from random initialisation on a shared 2-core CPU inside one session;
        # at 224 it could not see enough epochs (cells stay 9-15 px across at 128).
        input_size=128,
        stain_normalization="luminance",  # luminance only, as xception_bigru (colour confound)
        runtime="onnxruntime",
        batching=Batching(batch_size=4, max_batch_delay_ms=2),
        scaling=Scaling(
            max_replicas=3, scale_target=8, container_concurrency=32, note=("about 50 images/s per replica at c=8",)
        ),
        recipe={
            "kind": "end2end",
            "init_weights": "random",
            "epochs": 300,
            "lr": 3e-3,
            "max_minutes": 7.6,
            "val_every": 5,
            "shipped_on": "one NVIDIA H100 (5 data workers): the time box ended it at epoch 84",
        },
    ),
    ModelEntry(
        name="wbc_cells",
        version="2.0",  # blast learned beside the eight normal types
        stage="cell",
        # the only ImageNet-initialised small backbone available offline (mean = std = 0.5)
        backbone="mobilenetv2_100",
        input_size=128,
        batching=Batching(batch_size=1, max_batch_delay_ms=5),
        scaling=Scaling(
            max_replicas=4,
            scale_target=2,
            container_concurrency=8,
            note=(
                "One frame per request (batchSize 1): find the cells, then type each crop, so a request costs more",
                "than a frame classifier's and grows with the cells in the frame. Not benchmarked yet: start as",
                "xception_bigru (2 in flight per replica) until bench/ measures it.",
            ),
        ),
    ),
)


def entries(stage: Stage | None = None) -> list[ModelEntry]:
    """Every served model (the frame classifiers, then the cell-level model), or those of one stage."""
    return [e for e in MODELS if stage is None or e.stage == stage]


def names(stage: Stage | None = None) -> list[str]:
    return [e.name for e in entries(stage)]


def get_entry(name: str) -> ModelEntry:
    for entry in MODELS:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown model {name!r}; in the manifest: {', '.join(names())}")


if __name__ == "__main__":  # `python -m core.manifest [frame|cell]`: the names, for make
    stage = sys.argv[1] if len(sys.argv) > 1 else None
    if stage not in (None, "frame", "cell"):
        raise SystemExit("usage: python -m core.manifest [frame|cell]")
    print(" ".join(names(stage)))  # type: ignore[arg-type]
