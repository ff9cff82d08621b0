"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder: $FEDAUDIT_DATA_DIR, else ../shared/data next to the repo."""
    path = Path(os.environ.get("FEDAUDIT_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path}; set FEDAUDIT_DATA_DIR")
    return path


#: A GPT-2-architecture classifier small enough for unit tests (the real GPT-2 tokenizer).
TINY_GPT2 = ["model.name=gpt2-random", "model.config={n_layer=1, n_embd=64, n_head=2}"]
#: A BERT-architecture classifier (head with a bias) over the MiniLM WordPiece vocabulary.
TINY_BERT = [
    "model.name=bert-random",
    "model.config={num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=2}",
]


@pytest.fixture(scope="session")
def cola_path(data_dir: Path) -> Path:
    return data_dir / "text" / "cola" / "in_domain_train.tsv"


def run_cli(*args: str, timeout: float = 600, **kwargs):
    """Run the installed ``fedaudit`` console script; returns the CompletedProcess."""
    import shutil
    import subprocess
    import sys

    exe = shutil.which("fedaudit") or str(Path(sys.executable).parent / "fedaudit")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, **kwargs)


@pytest.fixture
def flower_identity(monkeypatch):
    """The task identity Flower's Message needs outside a running app."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_node_id", 1, raising=False)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1, raising=False)
