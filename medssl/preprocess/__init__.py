"""Stored volumes, label maps and 2D images → the model's input under a plan, and the caches of it.

:mod:`~medssl.preprocess.stage` is the one preprocessing function, used by the training
caches and by serving alike (DESIGN.md section 1). The caches (:mod:`volume_cache`,
:mod:`label_cache`, :mod:`image_cache`) are thin instances of one build-once mechanism
(:mod:`~medssl.preprocess.build_once`): built by rank 0, waited for by the others, read as
memory maps by ``medssl.data``. Sits below ``medssl.data`` and ``medssl.inference`` in the
import layers; imports neither, nor lightning.
"""

from __future__ import annotations
