"""The one string registry of medssl: backbone name -> factory function.

A factory is a plain function with a typed signature (no ``**kwargs``), decorated with
``@register_backbone("name")``; ``create_backbone(name, **kwargs)`` checks the name and the
keyword names before calling it, so a typo fails here with a message that names it instead of
deep inside a constructor. Pattern after timm's ``register_model`` / ``create_model``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from medssl.backbones.base import Backbone

_FACTORIES: dict[str, Callable[..., Backbone]] = {}

F = TypeVar("F", bound=Callable[..., Backbone])


def register_backbone(name: str) -> Callable[[F], F]:
    """Decorator registering a backbone factory under ``name`` (unique, lower-case).

    The factory must take keyword arguments only through named parameters: a ``**kwargs``
    parameter would let unknown options through, so it is refused with ``TypeError``.
    """
    if not name or name != name.lower() or not name.replace("_", "").isalnum():
        raise ValueError(f"backbone name {name!r}: use lower-case letters, digits and '_'")

    def decorate(factory: F) -> F:
        if name in _FACTORIES:
            raise ValueError(
                f"backbone {name!r} is already registered by {_FACTORIES[name].__module__}"
            )
        params = inspect.signature(factory).parameters.values()
        if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
            raise TypeError(f"backbone factory {name!r} must not take *args/**kwargs")
        _FACTORIES[name] = factory
        return factory

    return decorate


def list_backbones() -> list[str]:
    """Names of every registered backbone, sorted."""
    return sorted(_FACTORIES)


def get_backbone_factory(name: str) -> Callable[..., Backbone]:
    """The factory registered as ``name`` (for signature introspection by config tools)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(_FACTORIES))}")
    return _FACTORIES[name]


def create_backbone(name: str, **kwargs: object) -> Backbone:
    """Build the backbone registered as ``name`` with keyword arguments ``kwargs``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the known names).
        TypeError: a keyword is not a parameter of that backbone (the message names it).
    """
    factory = get_backbone_factory(name)
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"backbone {name!r} got unknown argument(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted)}"
        )
    model = factory(**kwargs)
    if not isinstance(model, Backbone):
        raise TypeError(
            f"backbone factory {name!r} returned a {type(model).__name__}, not a Backbone"
        )
    return model
