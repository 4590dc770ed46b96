"""The dataset store: ``medssl ingest`` and everything it writes, and the plan.

Ingest (:mod:`ingest`, its worker processes in :mod:`ingest_work`/:mod:`workers`) turns
sources into validated, de-identified canonical volumes; the manifest
(``STORE/manifest.sqlite``, :mod:`manifest`, rows typed by :mod:`volume_row`) records what was
written and what was refused, refusals are kept in ``STORE/quarantine/``; label tables are
ingested onto the volumes' grids (:mod:`label_table`, :mod:`label_ingest`, :mod:`labels`);
:mod:`plan` fingerprints the store and decides spacing, intensity window and patch size once.
Never imports torch.
"""
