#!/usr/bin/env python
"""Django's command-line utility for the leukemia portal (run from anywhere; the repo root goes on sys.path)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def main() -> None:
    repo = str(Path(__file__).resolve().parent.parent)
    if repo not in sys.path:
        sys.path.insert(0, repo)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.config.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
