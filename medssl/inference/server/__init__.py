"""``medssl serve``: the HTTP inference service (FastAPI + uvicorn) around a :class:`Predictor`.

One concept per module: ``settings`` (limits and secrets), ``auth`` (bearer token),
``limits`` (body size, concurrency, deadline), ``uploads`` (multipart to disk),
``jobs`` (a request's folder and worker-thread work), ``metrics`` (Prometheus), ``stow``
(STOW-RS of DICOM outputs), ``responses`` (JSON errors), ``app`` (routes), ``cli``.
"""

from __future__ import annotations

from medssl.inference.server.app import create_app
from medssl.inference.server.settings import ServerSettings, StowTarget, settings_from_env

__all__ = ["ServerSettings", "StowTarget", "create_app", "settings_from_env"]
