"""Releasing trained models: packing them into TorchServe model archives (:mod:`release.archive`).

Sits above ``handlers/`` (it packs them and reads their runtime choice) and ``training/`` (it renders the
model card documents); neither imports it. An archive carries ``core/``, ``cells/``, ``served_model/`` and
``handlers/``, never ``training/``.
"""

__all__: list[str] = []
