"""Architecture adapters: the only code that knows where transformers keep things.

Attacks ask an adapter for *roles* (the token-embedding matrix, the classification head,
whether embeddings are tied to the output layer) and get parameter names back; they never
spell out `transformer.wte` or `bert.embeddings.word_embeddings` themselves. A peft-wrapped
model gets the same roles under the wrapper's names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn
from transformers import PreTrainedModel

Family = Literal["gpt2", "llama", "bert", "mlp", "cnn"]

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


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise LookupError("module is not registered on the model")


def _core(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _active(module: nn.Module) -> nn.Module:
    """peft's ModulesToSaveWrapper trains a copy of the head: that copy is the head."""
    copies = getattr(module, "modules_to_save", None)
    if copies is not None:
        return copies[next(iter(copies))]
    return module


@dataclass(frozen=True)
class Projection:
    """One linear map that reads an attention layer's input: its weight and, under peft, its LoRA factors."""

    weight: str
    in_features_first: bool
    """GPT-2's Conv1D stores (in, out); nn.Linear stores (out, in)."""
    lora_a: str | None = None
    """peft LoRA factor A (r x in), when the model is LoRA-wrapped here."""
    lora_b: str | None = None
    """peft LoRA factor B (out x r)."""


@dataclass(frozen=True)
class AttentionInput:
    """Where an attention layer's input can be observed and which weight gradients span it.

    The weight gradient of a linear map Y = X W is X^T dL/dY, so the input-side space of the
    query, key and value gradients together is spanned by the rows of X (DAGER, eq. 2). The key
    and value count because in a decoder the first position's query gradient is zero (its
    attention weight is always 1), while later queries read its key and value.
    """

    module: str
    """The query projection: its forward input is exactly the attention input (a hook target)."""
    projections: tuple[Projection, ...]
    """Query first (GPT-2 fuses Q, K and V into c_attn), then key and value."""


@dataclass(frozen=True)
class FirstLayerInput:
    """The first query projection reads norm(E[token] + positions[i] + offset), nothing else."""

    norm_kind: Literal["layernorm", "rmsnorm"]
    norm_weight: str
    norm_bias: str | None
    norm_eps: float
    positions: str | None
    """Absolute position-embedding matrix (max_positions x d); None for rotary models."""
    offset: str | None
    """A matrix whose row 0 is added to every input (BERT's token-type embeddings, type 0)."""


@dataclass(frozen=True)
class DenseLayer:
    """A fully connected layer z = W x + b (W stored out x in), as SPEAR sees it."""

    module: str
    weight: str
    bias: str | None
    relu_after: bool
    """A ReLU follows, so dL/dz is zero wherever z <= 0 (SPEAR's sparsity)."""
    reads_input: bool
    """x is the model input itself (flattened); otherwise x is a feature vector of an earlier layer."""


@dataclass(frozen=True)
class Adapter:
    """What an attack may know about a model's layout (all public architecture knowledge)."""

    family: Family
    task: Literal["classification", "causal-lm"]
    head_weight: str
    head_bias: str | None
    signed_head_features: bool
    """The head's input can be negative (LayerNorm/RMSNorm/tanh outputs), so the sign trick of
    iDLG (which assumes non-negative ReLU features) does not decide a label on its own."""
    embedding: str | None = None
    """Parameter name of the token-embedding matrix (vocab x d); None for image and table models."""
    tied_embeddings: bool = False
    """True when the output layer reuses the embedding matrix (its gradient then touches every row)."""
    num_layers: int = 0
    attention_heads: int = 0
    """Query heads per attention layer (text models)."""
    first_input: FirstLayerInput | None = None
    attention_inputs: tuple[AttentionInput, ...] = ()
    """The first two attention layers' inputs."""
    dense_layers: tuple[DenseLayer, ...] = ()
    """The fully connected layers before the head, in forward order (image and table models)."""

    @property
    def is_decoder(self) -> bool:
        return self.family in ("gpt2", "llama")


def _head(model: PreTrainedModel, family: Family, task: str) -> nn.Linear:
    if task == "causal-lm":
        head = model.get_output_embeddings()
    elif family == "bert":
        head = model.classifier
    else:  # GPT-2 and LLaMA sequence classifiers score the last non-padding token
        head = model.score
    head = _active(head)
    if not isinstance(head, nn.Linear):
        raise TypeError(f"unexpected head type {type(head).__name__}")
    return head


