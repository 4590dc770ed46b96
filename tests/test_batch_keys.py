"""Batch keys are :class:`medssl.types.BatchKey` members in ``medssl/``, never bare strings.

The rule, over the AST of every file under ``medssl/`` (a *string* is a ``str`` constant; a
*key value* is the value of a BatchKey member, e.g. ``"image"``):

1. A *batch* is a name or attribute ``batch`` or ``*batch`` (``batch``, ``collated_batch``,
   ``self.batch``). An *item* (a batch of one, before collation) is a name ``item`` or
   ``sample``, or ``items[...]``.
2. ``B[s]``, ``B.get(s)``, ``B.pop(s)``, ``B.setdefault(s)``, ``s in B`` and ``s not in B``
   with ``B`` a batch are reported for any string ``s``; with ``B`` an item, for a key value.
3. A dict display (``{...}``, or the keywords of ``dict(...)`` / ``X.update(...)``) is a batch
   when it spreads a batch (``{**batch, ...}``), is assigned to a batch name, is
   ``batch.update(...)``, or is returned by a function that takes a batch parameter: each
   of its string keys is reported. It is batch-shaped when it has a ``BatchKey.X`` key, has
   two or more string keys that are all key values, is assigned to an item name, or is returned by ``__getitem__`` or a
   ``*collate*`` function: each of its key values is reported.
4. A tuple, list or set display of two or more strings that are all key values (the keys a
   collate loops over) is reported, and so is a key value as the default of a parameter
   named ``key``, ``keys`` or ``*_key`` (a dict transform's ``box_key="box"``).

Non-batch dicts (JSON summaries, manifest rows, DICOM keywords, worker outcomes) pass: they
are not batches by name and carry at most one key value.
"""

from __future__ import annotations

import ast
from pathlib import Path

from medssl.types import BatchKey

ROOT = Path(__file__).resolve().parents[1] / "medssl"
KEY_VALUES = frozenset(k.value for k in BatchKey)
ACCESSORS = ("get", "pop", "setdefault")


def _name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def is_batch(node: ast.AST) -> bool:
    name = _name(node)
    return name is not None and name.endswith("batch")


def is_item(node: ast.AST) -> bool:
    if isinstance(node, ast.Subscript):
        return _name(node.value) == "items"
    return isinstance(node, ast.Name) and node.id in ("item", "sample")


