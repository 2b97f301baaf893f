"""Run one model archive's own handler, as TorchServe would, on a few real frames; print its answers.

``python tests/release/served_answers.py <model.mar> <image> ...`` unpacks the archive, puts the unpacked
directory first on ``sys.path`` (TorchServe's model directory), imports the handler from there (the
archive's code, not the tree's), initialises it and answers each image as one request row. Prints one JSON
object: image name -> answer, with timings and the runtime's self-description left out.
Run in a fresh interpreter (the test does), so that no tree module shadows the archive's.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

#: keys whose values vary run to run (wall times) rather than with the model's answer
VOLATILE = ("ms", "latency", "elapsed", "seconds", "timing", "timings")


class _Context:
    def __init__(self, model_dir: str) -> None:
        self.system_properties = {"model_dir": model_dir}
        self.status: dict[int, int] = {}

    def get_request_header(self, idx: int, name: str) -> None:
        return None

    def set_response_content_type(self, idx: int, value: str) -> None:
        pass

    def set_response_status(self, code: int, phrase: str, idx: int) -> None:
        self.status[idx] = code


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if not any(k == w or k.endswith("_" + w) for w in VOLATILE)}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def main(mar: str, images: list[str]) -> int:
    paths = [Path(p).resolve() for p in images]
    mar = str(Path(mar).resolve())
    with tempfile.TemporaryDirectory(prefix="served-answers-") as tmp:
        with zipfile.ZipFile(mar) as z:
            z.extractall(tmp)
            handler_file = json.loads(z.read("MAR-INF/MANIFEST.json"))["model"]["handler"]
        sys.path.insert(0, tmp)
        os.chdir(tmp)
        module = importlib.import_module(Path(handler_file).stem)
        for name in ("core", "handlers"):  # the archive's code, never the tree's
            assert str(Path(sys.modules[name].__file__ or "").resolve()).startswith(str(Path(tmp).resolve())), name
        cls = next(v for k, v in vars(module).items() if k.endswith("Handler") and isinstance(v, type))
        handler = cls()
        context = _Context(tmp)
        handler.initialize(context)
        out = {}
        for path in paths:
            body = handler.handle([{"body": path.read_bytes()}], context)[0]
            out[path.name] = {"status": context.status[0], "answer": _stable(json.loads(body))}
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2:]))
