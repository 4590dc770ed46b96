"""Serving side: artifacts, rebuilding models, sliding-window prediction, the HTTP app.

Inputs are preprocessed by :func:`medssl.preprocess.stage.preprocess`, the function the
training caches use. Never imports ``medssl.methods``, ``medssl.tasks``, ``medssl.data``,
``medssl.text`` or lightning (DESIGN.md section 1): a server rebuilds a model from an artifact
alone. Training code may import this package (it sits below ``medssl.data`` in the layers),
never the other way round.
"""

from __future__ import annotations
