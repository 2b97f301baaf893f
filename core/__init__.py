"""The product's torch-free core: what the models, the handler and the portal must agree on.

Imported by ``training/``, ``handlers/`` and ``portal/``; needs only NumPy and Pillow (never torch,
timm or Django), so the portal (web and job workers) runs without torch.

- :mod:`core.errors`: the inference contract's error codes and their HTTP statuses;
- :mod:`core.decode`: image limits and the one decoder/validator (the handler and portal uploads);
- :mod:`core.prediction`, :mod:`core.cell_answer`: the answers (``FramePrediction``, ``CellAnswer``): built by
  the handlers, written as the contract's JSON, parsed and checked by the portal (:mod:`core.contract`);
- :mod:`core.manifest`: each served model's facts, from which :mod:`core.registry` and the serving
  configuration (``make manifests``) are written.

The public contract these implement is docs/guides/serving.md.
"""

__all__: list[str] = []
