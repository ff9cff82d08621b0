"""The zoo builds every family offline, and adapters point at the right modules."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2TokenizerFast

from fedaudit.config import ConfigError, ModelConfig
from fedaudit.models import build_model
from fedaudit.models.zoo import _gpt2_tokenizer

SENTENCES = ["Patient Maria Lopez was diagnosed with asthma.", "Card 4111 1111 1111 1111 is blocked."]

TINY = {
    "gpt2-random": {"n_layer": 1, "n_embd": 64, "n_head": 2},
    "llama-random": {
        "num_hidden_layers": 1,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    "bert-random": {"num_hidden_layers": 1, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2},
}


def test_packaged_gpt2_bpe_matches_the_reference_files(data_dir) -> None:
    ours = _gpt2_tokenizer(None)
    reference = GPT2TokenizerFast.from_pretrained(str(data_dir / "tokenizers" / "gpt2"))
    for text in SENTENCES + ["naïve café — 東京 <|endoftext|>"]:
        assert ours(text)["input_ids"] == reference(text)["input_ids"]
    assert len(ours) == 50257 and ours.pad_token == "<|endoftext|>"


def test_tokenizer_folder_override(data_dir) -> None:
    bundle = build_model(
        ModelConfig(name="gpt2-random", config=TINY["gpt2-random"], tokenizer=str(data_dir / "tokenizers" / "gpt2"))
    )
    assert bundle.tokenizer("hello world")["input_ids"] == [31373, 995]


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_random_models_build_deterministically_and_adapters_match_the_model(name: str, task: str) -> None:
    if name == "bert-random" and task == "causal-lm":
        with pytest.raises(ConfigError, match="model.task = 'causal-lm'"):
            build_model(ModelConfig(name=name, config=TINY[name], task=task))
        return
    cfg = ModelConfig(name=name, config=TINY[name], task=task)
    a, b = build_model(cfg, num_labels=3, seed=1), build_model(cfg, num_labels=3, seed=1)
    assert all(torch.equal(a.trainable_state()[k], v) for k, v in b.trainable_state().items())
    params = dict(a.model.named_parameters())
    adapter = a.adapter
    assert params[adapter.embedding] is a.model.get_input_embeddings().weight
    enc = a.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    logits = a.model(**enc).logits
    assert logits.shape[-1] == (3 if task == "classification" else len(a.tokenizer))
    assert params[adapter.head_weight].shape[0] == logits.shape[-1]
    # rotary models have no position-embedding table: their first layer reads the token alone
    assert (adapter.first_input.positions is None) == (name == "llama-random")
    if task == "classification":
        assert (adapter.head_bias is not None) == (name == "bert-random")


def test_dtype_and_config_overrides() -> None:
    bundle = build_model(ModelConfig(name="gpt2-random", config=TINY["gpt2-random"], dtype="float64"))
    assert bundle.model.dtype == torch.float64 and bundle.model.config.n_embd == 64
    with pytest.raises(ConfigError, match="model.config.n_layers = 2: not a field of GPT2Config"):
        build_model(ModelConfig(name="gpt2-random", config={"n_layers": 2}))


def test_pretrained_minilm_loads_offline() -> None:
    bundle = build_model(ModelConfig(name="minilm-l6"), num_labels=2)
    assert bundle.adapter.family == "bert" and bundle.model.config.hidden_size == 384
    assert bundle.tokenizer("hello")["input_ids"] == [101, 7592, 102]
    enc = bundle.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert bundle.model(**enc).logits.shape == (2, 2)


def test_pretrained_smollm2_loads_offline() -> None:
    bundle = build_model(ModelConfig(name="smollm2-135m", task="causal-lm"))
    assert bundle.adapter.family == "llama" and bundle.model.config.hidden_size == 576
    enc = bundle.tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        logits = bundle.model(**enc).logits
    # A real pretrained model, not a random one: it puts " Paris" among its top guesses.
    top = bundle.tokenizer.decode(logits[0, -1].topk(5).indices)
    assert "Paris" in top


def test_unknown_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model.name = '/no/such/model'"):
        build_model(ModelConfig(name="/no/such/model"))
