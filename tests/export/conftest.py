"""Fixtures of the export tests: the four micro variants saved as model directories."""

from __future__ import annotations

import pytest
from export_helpers import VARIANTS, make_model_dir


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """{variant: (model dir, config, params)}, every head, perturbed random weights."""
    root = tmp_path_factory.mktemp("models")
    return {v: make_model_dir(root, v) for v in VARIANTS}


@pytest.fixture(scope="session")
def sentences(tmp_path_factory):
    """A text file of 60 lines of vocabulary words, of varied lengths (so with padding)."""
    path = tmp_path_factory.mktemp("data") / "sentences.txt"
    lines = [" ".join(f"w{(7 * i + 3 * j) % 1500}" for j in range(3 + i % 19)) for i in range(60)]
    path.write_text("\n".join(lines) + "\n")
    return path
