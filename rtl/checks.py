"""Constructor validation shared by the RTL components."""

from __future__ import annotations

from typing import Any, NoReturn

from qsim.config import AcceleratorConfig

__all__ = ["reject", "require_config"]


def reject(component: Any, error: Exception) -> NoReturn:
    """Raise ``error`` from a component's constructor.

    Amaranth warns at garbage collection about elaboratables that were created but never
    used; a component whose constructor failed was never usable, so that warning would only
    bury the real error.
    """
    component._MustUse__silence = True
    raise error


def require_config(component: Any, config: Any) -> AcceleratorConfig:
    """``config`` if it is an :class:`AcceleratorConfig`, else reject the component."""
    if not isinstance(config, AcceleratorConfig):
        reject(component, TypeError(f"config must be an AcceleratorConfig, not {config!r}"))
    return config
