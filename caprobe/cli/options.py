"""Option parsing shared by several commands (kept free of torch imports)."""

from __future__ import annotations

import json
from typing import Any

from caprobe.errors import CaprobeError, input_hw

#: Classifier outputs of a model built without ``--num-classes``, per input profile: the
#: class count of the data set each layout was designed for (ImageNet-1k at 224 px,
#: CIFAR-10 at 32 px), so a fresh model's head, parameters and latency are the papers'.
PROFILE_NUM_CLASSES = {"imagenet": 1000, "cifar": 10}


def default_num_classes(profile: str) -> int:
    """Classifier outputs for ``profile`` when ``--num-classes`` is not given (any profile but
    cifar gets ImageNet's)."""
    return PROFILE_NUM_CLASSES.get(profile, PROFILE_NUM_CLASSES["imagenet"])


def parse_input_size(text: str | None, profile: str) -> tuple[int, int]:
    """``"224"``, ``"160x224"`` or ``"160,224"`` → (H, W); None → the profile's size."""
    if text is None:
        from caprobe.models.common import PROFILES

        if profile not in PROFILES:
            raise CaprobeError(
                f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
        return PROFILES[profile], PROFILES[profile]
    parts = text.lower().replace("x", ",").split(",")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise CaprobeError(f"input size {text!r} is not valid; give a positive integer like 224 "
                           "or HxW like 160x224")
    return input_hw(size)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def spread_multi_values(args: list[str], greedy: tuple[str, ...]) -> list[str]:
    """Rewrite ``--attn a b c`` as ``--attn a --attn b --attn c`` (click repeats options).

    Values after a ``greedy`` option, up to the next option token, each get their own copy of
    the option (``--attn=a b`` too). A greedy option given no value at all becomes
    ``--attn ""`` so the command can say that the list is empty. Negative numbers are values;
    everything after ``--`` is left alone.
    """
    out: list[str] = []
    current: str | None = None
    pending = False  # the next value binds to the option token itself

    def close_empty() -> None:
        if current is not None and pending:
            out.append("")

    for i, token in enumerate(args):
        if token == "--":
            close_empty()
            return out + args[i:]
        if token.startswith("-") and not _is_number(token):
            close_empty()
            name, eq, _ = token.partition("=")
            current = name if name in greedy else None
            pending = not eq
            out.append(token)
            continue
        if current is not None:
            if pending:
                pending = False
            else:
                out.append(current)
        out.append(token)
    close_empty()
    return out


def split_commas(values: list[str] | None, *, specs: bool = False) -> list[str] | None:
    """A list option's values with comma-separated ones split: ``--attn se,cbam,ca`` as
    ``--attn se cbam ca``. With ``specs``, a part holding ``=`` is an option of the
    attention spec before it (``ca:act=relu,reduction=16`` stays one spec: spec names never
    hold ``=``). An empty value stays (the command says the list is empty)."""
    if values is None:
        return None
    out: list[str] = []
    for value in values:
        parts: list[str] = []
        for part in value.split(","):
            if specs and parts and "=" in part and ":" not in part and ":" in parts[-1]:
                parts[-1] += "," + part
            else:
                parts.append(part)
        out += parts
    return out


def multi_value_command(*greedy: str) -> type:
    """A Typer command class whose ``greedy`` options take several space-separated values."""
    import typer.core

    class MultiValueCommand(typer.core.TyperCommand):
        def parse_args(self, ctx, args):  # noqa: ANN001 - typer's vendored click types
            return super().parse_args(ctx, spread_multi_values(list(args), greedy))

    return MultiValueCommand


def parse_key_values(items: list[str] | None, option: str, example: str) -> dict[str, Any]:
    """``["n_train=512", "difficulty=0.5"]`` → a dict; values are JSON where they parse."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise CaprobeError(f"{option} {item!r} is not KEY=VALUE; pass e.g. {option} {example}")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out
