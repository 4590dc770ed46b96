"""One structure vocabulary per store: a label value has one name in every table and case.

Fine-tuning turns the store's label values into classes by name
(:func:`medssl.store.labels.structure_names`), so a value named ``liver`` by one table and
``hepar`` by another (or by two SEGs of one table) cannot be trained on. Ingest refuses that
up front, in one line naming the value and both names: a table's ``structures`` that clash
with the store are a :class:`~medssl.errors.ConfigError` before any label is written; a
case whose names come from its own mask (SEG segment labels, ``label_<v>``) and clash is
refused alone (``label_invalid``). The labels a table rewrites (its own volumes) do not count
against it, so a corrected table can rename what an earlier run of it wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from medssl.errors import ConfigError


@dataclass
class StructureVocabulary:
    """``value -> (name, where that name was given)``, first come first kept."""

    names: dict[int, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def of_rows(cls, rows: Iterable[Mapping], skip: frozenset[str] | set[str] = frozenset()) -> StructureVocabulary:
        """The vocabulary of the store's ``labels`` rows, leaving out the volumes in ``skip``."""
        vocabulary = cls()
        for row in rows:
            if row["volume_id"] in skip:
                continue
            names = {int(k): str(v) for k, v in json.loads(row["structures"] or "{}").items()}
            vocabulary.add(names, f"the store's labels (volume {row['volume_id']})")
        return vocabulary

    def add(self, names: Mapping[int, str], where: str) -> None:
        for value, name in names.items():
            self.names.setdefault(int(value), (str(name), where))

    def clash(self, names: Mapping[int, str], here: str) -> str | None:
        """One line for the first value that ``names`` (given ``here``) names otherwise, else None."""
        for value, name in sorted(names.items()):
            known = self.names.get(int(value))
            if known is not None and known[0] != name:
                return f"label value {value} is '{name}' in {here} but '{known[0]}' in {known[1]}; one value, one name"
        return None

    def check_table(self, structures: Mapping[int, str] | None) -> None:
        """ConfigError when the table's ``structures`` rename a value the store already names."""
        if structures is None:
            return
        clash = self.clash(structures, "the table's structures")
        if clash:
            raise ConfigError(f"label table: {clash} (rename it in the table, or ingest into another store)")


__all__ = ["StructureVocabulary"]
