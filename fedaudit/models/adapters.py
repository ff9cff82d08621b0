"""Architecture adapters: the only code that knows where transformers keep things.

Attacks ask an adapter for *roles* (the token-embedding matrix, the classification head,
whether embeddings are tied to the output layer) and get parameter names back; they never
spell out `transformer.wte` or `bert.embeddings.word_embeddings` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn
from transformers import PreTrainedModel

Family = Literal["gpt2", "llama", "bert"]

#: Hugging Face ``config.model_type`` -> the family whose layout it shares.
MODEL_TYPES: dict[str, Family] = {
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "bert": "bert",
}


def _param_name(model: nn.Module, param: nn.Parameter) -> str:
    for name, p in model.named_parameters():
        if p is param:
            return name
    raise LookupError("parameter is not registered on the model")


@dataclass(frozen=True)
class Adapter:
    """What an attack may know about a model's layout (all public architecture knowledge)."""

    family: Family
    task: Literal["classification", "causal-lm"]
    embedding: str
    """Parameter name of the token-embedding matrix (vocab x d)."""
    tied_embeddings: bool
    """True when the output layer reuses the embedding matrix (its gradient then touches every row)."""
    head_weight: str
    head_bias: str | None
    positions: Literal["absolute", "rotary"]
    signed_head_features: bool
    """The head's input can be negative (LayerNorm/RMSNorm/tanh outputs), so the sign trick of
    iDLG (which assumes non-negative ReLU features) does not decide a label on its own."""

    @property
    def is_decoder(self) -> bool:
        return self.family != "bert"


def _head(model: PreTrainedModel, family: Family, task: str) -> nn.Linear:
    if task == "causal-lm":
        head = model.get_output_embeddings()
    elif family == "bert":
        head = model.classifier
    else:  # GPT-2 and LLaMA sequence classifiers score the last non-padding token
        head = model.score
    if not isinstance(head, nn.Linear):
        raise TypeError(f"unexpected head type {type(head).__name__}")
    return head


def adapter_for(model: PreTrainedModel, task: Literal["classification", "causal-lm"]) -> Adapter:
    family = MODEL_TYPES.get(model.config.model_type)
    if family is None:
        raise ValueError(
            f"model type {model.config.model_type!r} has no adapter; supported: {', '.join(sorted(MODEL_TYPES))}"
        )
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    head = _head(model, family, task)
    return Adapter(
        family=family,
        task=task,
        embedding=_param_name(model, embedding),
        tied_embeddings=output is not None and output.weight is embedding,
        head_weight=_param_name(model, head.weight),
        head_bias=_param_name(model, head.bias) if head.bias is not None else None,
        positions="rotary" if family == "llama" else "absolute",
        signed_head_features=True,
    )