def _string(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _is_enum_key(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Attribute) and _name(node.value) == "BatchKey"


class BatchKeyChecker(ast.NodeVisitor):
    """Collects ``(line, message)`` for every bare-string batch key (module doc)."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self._functions: list[ast.AST] = []
        self._done: set[int] = set()  # dict displays already judged in a stronger context

    def report(self, node: ast.AST, key: str, where: str) -> None:
        self.found.append((node.lineno, f"bare batch key {key!r} ({where})"))

    def access(self, container: ast.AST, key_node: ast.AST | None, where: str) -> None:
        key = _string(key_node)
        if key is None:
            return
        if is_batch(container) or (is_item(container) and key in KEY_VALUES):
            self.report(key_node, key, where)

    # rule 2 ---------------------------------------------------------------------------
    def visit_Subscript(self, node: ast.Subscript) -> None:
        self.access(node.value, node.slice, "subscript")
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                self.access(right, left, "membership")
            left = right
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ACCESSORS and node.args:
            self.access(func.value, node.args[0], f".{func.attr}()")
        keyword_dict = (isinstance(func, ast.Name) and func.id == "dict") or (
            isinstance(func, ast.Attribute) and func.attr == "update"
        )
        if keyword_dict and node.keywords:
            keys = [(kw, kw.arg) for kw in node.keywords if kw.arg is not None]
            spreads = [kw.value for kw in node.keywords if kw.arg is None]
            strong = any(is_batch(s) for s in spreads) or (
                isinstance(func, ast.Attribute) and is_batch(func.value)
            )
            self.judge(keys, strong=strong, weak=False, where="keyword")
        self.generic_visit(node)

    # rule 3 ---------------------------------------------------------------------------
    def judge(self, keys: list[tuple[ast.AST, object]], strong: bool, weak: bool, where: str) -> None:
        strings = [v for _, v in keys if isinstance(v, str)]
        only_key_values = len(strings) >= 2 and all(v in KEY_VALUES for v in strings)
        weak = weak or only_key_values or any(_is_enum_key(k) for k, _ in keys)
        for node, value in keys:
            if isinstance(value, str) and (strong or (weak and value in KEY_VALUES)):
                self.report(node, value, where)

    def visit_Dict(self, node: ast.Dict, strong: bool = False, weak: bool = False) -> None:
        if id(node) not in self._done:
            self._done.add(id(node))
            strong = strong or any(k is None and is_batch(v) for k, v in zip(node.keys, node.values))
            keys = [(k, _string(k)) for k in node.keys if k is not None]
            self.judge(keys, strong, weak, "dict")
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign | ast.AnnAssign) -> None:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if isinstance(node.value, ast.Dict):
            strong = any(is_batch(t) for t in targets)
            self.visit_Dict(node.value, strong=strong, weak=any(is_item(t) for t in targets))
        self.generic_visit(node)

    visit_AnnAssign = visit_Assign

    def visit_Return(self, node: ast.Return) -> None:
        if isinstance(node.value, ast.Dict) and self._functions:
            function = self._functions[-1]
            params = [a.arg for a in function.args.args + function.args.kwonlyargs]
            strong = any(p.endswith("batch") for p in params)
            weak = function.name == "__getitem__" or "collate" in function.name.lower()
            self.visit_Dict(node.value, strong=strong, weak=weak)
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        args = node.args
        positional = args.posonlyargs + args.args
        defaults = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults))
        defaults += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
        for arg, default in defaults:
            value = _string(default)
            if value in KEY_VALUES and (arg.arg in ("key", "keys") or arg.arg.endswith("_key")):
                self.report(default, value, f"default of {arg.arg}")
        self._functions.append(node)
        self.generic_visit(node)
        self._functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    # rule 4 ---------------------------------------------------------------------------
    def visit_Tuple(self, node: ast.Tuple | ast.List | ast.Set) -> None:
        strings = [_string(e) for e in node.elts]
        if len(strings) >= 2 and all(s in KEY_VALUES for s in strings):
            self.report(node, ", ".join(strings), "key list")
        self.generic_visit(node)

    visit_List = visit_Set = visit_Tuple


def bare_batch_keys(source: str) -> list[tuple[int, str]]:
    """``(line, message)`` for each bare-string batch key in ``source`` (module doc)."""
    checker = BatchKeyChecker()
    checker.visit(ast.parse(source))
    return sorted(checker.found)


def test_medssl_uses_batch_key_members():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for line, message in bare_batch_keys(path.read_text(encoding="utf-8")):
            found.append(f"{path.relative_to(ROOT.parent)}:{line}: {message}")
    assert not found, "use medssl.types.BatchKey members:\n" + "\n".join(found)


BARE = '''
def step(batch):
    x = batch["image"]
    y = batch.get("views")
    if "body" in batch or "volume" not in batch:
        batch.pop("seed")
    return {**batch, "image": x}

def augment(x, out):
    return {"image": 1}

def collate(items):
    batch = {"imagee": items[0]["image"]}
    batch.update(views=[])
    return {"slices": 1, "positions": 2}

def mixed(x):
    return {BatchKey.IMAGE: x, "label": 1}

KEYS = ("image", "box", "volume")

def crop(data, box_key="box", *, spacing_key="spacing"):
    return data

class Stacks:
    def __getitem__(self, i):
        sample = {"volume": i}
        sample["seed"] = 3
        return {"key": i}
'''

CLEAN = '''
import json

def summary(inp, ds, rows):
    out = {"images": inp.n_images, "status": "ok"}
    name = ds["PatientName"]
    outcome = {"volume_id": "v", "error": "crashed"}
    rows.append({"task": "seg", "seed": 0, "metric": "dice"})
    fields = ("init", "seed", "knn_acc")
    detector_out = out["boxes"]
    json.dumps({"index": 1, "text": None})
    row = {"volume_id": "v", "spacing": [1.0, 1.0, 2.5], "shape": [4, 4, 4]}
    return {"label": 3, "name": "x"}

def step(batch, mode="nearest", image_key=BatchKey.IMAGE):
    return batch[BatchKey.IMAGE], {**batch, BatchKey.IMAGE: 1}
'''


def test_checker_reports_bare_keys():
    found = bare_batch_keys(BARE)
    lines = [line for line, _ in found]
    messages = "\n".join(m for _, m in found)
    expected = ("'image'", "'views'", "'body'", "'volume'", "'seed'", "'imagee'", "'slices'", "'positions'", "'label'", "'key'", "'box'", "'spacing'")
    for key in expected:
        assert key in messages, f"{key} not reported:\n{messages}"
    assert lines.count(3) == 1 and lines.count(5) == 2 and lines.count(7) == 1
    assert 10 not in lines  # a function with no batch parameter returning one key value: not batch-shaped
    assert "image, box, volume" in messages  # the key list


def test_checker_passes_non_batch_dicts():
    assert bare_batch_keys(CLEAN) == []
