"""TextEncoder: offline loading (sockets refused), sentence-level behaviour, clear errors,
and the guideline embedding cache (hit without loading the model)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from medssl.errors import ConfigError
from medssl.text.encoder import TextEncoder, embed_guidelines, guideline_cache_key
from medssl.text.knowledge_base import parse_guidelines

NETWORK_ATTEMPTS: list[object] = []


def _refuse(*args, **kwargs):
    NETWORK_ATTEMPTS.append(args)
    raise OSError("network disabled in this test")


@pytest.fixture(scope="module")
def encoder():
    """The bundled MiniLM, loaded once with HF_HUB_OFFLINE=1 and every socket connect refused."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", _refuse)
        mp.setattr(socket, "create_connection", _refuse)
        enc = TextEncoder()
        enc.encode(["warm up"])
    return enc


def toy_guidelines():
    def s(text):
        return {"text": text, "source": "written for medssl", "licence": "Apache-2.0 (medssl)"}

    return parse_guidelines({"task": "toy", "classes": [
        {"name": "nodule", "sentences": [s("A small round solid spot in the lung.")]},
        {"name": "effusion", "sentences": [s("Fluid between the lung and the chest wall.")]},
    ]})


def test_loads_offline_with_sockets_refused(encoder):
    assert encoder.is_loaded
    assert NETWORK_ATTEMPTS == []
    assert encoder.dim == 384


def test_unit_embeddings_and_paraphrases_closer_than_unrelated(encoder):
    e = encoder.encode([
        "A small round solid spot in the lung.",
        "A little round lump inside the lung.",
        "The train to the city leaves at noon.",
    ])
    assert e.shape == (3, 384) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] + 0.3


def test_deterministic_and_batch_independent(encoder):
    texts = ["Fluid around the lungs.", "A hazy faint cloud in the lung.", "x"]
    one_batch = encoder.encode(texts)
    torch.testing.assert_close(encoder.encode(texts), one_batch)
    torch.testing.assert_close(encoder.encode(texts, batch_size=1), one_batch, atol=1e-5, rtol=0)
    assert encoder.encode([]).shape == (0, 384)


def test_token_embeddings_respect_max_length(encoder):
    hidden, mask = encoder.encode_tokens(["short", "word " * 200])
    assert hidden.shape[0] == 2 and hidden.shape[2] == 384
    assert hidden.shape[1] == encoder.max_length
    assert mask.dtype == torch.bool and mask[1].all() and mask[0].sum() < mask[1].sum()


def test_bad_arguments_fail_clearly(tmp_path, encoder):
    with pytest.raises(ConfigError, match="not a folder"):
        TextEncoder(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match="no config.json"):
        TextEncoder(tmp_path)
    with pytest.raises(ValueError, match="list of strings"):
        encoder.encode("a bare string")


def test_incomplete_folder_fails_clearly_without_downloading(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    with pytest.raises(ConfigError, match="no weights"):
        TextEncoder(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"truncated")
    enc = TextEncoder(tmp_path)  # no tokenizer, broken weights: fails on first use
    with pytest.raises(ConfigError, match="cannot load offline"):
        enc.encode(["anything"])


def test_cache_is_hit_without_loading_the_model(tmp_path, encoder, monkeypatch):
    gset = toy_guidelines()
    first = embed_guidelines(gset, encoder, tmp_path)
    assert first.shape == (2, 384)
    files = list(tmp_path.iterdir())
    key = guideline_cache_key(gset.texts, encoder.identity)
    assert [f.name for f in files] == [f"{key}.safetensors"]

    def refuse_load(self):
        raise AssertionError("the model was loaded although the cache holds the embeddings")

    monkeypatch.setattr(TextEncoder, "_load", refuse_load)
    fresh = TextEncoder()
    second = embed_guidelines(gset, fresh, tmp_path)
    assert not fresh.is_loaded
    torch.testing.assert_close(second, first)


def test_cache_key_follows_texts_and_model(tmp_path, encoder):
    texts = ("a", "b")
    key = guideline_cache_key(texts, encoder.identity)
    assert key != guideline_cache_key(("a", "c"), encoder.identity)
    assert key != guideline_cache_key(texts, "other")
    assert TextEncoder(max_length=32).identity != encoder.identity
    copied = tmp_path / "copy"
    copied.mkdir()
    for f in Path(encoder.model_path).iterdir():
        if f.is_file():
            (copied / f.name).symlink_to(f)
    assert TextEncoder(copied).identity == encoder.identity  # same files elsewhere: same key


def test_corrupt_cache_is_recomputed(tmp_path, encoder):
    gset = toy_guidelines()
    path = tmp_path / f"{guideline_cache_key(gset.texts, encoder.identity)}.safetensors"
    path.write_bytes(b"not a safetensors file")
    out = embed_guidelines(gset, encoder, tmp_path)
    torch.testing.assert_close(out, encoder.encode(list(gset.texts)))
    torch.testing.assert_close(embed_guidelines(gset, encoder, tmp_path), out)
