"""Where things are: the repository root, once for every test and support module."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root (the folder holding api/, operator/, trainer/, tests/)."""
