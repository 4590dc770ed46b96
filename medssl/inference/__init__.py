"""Serving side: artifact loading (and, later, sliding-window prediction and the HTTP app).

Never imports ``medssl.methods`` or lightning (DESIGN.md section 1): a server rebuilds a model
from an artifact alone.
"""

from __future__ import annotations
