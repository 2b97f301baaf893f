"""Block-wise split: no block on both sides, duplicates together, deterministic, stratified; own copies work."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from core.registry import CLASS_NAMES
from tests.conftest import DATA_ALL4
from training.data import DataError, block_of, load_samples, split_samples

ROOT = DATA_ALL4 / "original"


@pytest.fixture(scope="module")
def samples():  # type: ignore[no-untyped-def]
    return load_samples(ROOT)


def test_manifest_is_used(samples) -> None:  # type: ignore[no-untyped-def]
    assert len(samples) == 2523
    assert {s.class_name for s in samples} == set(CLASS_NAMES)
    assert all(s.block.startswith(s.class_name + "-") for s in samples)


def test_no_block_on_both_sides_and_duplicates_together(samples) -> None:  # type: ignore[no-untyped-def]
    split = split_samples(samples)
    train_blocks = {s.block for s in split.train}
    val_blocks = {s.block for s in split.val}
    assert not train_blocks & val_blocks
    assert len(split.train) + len(split.val) == len(samples)
    md5_train = {s.md5 for s in split.train}
    md5_val = {s.md5 for s in split.val}
    assert not md5_train & md5_val
    dups = [m for m, c in Counter(s.md5 for s in samples).items() if c > 1]
    assert len(dups) >= 30  # the data set has about 40 exact-duplicate pairs


def test_deterministic_and_seed_dependent(samples) -> None:  # type: ignore[no-untyped-def]
    a, b = split_samples(samples, seed=0), split_samples(list(reversed(samples)), seed=0)
    assert [s.relpath for s in a.val] == [s.relpath for s in b.val]
    c = split_samples(samples, seed=1)
    assert [s.relpath for s in a.val] != [s.relpath for s in c.val]


def test_stratified(samples) -> None:  # type: ignore[no-untyped-def]
    split = split_samples(samples, val_fraction=0.2)
    total = Counter(s.label for s in samples)
    val = Counter(s.label for s in split.val)
    for label, n in total.items():
        assert 0.1 <= val[label] / n <= 0.3, (CLASS_NAMES[label], val[label], n)


def test_block_rule_matches_manifest(samples) -> None:  # type: ignore[no-untyped-def]
    assert all(block_of(s.class_name, s.path.name) == s.block for s in samples)


def test_own_copy_without_manifest(tmp_path: Path, samples) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "mydata"
    for c in CLASS_NAMES:
        (root / c).mkdir(parents=True)
    chosen = [s for s in samples if int(s.path.stem.rsplit("-", 1)[-1]) <= 120]
    for s in chosen:
        shutil.copy(s.path, root / s.relpath)
    (root / "Benign" / "notes.txt").write_text("not an image")
    # an exact duplicate far from its original: the two blocks must stay on one side
    shutil.copy(root / "Pro" / "WBC-Malignant-Pro-001.jpg", root / "Pro" / "WBC-Malignant-Pro-070b.jpg")
    own = load_samples(root)
    assert len(own) == len(chosen) + 1
    blocks = {s.relpath: s.block for s in own}
    assert {r: blocks[r] for r in (s.relpath for s in chosen)} == {s.relpath: s.block for s in chosen}
    assert blocks["Pro/WBC-Malignant-Pro-070b.jpg"] == "Pro-002"
    split = split_samples(own, val_fraction=0.25)
    val_md5 = {s.md5 for s in split.val}
    assert not val_md5 & {s.md5 for s in split.train}
    assert not {s.block for s in split.val} & {s.block for s in split.train}
    assert {s.label for s in split.val} == set(range(4))


def test_bad_layout_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_samples(tmp_path / "nope")
    (tmp_path / "Benign").mkdir()
    with pytest.raises(DataError, match="lacks class folder"):
        load_samples(tmp_path)