def _layers(core: nn.Module, family: Family) -> tuple[list[nn.Module], list[list[nn.Module]]]:
    """(blocks, per block the linear maps that read the attention input: query first)."""
    if family == "gpt2":
        blocks = list(core.transformer.h)
        return blocks, [[b.attn.c_attn] for b in blocks]
    if family == "llama":
        blocks = list(core.model.layers)
        return blocks, [[b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj] for b in blocks]
    blocks = list(core.bert.encoder.layer)
    return blocks, [[b.attention.self.query, b.attention.self.key, b.attention.self.value] for b in blocks]


def _projection(model: nn.Module, family: Family, module: nn.Module) -> Projection:
    base = getattr(module, "base_layer", module)  # peft LoRA wraps the projection
    lora_a = lora_b = None
    if hasattr(module, "lora_A") and len(module.lora_A):
        key = next(iter(module.lora_A))
        lora_a = _param_name(model, module.lora_A[key].weight)
        lora_b = _param_name(model, module.lora_B[key].weight)
    return Projection(
        weight=_param_name(model, base.weight), in_features_first=family == "gpt2", lora_a=lora_a, lora_b=lora_b
    )


def _attention_input(model: nn.Module, family: Family, readers: list[nn.Module]) -> AttentionInput:
    return AttentionInput(
        module=_module_name(model, readers[0]), projections=tuple(_projection(model, family, m) for m in readers)
    )


def _first_input(model: nn.Module, core: nn.Module, family: Family, first_block: nn.Module) -> FirstLayerInput:
    if family == "gpt2":
        norm, positions, offset = first_block.ln_1, core.transformer.wpe.weight, None
    elif family == "llama":
        norm, positions, offset = first_block.input_layernorm, None, None
    else:
        emb = core.bert.embeddings
        norm, positions, offset = emb.LayerNorm, emb.position_embeddings.weight, emb.token_type_embeddings.weight
    bias = getattr(norm, "bias", None)
    eps = getattr(norm, "eps", None)
    if eps is None:
        eps = norm.variance_epsilon
    return FirstLayerInput(
        norm_kind="layernorm" if isinstance(norm, nn.LayerNorm) else "rmsnorm",
        norm_weight=_param_name(model, norm.weight),
        norm_bias=_param_name(model, bias) if bias is not None else None,
        norm_eps=float(eps),
        positions=_param_name(model, positions) if positions is not None else None,
        offset=_param_name(model, offset) if offset is not None else None,
    )


def adapter_for(model: PreTrainedModel, task: Literal["classification", "causal-lm"]) -> Adapter:
    family = MODEL_TYPES.get(model.config.model_type)
    if family is None:
        raise ValueError(
            f"model type {model.config.model_type!r} has no adapter; supported: {', '.join(sorted(MODEL_TYPES))}"
        )
    core = _core(model)
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    head = _head(core, family, task)
    blocks, readers = _layers(core, family)
    return Adapter(
        family=family,
        task=task,
        embedding=_param_name(model, embedding),
        tied_embeddings=output is not None and output.weight is embedding,
        head_weight=_param_name(model, head.weight),
        head_bias=_param_name(model, head.bias) if head.bias is not None else None,
        signed_head_features=True,
        num_layers=len(blocks),
        attention_heads=int(model.config.num_attention_heads),
        first_input=_first_input(model, core, family, blocks[0]),
        attention_inputs=tuple(_attention_input(model, family, r) for r in readers[:2]),
    )


def dense_adapter(model: nn.Module, family: Family) -> Adapter:
    """Roles in fedaudit's own MLP and ConvNet (``fedaudit.models.dense``): every Linear of the
    body with what follows it, and the head (whose input is a ReLU or sigmoid output, >= 0)."""
    modules = list(model.body)
    layers = []
    for i, module in enumerate(modules):
        if isinstance(module, nn.Linear):
            follows = modules[i + 1] if i + 1 < len(modules) else None
            layers.append(
                DenseLayer(
                    module=_module_name(model, module),
                    weight=_param_name(model, module.weight),
                    bias=_param_name(model, module.bias) if module.bias is not None else None,
                    relu_after=isinstance(follows, nn.ReLU),
                    reads_input=family == "mlp" and not layers,
                )
            )
    head = model.head
    return Adapter(
        family=family,
        task="classification",
        head_weight=_param_name(model, head.weight),
        head_bias=_param_name(model, head.bias) if head.bias is not None else None,
        # an MLP without hidden layers feeds the raw (possibly signed) input to the head
        signed_head_features=not layers and family == "mlp",
        dense_layers=tuple(layers),
    )
