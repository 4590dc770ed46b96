"""Clinical guideline text: the knowledge base (configs/guidelines) and local text encoders.

``load_guidelines`` reads a task's classes and sentences; ``TextEncoder`` embeds them with a
local Hugging Face model (offline); ``embed_guidelines`` caches the embeddings. The encoder
imports transformers only when it first encodes.
"""

from __future__ import annotations

from medssl.text.encoder import (
    TextEncoder,
    default_model_path,
    embed_guidelines,
    guideline_cache_key,
    model_identity,
)
from medssl.text.knowledge_base import (
    GuidelineClass,
    GuidelineError,
    GuidelineSentence,
    GuidelineSet,
    load_guidelines,
    parse_guidelines,
)

__all__ = [
    "GuidelineClass",
    "GuidelineError",
    "GuidelineSentence",
    "GuidelineSet",
    "TextEncoder",
    "default_model_path",
    "embed_guidelines",
    "guideline_cache_key",
    "load_guidelines",
    "model_identity",
    "parse_guidelines",
]
