"""Torch-free white-cell finder: locates, outlines and measures the white cells (and platelets) of a smear image.

The typer (``training.cell_typer``) labels what this package finds; the handler glues the two together.
"""

from cells.segment import FoundCell, find_cells, segment_masks

__all__ = ["FoundCell", "find_cells", "segment_masks"]
