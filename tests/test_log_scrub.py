"""Library warnings and log records pass the same scrubber as medssl's own (issue 15, item 12).

The reproduction: one invalid byte in a series' FrameOfReferenceUID made pydicom warn once
per slice, quoting the UID verbatim, when the SEG was written from it. Now the UID is never
in the output and the message is said once.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medssl.log_scrub import scrub

ROOT = Path(__file__).resolve().parents[1]
BAD_UID = "1.2.826.0.1.99887766\x01.13"

SEG_FROM_BAD_UID = textwrap.dedent(
    f"""
    import logging, sys
    import numpy as np, pydicom
    import medssl
    from medssl.io.seg_writer import write_dicom_seg
    from tools.phantom import make_ct_phantom, write_ct_series

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    out = sys.argv[1]
    paths = write_ct_series(make_ct_phantom((16, 16, 10), (4.0, 4.0, 5.0), seed=3), out + "/ct")
    datasets = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = {BAD_UID!r}
        datasets.append(ds)
    labels = np.zeros((16, 16, 10), dtype=np.uint8)
    labels[4:9, 4:9, 2:6] = 1
    write_dicom_seg(labels, datasets, {{1: "x"}}, out + "/seg.dcm",
                    algorithm_name="a", algorithm_version="1")
    """
)


def test_a_bad_source_uid_never_reaches_stderr_and_is_said_once(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", SEG_FROM_BAD_UID, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )
    stderr = run.stdout + run.stderr
    assert "99887766" not in stderr
    assert "1.2.826.0.1" not in stderr
    said = [line for line in stderr.splitlines() if "Invalid value for VR UI" in line]
    assert len(said) == 1, stderr[-2000:]
    assert "<value>" in said[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("study 1.2.840.113619.2.55.3.604688 read", "study <uid> read"),
        ("frame 1.2.3.4.5", "frame <uid>"),
        ("Invalid value for VR PN: 'DOE^JOHN'", "Invalid value for VR PN: '<value>'"),
        ('copied "ANONYMOUS CANARY"', 'copied "<value>"'),
        ("element '(0020,0052)' is bad", "element '(0020,0052)' is bad"),
        ("torch 2.10.0 on 127.0.0.1:8000", "torch 2.10.0 on 127.0.0.1:8000"),
        ("loss 0.125 at step 12", "loss 0.125 at step 12"),
    ],
)
def test_scrub(text, expected):
    assert scrub(text) == expected


def test_medssl_records_keep_their_quotes_but_lose_uids(caplog):
    with caplog.at_level(logging.INFO):
        logging.getLogger("medssl.test").info("config 'voco.yaml' for %s", "1.2.840.10008.5.1.4")
    assert caplog.records[-1].getMessage() == "config 'voco.yaml' for <uid>"


def test_library_records_lose_quoted_values_and_tracebacks_are_scrubbed(caplog):
    with caplog.at_level(logging.INFO):
        logging.getLogger("pydicom.test").warning("value %r", "SMITH^JANE")
        try:
            raise ValueError("bad UID '1.2.840.99999.1.2.3'")
        except ValueError:
            logging.getLogger("highdicom.test").exception("failed")
    assert caplog.records[-2].getMessage() == "value '<value>'"
    assert "SMITH" not in caplog.text
    assert "99999" not in caplog.text
    assert 'File "' in caplog.text  # frame paths stay readable
