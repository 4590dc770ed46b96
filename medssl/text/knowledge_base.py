"""The guideline knowledge base: per-task YAML files of classes and their guideline sentences.

After RAD (Li et al. 2025, "RAD: Towards Trustworthy Retrieval-Augmented Multi-modal
Clinical Diagnosis"): each diagnosis class is described by guideline text whose sentence
embeddings act as class prototypes and as decoder queries.

A file (``configs/guidelines/<task>.yaml``, written by ``tools/build_guidelines.py``)::

    task: phantom_lesions
    description: free text
    classes:
      - name: solid_nodule
        codes: [ICD-10-CM:R91.1, HP:0033608]      # optional
        sentences:
          - text: Solitary pulmonary nodule
            source: ICD-10-CM R91.1 title, April 2026 release (CDC/NCHS) via simple-icd-10-cm 1.5.0
            licence: public domain (US government work, CDC/NCHS)

Sentences are numbered in file order, class by class; :attr:`GuidelineSet.sentence_to_class`
maps that number to the class index. Loading is strict (unknown keys, empty texts, duplicate
names or sentences all raise :class:`GuidelineError` naming the file and the entry), so a
typo fails at load time, not as a silently missing prototype.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from medssl.errors import ConfigError

_TOP_KEYS = {"task", "description", "classes"}
_CLASS_KEYS = {"name", "codes", "sentences"}
_SENTENCE_KEYS = {"text", "source", "licence"}


class GuidelineError(ConfigError):
    """A guideline file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class GuidelineSentence:
    """One guideline sentence: its text, where it comes from, under which licence."""

    text: str
    source: str
    licence: str


@dataclass(frozen=True)
class GuidelineClass:
    """A diagnosis class: name, optional codes (``ICD-10-CM:R91.1``, ``HP:0033608``), sentences."""

    name: str
    codes: tuple[str, ...]
    sentences: tuple[GuidelineSentence, ...]


@dataclass(frozen=True)
class GuidelineSet:
    """All classes of one task, in file order.

    ``texts[i]`` is sentence i (numbered class by class) and ``sentence_to_class[i]`` its
    class index into ``class_names``.
    """

    task: str
    description: str
    classes: tuple[GuidelineClass, ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def sentences(self) -> tuple[GuidelineSentence, ...]:
        return tuple(s for c in self.classes for s in c.sentences)

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(s.text for s in self.sentences)

    @property
    def sentence_to_class(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.classes) for _ in c.sentences)

    def class_index(self, name: str) -> int:
        """Index of class ``name``; ValueError naming the known classes otherwise."""
        try:
            return self.class_names.index(name)
        except ValueError:
            raise ValueError(
                f"guidelines for task {self.task!r}: no class {name!r}; known: "
                f"{', '.join(self.class_names)}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the YAML layout (artifact.json carries the guideline texts)."""
        return {
            "task": self.task,
            "description": self.description,
            "classes": [
                {
                    "name": c.name,
                    "codes": list(c.codes),
                    "sentences": [
                        {"text": s.text, "source": s.source, "licence": s.licence}
                        for s in c.sentences
                    ],
                }
                for c in self.classes
            ],
        }


def _text_field(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise GuidelineError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def _unknown_keys(entry: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise GuidelineError(
            f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}"
        )


def _parse_sentence(raw: Any, where: str) -> GuidelineSentence:
    if not isinstance(raw, dict):
        raise GuidelineError(f"{where}: a sentence must be a mapping with text/source/licence, "
                             f"got {type(raw).__name__}")
    _unknown_keys(raw, _SENTENCE_KEYS, where)
    return GuidelineSentence(
        text=_text_field(raw, "text", where),
        source=_text_field(raw, "source", where),
        licence=_text_field(raw, "licence", where),
    )


def _parse_class(raw: Any, where: str) -> GuidelineClass:
    if not isinstance(raw, dict):
        raise GuidelineError(f"{where}: a class must be a mapping, got {type(raw).__name__}")
    _unknown_keys(raw, _CLASS_KEYS, where)
    name = _text_field(raw, "name", where)
    where = f"{where} ({name})"
    codes = raw.get("codes") or []
    if not isinstance(codes, list) or not all(isinstance(c, str) and c for c in codes):
        raise GuidelineError(f"{where}: 'codes' must be a list of strings, got {codes!r}")
    sentences = raw.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        raise GuidelineError(f"{where}: 'sentences' must be a non-empty list, got {sentences!r}")
    parsed = tuple(
        _parse_sentence(s, f"{where} sentence {j + 1}") for j, s in enumerate(sentences)
    )
    return GuidelineClass(name=name, codes=tuple(codes), sentences=parsed)


def parse_guidelines(data: Any, origin: str = "<guidelines>") -> GuidelineSet:
    """Validate already-loaded YAML/JSON data (e.g. from an artifact) into a GuidelineSet."""
    if not isinstance(data, dict):
        raise GuidelineError(f"{origin}: top level must be a mapping, got {type(data).__name__}")
    _unknown_keys(data, _TOP_KEYS, origin)
    task = _text_field(data, "task", origin)
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise GuidelineError(f"{origin}: 'description' must be a string, got {description!r}")
    raw_classes = data.get("classes")
    if not isinstance(raw_classes, list) or not raw_classes:
        raise GuidelineError(f"{origin}: 'classes' must be a non-empty list, got {raw_classes!r}")
    classes = tuple(
        _parse_class(c, f"{origin}: class {i + 1}") for i, c in enumerate(raw_classes)
    )
    seen_names: set[str] = set()
    seen_texts: dict[str, str] = {}
    for c in classes:
        if c.name in seen_names:
            raise GuidelineError(f"{origin}: class name {c.name!r} appears twice")
        seen_names.add(c.name)
        for s in c.sentences:
            key = s.text.casefold()
            if key in seen_texts:
                raise GuidelineError(
                    f"{origin}: class {c.name!r}: sentence {s.text!r} already belongs to class "
                    f"{seen_texts[key]!r}; a sentence must name one class"
                )
            seen_texts[key] = c.name
    return GuidelineSet(task=task, description=description.strip(), classes=classes)


def load_guidelines(path: str | Path) -> GuidelineSet:
    """Read and validate ``configs/guidelines/<task>.yaml``.

    Raises:
        GuidelineError: the file is missing, not YAML, or an entry is malformed (the message
            names the file and the class/sentence number).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise GuidelineError(f"guideline file {path}: cannot read ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise GuidelineError(f"guideline file {path}: not valid YAML ({err})") from None
    return parse_guidelines(data, origin=f"guideline file {path}")
