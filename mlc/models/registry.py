"""Model registry: ``create_model(name, ...)`` builds any registered variant by name (as in timm)."""
from __future__ import annotations

from typing import Any, Callable, TypeVar

_MODELS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator: make a model buildable as ``create_model(name, ...)``."""

    def wrap(cls: T) -> T:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        cls.model_name = name
        _MODELS[name] = cls
        return cls

    return wrap


def unregister_model(name: str) -> None:
    """Remove a variant (a test's throw-away one), so it never leaks into another's ``list_models()``."""
    _MODELS.pop(name, None)


def list_models() -> list[str]:
    """Every registered variant, in registration order: the one list of what exists."""
    return list(_MODELS)


def reference_model() -> str | None:
    """The variant the others are compared with (``is_reference``), if one is registered."""
    return next((name for name, cls in _MODELS.items() if getattr(cls, "is_reference", False)), None)


def get_model_class(name: str) -> type:
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(_MODELS)}") from None


def create_model(name: str, **kwargs: Any):
    """Build a registered model; kwargs go to its constructor (classes, backbone, label_stats, ...)."""
    return get_model_class(name)(**kwargs)
