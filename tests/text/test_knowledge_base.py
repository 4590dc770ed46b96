"""The guideline knowledge base: shipped files load and cover the phantom's lesion kinds;
malformed files fail with the file and the entry named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medssl.text.knowledge_base import GuidelineError, load_guidelines, parse_guidelines
from tools.phantom.lesions import LESION_KINDS

ROOT = Path(__file__).resolve().parents[2]
GUIDELINES = ROOT / "configs" / "guidelines"


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def sentence(text: str) -> dict[str, str]:
    return {"text": text, "source": "written for medssl", "licence": "Apache-2.0 (medssl)"}


def valid() -> dict:
    return {
        "task": "toy",
        "classes": [
            {"name": "a", "codes": ["HP:0000107"], "sentences": [sentence("one"), sentence("two")]},
            {"name": "b", "sentences": [sentence("three")]},
        ],
    }


@pytest.mark.parametrize("name", ["phantom_lesions.yaml", "chest_ct.yaml"])
def test_shipped_files_load_with_sources_and_licences(name):
    gset = load_guidelines(GUIDELINES / name)
    assert gset.num_classes >= 4
    assert len(gset.texts) == len(gset.sentence_to_class)
    for s in gset.sentences:
        assert s.source and s.licence
    sources = " ".join(s.source for s in gset.sentences)
    assert "ICD-10-CM" in sources and "HPO release" in sources and "written for medssl" in sources


def test_phantom_classes_are_the_lesion_kinds_plus_no_lesion():
    gset = load_guidelines(GUIDELINES / "phantom_lesions.yaml")
    assert set(gset.class_names) == set(LESION_KINDS) | {"no_lesion"}
    nodule = gset.classes[gset.class_index("solid_nodule")]
    assert "ICD-10-CM:R91.1" in nodule.codes and "HP:0033608" in nodule.codes
    assert "Solitary pulmonary nodule" in [s.text for s in nodule.sentences]


def test_index_maps_sentences_to_classes_in_file_order(tmp_path):
    gset = load_guidelines(write(tmp_path, valid()))
    assert gset.class_names == ("a", "b")
    assert gset.texts == ("one", "two", "three")
    assert gset.sentence_to_class == (0, 0, 1)
    assert gset.classes[0].codes == ("HP:0000107",)
    assert parse_guidelines(gset.to_dict()) == gset
    with pytest.raises(ValueError, match="no class 'c'"):
        gset.class_index("c")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["classes"][1]["sentences"][0].pop("licence"),
            r"class 2 \(b\) sentence 1.*licence",
        ),
        (
            lambda d: d["classes"][0]["sentences"][1].update(text="  "),
            r"class 1 \(a\) sentence 2.*text",
        ),
        (lambda d: d["classes"][0].update(sentence=[]), r"class 1: unknown key.*sentence"),
        (lambda d: d["classes"][1].update(name="a"), "class name 'a' appears twice"),
        (
            lambda d: d["classes"][1]["sentences"].append(sentence("ONE")),
            "already belongs to class",
        ),
        (lambda d: d["classes"][1].update(sentences=[]), r"class 2 \(b\).*non-empty list"),
        (lambda d: d["classes"][0].update(codes="R91.1"), "'codes' must be a list"),
        (lambda d: d.update(classes=[]), "'classes' must be a non-empty list"),
        (lambda d: d.pop("task"), "'task'"),
    ],
)
def test_malformed_entries_name_file_and_entry(tmp_path, mutate, message):
    data = valid()
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(GuidelineError, match=message) as info:
        load_guidelines(path)
    assert str(path) in str(info.value)


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(GuidelineError, match="cannot read"):
        load_guidelines(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: [unclosed", encoding="utf-8")
    with pytest.raises(GuidelineError, match="not valid YAML"):
        load_guidelines(bad)
    bad.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(GuidelineError, match="top level must be a mapping"):
        load_guidelines(bad)


@pytest.mark.slow
def test_committed_files_match_the_generator():
    """Loading HPO takes about a minute: the generator's --check against the committed YAMLs."""
    result = subprocess.run(
        [sys.executable, "-m", "tools.build_guidelines", "--check"],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
