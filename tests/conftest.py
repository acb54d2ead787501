"""Shared fixtures: tiny random-weight models built from a config, never from a hub id.

``make_tiny_model_dir`` writes a Llama with a word-level tokenizer and a chat template to a folder,
which every backend loads like any Hugging Face model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY_WORDS = ("0 1 2 3 4 5 6 7 8 9 + - = . ? the answer is yes no what how many a b c d x y z and of to").split()
TOY_WORDS = ["a", "b", "c"]  # the exact-enumeration model's completion alphabet (plus <eos>)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def make_tiny_model_dir(
    path: Path,
    *,
    words=TINY_WORDS,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    init_std: float = 0.02,
    chat_template: str | None = CHAT_TEMPLATE,
    extra_specials: tuple[str, ...] = (),
    minimal_specials: bool = False,
) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    roles = [] if minimal_specials else ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    specials = (["<eos>", "<unk>"] if minimal_specials else ["<pad>", "<eos>", "<unk>"]) + roles + list(extra_specials)
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in words if w not in specials])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    pad = "<eos>" if minimal_specials else "<pad>"
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=pad,
        eos_token="<eos>",
        unk_token="<unk>",
        additional_special_tokens=roles,
    )
    if chat_template:
        tokenizer.chat_template = chat_template
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=init_std,
        eos_token_id=vocab["<eos>"],
        pad_token_id=vocab[pad],
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "gradalign_fixture.json").write_text(json.dumps({"seed": seed, "words": list(words)}))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (head size 32) with a word-level tokenizer and a chat template."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_model_dir_other_tokenizer(tmp_path_factory) -> Path:
    """Same architecture, a different vocabulary: a teacher the student must refuse."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_other") / "model", words=TINY_WORDS + ["extra"], seed=1)


@pytest.fixture(scope="session")
def toy_model_dir(tmp_path_factory) -> Path:
    """The exact-enumeration toy: a 6-token vocabulary (<eos> <unk> q a b c), peaked random distributions."""
    from exact_toy import make_toy_model_dir

    return make_toy_model_dir(tmp_path_factory.mktemp("toy") / "model")


# ---------------------------------------------------------------- the service tests (test_service*.py)
@pytest.fixture(scope="session")
def service_engine(tiny_model_dir):
    from service_setup import tiny_config

    from gradalign_engine.pipeline import Engine

    engine = Engine(tiny_config(tiny_model_dir))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def served(service_engine, tmp_path_factory):
    """A server on a file store with metrics on a free port; yields (server, client)."""
    from gradalign_client import Client
    from gradalign_server import ServiceLimits, create_server

    db = tmp_path_factory.mktemp("db") / "store.sqlite"
    server, port = create_server(
        service_engine, "127.0.0.1:0", db, metrics_port=0, limits=ServiceLimits(max_request_tokens=5_000_000)
    )
    client = Client(f"127.0.0.1:{port}", timeout=60)
    yield server, client
    client.close()
    server.stop(grace=1)
