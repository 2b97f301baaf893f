"""Training-curve parsing and plotting from a train.log with a restart and a resume."""

from __future__ import annotations

from pathlib import Path

from training.curves import plot_training_curves, read_epochs

LOG = """\
2026-11-21 20:54:01 model=m recipe=end2end init=random device=cpu train=10 val=5
2026-11-21 20:55:00 {"epoch": 1, "train_loss": 2.0, "val_orig_macro_f1": 0.2}
2026-11-21 20:56:00 {"epoch": 2, "train_loss": 1.5, "val_orig_macro_f1": 0.3}
2026-11-21 20:57:00 {"epoch": 3, "train_loss": 1.4, "val_orig_macro_f1": 0.3}
2026-11-21 21:28:27 model=m recipe=end2end init=random device=cpu train=10 val=5
2026-11-21 21:29:00 {"epoch": 1, "train_loss": 1.9, "val_orig_macro_f1": 0.4}
2026-11-21 21:30:00 {"epoch": 2, "train_loss": 1.1, "val_orig_macro_f1": 0.6}
2026-11-21 21:31:00 model=m resumed from checkpoint
2026-11-21 21:32:00 {"epoch": 3, "train_loss": 0.8, "val_orig_macro_f1": 0.7}
2026-11-21 21:33:00 saved artifacts/m/model (fp16); wall 100s
"""


def test_read_epochs_keeps_the_last_run_and_its_resume(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text(LOG)
    epochs = read_epochs(log)
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert [e["train_loss"] for e in epochs] == [1.9, 1.1, 0.8]


def test_plot_written_only_when_there_are_epochs(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text(LOG)
    out = tmp_path / "curve.png"
    assert plot_training_curves(log, "m", out) and out.read_bytes().startswith(b"\x89PNG")
    empty = tmp_path / "empty.log"
    empty.write_text("2026-11-21 model=m\n")
    assert not plot_training_curves(empty, "m", tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
