"""Option parsing shared by several commands (kept free of torch imports)."""

from __future__ import annotations

from caprobe.errors import CaprobeError


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
    return size  # type: ignore[return-value]
