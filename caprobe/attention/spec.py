"""The one place where attention specs (``ca``, ``ca:branches=h,act=relu``) are parsed.

A spec is ``NAME`` or ``NAME:key=value,key=value``. Every name maps to a class and a preset
(``ca_h`` is CA with ``branches="h"``); options are checked against the class's constructor,
and every error lists what is valid.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from caprobe.attention.base import ACTIVATIONS, GATES
from caprobe.errors import CaprobeError


@dataclass(frozen=True)
class AttnKind:
    """A registered attention name: its class (None for ``none``), preset options, summary."""

    name: str
    cls: type | None
    summary: str
    preset: dict[str, Any] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        """Constructor defaults with the preset applied, without ``channels`` and ``inplace``
        (the backbone's business, not the spec's)."""
        if self.cls is None:
            return {}
        params = inspect.signature(self.cls.__init__).parameters
        found = {k: p.default for k, p in params.items()
                 if k not in ("self", "channels", "inplace")}
        return {**found, **self.preset}

    def options(self) -> list[str]:
        """Option names a user may set (preset ones are fixed by the name)."""
        return [k for k in self.defaults() if k not in self.preset]


def _choice(valid):
    def check(key: str, raw: str):
        if raw not in valid:
            raise CaprobeError(
                f"option {key}={raw!r} is not valid; choose one of {', '.join(valid)}")
        return raw
    return check


def _int(minimum: int, odd: bool = False):
    def check(key: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < minimum or (odd and value % 2 == 0):
            need = f"an {'odd ' if odd else ''}integer >= {minimum}"
            raise CaprobeError(f"option {key}={raw!r} is not valid; it must be {need}")
        return value
    return check


_CHECKS = {
    "reduction": _int(1),
    "min_mip": _int(1),
    "min_hidden": _int(1),
    "kernel": _int(1, odd=True),
    "act": _choice(list(ACTIVATIONS)),
    "gate": _choice(list(GATES)),
    "branches": _choice(["hw", "h", "w"]),
}

_REGISTRY: dict[str, AttnKind] = {}


def register(kind: AttnKind) -> None:
    _REGISTRY[kind.name] = kind


def kinds() -> dict[str, AttnKind]:
    """Registered attention names, in registration order."""
    return dict(_REGISTRY)


@dataclass(frozen=True)
class AttnSpec:
    """A parsed spec: a registered name and the options given explicitly (validated)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kind(self) -> AttnKind:
        return _REGISTRY[self.name]

    def kwargs(self) -> dict[str, Any]:
        """Constructor keyword arguments: preset plus explicit options."""
        return {**self.kind.preset, **dict(self.options)}

    def resolved(self) -> dict[str, Any]:
        """Every option's effective value (defaults filled in)."""
        return {**self.kind.defaults(), **dict(self.options)}

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.options)


def parse_spec(spec: str | AttnSpec | None) -> AttnSpec:
    """Parse and validate a spec; ``None`` and ``""`` mean ``none``.

    Options equal to their default are dropped and ``ca:branches=h`` becomes ``ca_h``, so two
    specs of the same module have the same canonical string.
    """
    if isinstance(spec, AttnSpec):
        return spec
    text = (spec or "none").strip()
    name, _, rest = text.partition(":")
    name = name.strip().lower()
    if name not in _REGISTRY:
        raise CaprobeError(f"unknown attention {name!r}; valid names: {', '.join(_REGISTRY)}")
    kind = _REGISTRY[name]
    given: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key or not raw.strip():
            raise CaprobeError(f"malformed attention spec {text!r}: write NAME or "
                               "NAME:key=value,key=value (e.g. ca:reduction=16,act=relu)")
        if key not in kind.options():
            valid = ", ".join(kind.options()) or "none"
            raise CaprobeError(f"attention {name!r} has no option {key!r}; valid options: {valid}")
        given[key] = _CHECKS[key](key, raw.strip())
    if kind.cls is not None and kind.cls.__name__ == "CoordAttention" and "branches" in given:
        branches = given.pop("branches")
        name = {"hw": "ca", "h": "ca_h", "w": "ca_w"}[branches]
        kind = _REGISTRY[name]
    defaults = kind.defaults()
    options = tuple(sorted((k, v) for k, v in given.items() if defaults.get(k) != v))
    return AttnSpec(name, options)


def canonical(spec: str | AttnSpec | None) -> str:
    """The canonical string of a spec (validates it)."""
    return str(parse_spec(spec))
