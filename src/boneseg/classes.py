"""The 29 hand-bone classes, their groups and an overlay palette."""

from __future__ import annotations

import colorsys

CLASSES: tuple[str, ...] = (
    *(f"finger-{i}" for i in range(1, 20)),
    "Trapezium",
    "Trapezoid",
    "Capitate",
    "Hamate",
    "Scaphoid",
    "Lunate",
    "Triquetrum",
    "Pisiform",
    "Radius",
    "Ulna",
)
NUM_CLASSES = len(CLASSES)
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}

FINGERS: tuple[str, ...] = CLASSES[:19]
CARPALS: tuple[str, ...] = CLASSES[19:27]
FOREARM: tuple[str, ...] = CLASSES[27:]
GROUPS: dict[str, tuple[str, ...]] = {"fingers": FINGERS, "carpals": CARPALS, "forearm": FOREARM}
WRIST: tuple[str, ...] = CARPALS + FOREARM
"""The wrist: the 8 carpals with the distal radius and ulna (the crowded, overlapping region)."""

# Digits (thumb .. little), each listed distal -> proximal (metacarpal last).
DIGITS: dict[str, tuple[str, ...]] = {
    "thumb": ("finger-1", "finger-2", "finger-3"),
    "index": ("finger-4", "finger-5", "finger-6", "finger-7"),
    "middle": ("finger-8", "finger-9", "finger-10", "finger-11"),
    "ring": ("finger-12", "finger-13", "finger-14", "finger-15"),
    "little": ("finger-16", "finger-17", "finger-18", "finger-19"),
}


CLASS_GROUPS: dict[str, tuple[str, ...]] = {**GROUPS, "wrist": WRIST, **DIGITS}
"""Names a class selection may use besides class names (`--loss` terms restricted with ``@group``)."""


def _palette(n: int) -> list[tuple[int, int, int]]:
    """`n` well-separated RGB colours (golden-ratio hue walk, alternating lightness)."""
    colours = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hls_to_rgb(h, 0.5 if i % 2 == 0 else 0.62, 0.85)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


PALETTE: tuple[tuple[int, int, int], ...] = tuple(_palette(NUM_CLASSES))
"""One RGB colour per class, in class order, for overlays."""


def class_index(name: str) -> int:
    """Index of a class name; raises `DataError` with suggestions when unknown."""
    from boneseg.errors import DataError, suggest

    try:
        return CLASS_INDEX[name]
    except KeyError:
        raise DataError(f"unknown class {name!r}{suggest(name, CLASSES)}") from None
