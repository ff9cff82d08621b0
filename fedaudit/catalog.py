"""What ``fedaudit list`` shows and ``fedaudit attack --help`` names, without importing torch.

The attack registry and the model zoo load torch and transformers (seconds); listing them should
not. So the names and what each one needs are kept here, in words, and tests hold them equal to
``fedaudit.attacks.REGISTRY`` and ``fedaudit.models.ZOO_NAMES`` (tests/test_cli_ux.py).
"""

from __future__ import annotations

import re
from pathlib import Path

#: Every registered attack, in the registry's (alphabetical) order, with what its ``applicable()`` checks.
ATTACKS = {
    "dager": "a GPT-2, LLaMA or BERT-family transformer whose first two attention layers train (or carry "
    "LoRA factors); a classifier needs at least 3 layers",
    "dlg": "image or table inputs and an exact gradient (FedSGD, or FedAvg with one local SGD step)",
    "embedding-rows": "a text model whose token embeddings train and are not tied to the output layer",
    "idlg": "what dlg needs, and a head the labels attack can read",
    "ig": "image or table inputs and an exact gradient (FedSGD, or FedAvg with one local SGD step)",
    "labels": "a classifier whose head trains; a batch of more than 1 needs a head with a bias",
    "spear": "a trainable fully connected layer with a bias, followed by ReLU (audit.spear.layer picks which)",
    "tag": "a text classifier with a trainable position-embedding table (GPT-2, BERT) and an exact gradient",
}

#: Every zoo name (``model.name``), with what building it needs; any other Hugging Face id or
#: local folder loads through ``from_pretrained``.
MODELS = {
    "gpt2-random": "GPT-2 architecture, random init (model.config sets its size); offline",
    "gpt2": "pretrained GPT-2 from the Hugging Face hub: network access",
    "llama-random": "LLaMA architecture (RMSNorm, rotary positions), random init; offline",
    "bert-random": "BERT architecture, random init, MiniLM's WordPiece vocabulary: make setup-models",
    "minilm-l6": "pretrained MiniLM-L6 encoder (BERT family), offline: make setup-models",
    "smollm2-135m": "pretrained SmolLM2-135M decoder (LLaMA family, GGUF), offline: make setup-models",
    "mlp": "a fully connected ReLU network for image or table data (model.config: hidden, bias)",
    "cnn": "DLG's LeNet for images: three 5x5 convolutions (model.config: activation, init, ...)",
}

#: The ready scenarios shipped beside the package.
SCENARIOS_DIR = Path(__file__).resolve().parent.parent / "simulations"
#: Longest description ``fedaudit list scenarios`` prints (the first sentence of the file's comment).
DESCRIPTION_CHARS = 110


#: What ``fedaudit list`` shows, each with the line printed above it.
LISTINGS = {
    "attacks": "Attacks (audit.attacks; fedaudit attack NAME), each with what it needs:",
    "models": "Zoo models (model.name; any Hugging Face id or local folder works too), each with what it needs:",
    "scenarios": "Ready scenarios (fedaudit run SCENARIO):",
}


def listing(what: str) -> dict[str, str]:
    """Name -> one line, for ``what`` in ``LISTINGS``."""
    if what == "attacks":
        return dict(ATTACKS)
    if what == "models":
        return dict(MODELS)
    return scenarios()


def scenarios(folder: Path = SCENARIOS_DIR) -> dict[str, str]:
    """Each ``*.toml`` in ``folder`` by path (relative to the working directory when below it),
    with the first sentence of its leading comment."""
    return {_shown(path): describe(path) for path in sorted(folder.glob("*.toml"))}


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def describe(path: Path) -> str:
    """The first sentence of a scenario file's leading ``#`` comment block ("" without one)."""
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(part for part in lines if part)
    # A sentence ends at a full stop after a word of 4+ characters and before a capital letter,
    # so abbreviations ("Sec. 5", "e.g. the") do not end it.
    sentence = re.split(r"(?<=[^\s.]{4}[.!?])\s+(?=[A-Z])", text, maxsplit=1)[0]
    if len(sentence) <= DESCRIPTION_CHARS:
        return sentence
    return sentence[: DESCRIPTION_CHARS - 3].rsplit(" ", 1)[0] + "..."
