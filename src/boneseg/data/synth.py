"""Procedural hand-radiograph phantoms written in the competition layout (``boneseg synth``).

The phantom is a 2-D articulated model of the right hand in a 2048-pixel reference frame, fitted to
real segmentations (joint positions, bone widths and areas, carpal ellipses):

* digits are chains of long bones between template joints (carpometacarpal -> MCP -> PIP -> DIP ->
  tip); a bone is a polygon around its axis with a width profile (wide base, slim shaft, rounded
  head) and slight bow; finger spread rotates each digit at its MCP joint, flexion foreshortens the
  phalanges as a posterior-anterior projection does;
* carpals are perturbed superellipses at template centroids (they overlap as in real labels:
  Pisiform on Triquetrum, Trapezium on Trapezoid, Lunate on the radius);
* radius and ulna run from the wrist out of the frame and are clipped to the image.

A pose (side, size, wrist tilt, forearm angle, position) maps the template into the image. The
radiograph is an attenuation map -- soft tissue from the distance to the skin envelope, each bone as
a projected tube (bright cortex, lighter medulla, trabecular texture), sums where bones overlap --
passed through a film response, with heel-effect shading, blur, quantum noise and unlabelled
distractors (a finger ring, a ruler, corner text). Every length is in reference pixels and scaled by
``size / 2048``, so any ``size`` gives the same picture at another resolution.
"""

from __future__ import annotations

import datetime as _dt
import io
import re
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from boneseg.classes import CLASSES, DIGITS
from boneseg.data.labels import label_bytes, label_document
from boneseg.data.split import check_seed
from boneseg.errors import DataError, OutputExistsError, UsageError, suggest
from boneseg.io import Publication, atomic_open, hold, publishing
from boneseg.progress import SILENT, Reporter

REF = 2048.0
"""Side of the reference frame every template length is expressed in."""

# ---------------------------------------------------------------------------------------------
# Template (right hand, reference pixels, image axes: x right, y down), fitted to real masks.
# ---------------------------------------------------------------------------------------------
DIGIT_JOINTS: dict[str, tuple[tuple[float, float], ...]] = {
    "thumb": ((823, 1459), (625, 1205), (550, 1004), (479, 875)),
    "index": ((921, 1428), (863, 933), (809, 649), (780, 486), (767, 365)),
    "middle": ((1004, 1395), (1027, 926), (1017, 605), (1019, 410), (1026, 280)),
    "ring": ((1079, 1403), (1159, 986), (1205, 690), (1239, 504), (1252, 373)),
    "little": ((1146, 1434), (1276, 1068), (1390, 856), (1452, 747), (1500, 639)),
}
"""Joint positions of each digit, proximal (metacarpal base) to distal (tip)."""

BONE_WIDTH: dict[str, float] = {
    "finger-1": 65.0,
    "finger-2": 87.0,
    "finger-3": 91.0,
    "finger-4": 53.0,
    "finger-5": 73.0,
    "finger-6": 83.0,
    "finger-7": 75.0,
    "finger-8": 57.0,
    "finger-9": 77.0,
    "finger-10": 83.0,
    "finger-11": 72.0,
    "finger-12": 54.0,
    "finger-13": 72.0,
    "finger-14": 75.0,
    "finger-15": 60.0,
    "finger-16": 44.0,
    "finger-17": 63.0,
    "finger-18": 66.0,
    "finger-19": 67.0,
}
"""Mean width of each long bone of the digits (area / length), reference pixels."""

CARPAL_SHAPES: dict[str, tuple[float, float, float, float, float]] = {
    # name: (cx, cy, major axis, minor axis, angle of the major axis from vertical in degrees)
    "Trapezium": (880, 1454, 126, 100, -5),
    "Trapezoid": (926, 1438, 96, 82, 46),
    "Capitate": (1016, 1466, 186, 106, 12),
    "Hamate": (1105, 1450, 158, 94, 34),
    "Scaphoid": (946, 1532, 146, 100, -38),
    "Lunate": (1050, 1580, 116, 92, -60),
    "Triquetrum": (1135, 1532, 118, 80, 47),
    "Pisiform": (1143, 1543, 86, 70, -18),
}

FOREARM: dict[str, tuple[tuple[float, float], float, tuple[tuple[float, float], ...]]] = {
    # name: (distal end point, max width, width profile as (distance from the wrist, fraction))
    "Radius": ((950, 1566), 226.0, ((0, 0.9), (30, 1.0), (90, 0.9), (200, 0.62), (330, 0.55), (1200, 0.52))),
    "Ulna": ((1140, 1612), 118.0, ((0, 0.85), (25, 1.0), (80, 0.95), (180, 0.72), (1200, 0.66))),
}
FOREARM_LENGTH = 1400.0

PROFILES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # kind: (t from base (0) to head (1), half-width relative to the mean)
    "metacarpal": ((0, 0.1, 0.3, 0.55, 0.8, 0.92, 1), (1.42, 1.16, 0.8, 0.76, 0.9, 1.14, 1.12)),
    "phalanx": ((0, 0.12, 0.35, 0.6, 0.85, 1), (1.32, 1.08, 0.84, 0.8, 0.98, 0.96)),
    "distal": ((0, 0.15, 0.45, 0.7, 0.88, 1), (1.36, 1.12, 0.8, 0.74, 0.86, 0.8)),
}

SPREAD_DIRECTION = {"thumb": -10.0, "index": -6.0, "middle": 0.0, "ring": 5.0, "little": 10.0}
"""Degrees each digit turns at its MCP joint for a unit finger spread."""

WRIST_CENTER = np.array([1000.0, 1560.0])
"""Pivot of the wrist tilt (between the lunate and the radius)."""

HAND_EXTENT = (440.0, 1640.0, 260.0, 1640.0)
"""x0, x1, y0, y1 of the template's hand bones (without the forearm), for keeping them in frame."""

HEADERS = ("ID", "나이", "성별", "체중(몸무게)", "키(신장)")
"""Columns of ``meta_data.xlsx``, as in the real file."""

_FIXED_TIME = _dt.datetime(2022, 8, 22, 10, 0, 0)
_FIRST_STAMP = 1661130828152


# ---------------------------------------------------------------------------------------------
# Patients and poses
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Patient:
    """One synthetic patient: the meta row and the hand size/bone density it implies."""

    id: int
    age: int
    sex: str
    weight: float
    height: float
    scale: float
    density: float


def sample_patient(rng: np.random.Generator, pid: int) -> Patient:
    """Draw age, sex, weight and height; hand scale follows height, bone density falls with age."""
    male = bool(rng.random() < 0.5)
    age = int(rng.integers(19, 80))
    height = float(np.round(rng.normal(173.0 if male else 160.0, 6.0), 1))
    weight = float(np.round(rng.normal(72.0 if male else 56.0, 9.0), 1))
    scale = float(np.clip((height / 166.5) * rng.normal(1.0, 0.035), 0.86, 1.16))
    density = float(np.clip(1.08 - 0.005 * max(age - 30, 0) + rng.normal(0, 0.05), 0.72, 1.15))
    return Patient(pid, age, "남" if male else "여", weight, height, scale, density)


@dataclass(frozen=True)
class Pose:
    """Where and how one hand lies on the detector."""

    side: str = "R"
    scale: float = 1.0
    tilt: float = 0.0
    forearm: float = 0.0
    center: tuple[float, float] = (0.5, 0.7)
    spread: float = 0.3
    flexion: float = 0.1
    density: float = 1.0


def sample_pose(rng: np.random.Generator, side: str, patient: Patient | None = None) -> Pose:
    """A random pose: tilt mostly 0-30 deg toward the little finger, finger spread and flexion."""
    scale = (patient.scale if patient else 1.0) * rng.normal(1.0, 0.03)
    tilt = float(rng.uniform(-4.0, 30.0))
    return Pose(
        side=side,
        scale=float(scale),
        tilt=tilt,
        forearm=float(tilt * rng.uniform(0.2, 1.0)),
        center=(float(rng.uniform(0.44, 0.56)), float(rng.uniform(0.66, 0.74))),
        spread=float(rng.uniform(-0.5, 1.3)),
        flexion=float(rng.uniform(0.0, 1.0) ** 2),
        density=patient.density if patient else 1.0,
    )


# ---------------------------------------------------------------------------------------------
# Geometry (reference pixels, right hand, before the pose)
# ---------------------------------------------------------------------------------------------
def _unit(angle: float) -> np.ndarray:
    """Direction at `angle` radians from "up", positive toward +x."""
    return np.array([np.sin(angle), -np.cos(angle)])


def _normalised_profile(kind: str) -> tuple[np.ndarray, np.ndarray]:
    t, w = (np.asarray(a, float) for a in PROFILES[kind])
    return t, w / np.interp(np.linspace(0.0, 1.0, 201), t, w).mean()


_PROFILE_CACHE = {kind: _normalised_profile(kind) for kind in PROFILES}


def long_bone(p0: np.ndarray, p1: np.ndarray, width: float, kind: str, bow: float = 0.0, n: int = 36) -> np.ndarray:
    """Outline (2n, 2) of a long bone from base `p0` to head `p1` with mean width `width`."""
    axis = p1 - p0
    length = float(np.hypot(*axis))
    u = axis / length
    normal = np.array([-u[1], u[0]])
    t = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n))
    tp, wp = _PROFILE_CACHE[kind]
    half = 0.5 * width * np.interp(t, tp, wp)
    s = np.minimum(t, 1 - t) * length
    r = np.where(t < 0.5, half[0], half[-1]) * 0.55
    half = half * np.sqrt(1.0 - np.clip(1.0 - s / r, 0.0, 1.0) ** 2)
    centre = p0 + np.outer(t * length, u) + np.outer(bow * width * np.sin(np.pi * t), normal)
    left = centre + half[:, None] * normal
    right = centre - half[:, None] * normal
    return np.concatenate([left, right[::-1]])


def forearm_bone(name: str, rng: np.random.Generator) -> np.ndarray:
    """Radius or ulna: from its distal end straight down, well past the frame."""
    (x, y), width, profile = FOREARM[name]
    width *= rng.normal(1.0, 0.05)
    d = np.concatenate([np.linspace(0, 300, 40), np.linspace(320, FOREARM_LENGTH, 6)])
    dp, wp = (np.array(a, float) for a in zip(*profile))
    half = 0.5 * width * np.interp(d, dp, wp)
    r = half[0] * 0.55
    half = half * np.sqrt(1.0 - np.clip(1.0 - d / r, 0.0, 1.0) ** 2)
    # the distal surface slopes: the radial styloid (thumb side) reaches further than the ulnar side
    slope = 0.06 if name == "Radius" else 0.03
    left = np.stack([x - half, y + d + slope * (half - half.max()) * (d < 60)], 1)
    right = np.stack([x + half, y + d], 1)
    return np.concatenate([left, right[::-1]])


def carpal(name: str, rng: np.random.Generator, n: int = 40) -> np.ndarray:
    """A carpal bone: a superellipse at its template place with a random low-order wobble."""
    cx, cy, major, minor, angle = CARPAL_SHAPES[name]
    centre = np.array([cx, cy]) + rng.normal(0.0, 5.0, 2)
    a = 0.5 * major * rng.normal(1.0, 0.04)
    b = 0.5 * minor * rng.normal(1.0, 0.04)
    th = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    p = 2.4
    c, s = np.cos(th), np.sin(th)
    rx = a * np.sign(c) * np.abs(c) ** (2 / p)
    ry = b * np.sign(s) * np.abs(s) ** (2 / p)
    k = np.arange(2, 5)[:, None]
    wobble = 1.0 + (rng.normal(0.0, 0.035, (3, 1)) * np.cos(k * th + rng.uniform(0, 2 * np.pi, (3, 1)))).sum(0)
    ang = np.radians(angle + rng.normal(0.0, 5.0))
    u, v = _unit(ang), np.array([np.cos(ang), np.sin(ang)])
    return centre + (rx * wobble)[:, None] * u + (ry * wobble)[:, None] * v


@dataclass
class HandModel:
    """Bone outlines and soft-tissue primitives of one hand (points in a common frame)."""

    bones: dict[str, np.ndarray]
    digits: dict[str, np.ndarray]
    digit_width: dict[str, float]
    palm: np.ndarray
    forearm: np.ndarray
    forearm_bones: tuple[str, ...] = ("Radius", "Ulna")


def _digit(name: str, pose: Pose, rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The bones of one digit and its joint chain (with a soft-tissue tip) after spread/flexion."""
    joints = np.asarray(DIGIT_JOINTS[name], float)
    names = DIGITS[name][::-1]
    vec = np.diff(joints, axis=0)
    length = np.hypot(vec[:, 0], vec[:, 1]) * rng.normal(1.0, 0.025, len(vec))
    angle = np.arctan2(vec[:, 0], -vec[:, 1]) + np.radians(rng.normal(0.0, 1.5, len(vec)))
    angle[0] += np.radians(
        rng.normal(0.0, 1.0) + (0.5 * SPREAD_DIRECTION[name] * pose.spread if name == "thumb" else 0)
    )
    angle[1:] += np.radians(SPREAD_DIRECTION[name] * pose.spread)
    flex = np.radians(np.cumsum(rng.uniform(0.0, 45.0, len(vec) - 1) * pose.flexion))
    length[1:] *= np.cos(np.minimum(flex, np.radians(70)))
    chain = [joints[0]]
    for ln, an in zip(length, angle):
        chain.append(chain[-1] + ln * _unit(an))
    pts = np.array(chain)
    bones = {}
    for i, bone in enumerate(names):
        kind = "metacarpal" if i == 0 else "distal" if i == len(names) - 1 else "phalanx"
        u = (pts[i + 1] - pts[i]) / np.hypot(*(pts[i + 1] - pts[i]))
        g0 = rng.uniform(-5.0, 5.0) if i else (12.0 if name != "thumb" else 4.0)
        g1 = rng.uniform(-5.0, 5.0) if i < len(names) - 1 else 0.0
        w = BONE_WIDTH[bone] * rng.normal(1.0, 0.04)
        bones[bone] = long_bone(pts[i] + g0 * u, pts[i + 1] - g1 * u, w, kind, bow=rng.normal(0.0, 0.04))
    tip = pts[-1] + 0.22 * length[-1] * (pts[-1] - pts[-2]) / np.hypot(*(pts[-1] - pts[-2]))
    return bones, np.vstack([pts, tip])


def build_hand(pose: Pose, rng: np.random.Generator) -> HandModel:
    """All 29 bone outlines and the skin primitives in the reference frame, before placement."""
    bones: dict[str, np.ndarray] = {}
    digits, widths = {}, {}
    for name in DIGITS:
        digit_bones, chain = _digit(name, pose, rng)
        bones.update(digit_bones)
        digits[name] = chain
        widths[name] = 1.9 * BONE_WIDTH[DIGITS[name][-2]] * rng.normal(1.0, 0.05)
    for name in CARPAL_SHAPES:
        bones[name] = carpal(name, rng)
    for name in FOREARM:
        bones[name] = forearm_bone(name, rng)
    thumb = digits["thumb"]
    palm = np.vstack(
        [
            thumb[0] + 0.45 * (thumb[1] - thumb[0]),
            digits["index"][1] + (-20, 10),
            digits["middle"][1],
            digits["ring"][1],
            digits["little"][1] + (25, 10),
            digits["little"][0] + (70, 40),
            (1245, 1650),
            (785, 1650),
            (770, 1500),
        ]
    )
    forearm = np.array([[790, 1480], [1240, 1480], [1330, 2048 + 900], [710, 2048 + 900]], float)
    ordered = {c: bones[c] for c in CLASSES}
    return HandModel(ordered, digits, widths, palm, forearm)


def _rotate(points: np.ndarray, degrees: float, centre: np.ndarray) -> np.ndarray:
    """Rotate image-axis points so that "up" turns toward +x by `degrees`."""
    a = np.radians(degrees)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (points - centre) @ rot.T + centre


def place(hand: HandModel, pose: Pose, size: int) -> HandModel:
    """Apply the pose (wrist tilt, forearm angle, side, scale, position) and map to `size` pixels."""
    s = pose.scale * size / REF
    x0, x1, y0, y1 = HAND_EXTENT
    corners = _rotate(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]), pose.tilt, WRIST_CENTER)
    lo, hi = (corners - WRIST_CENTER).min(0) * s, (corners - WRIST_CENTER).max(0) * s
    if pose.side == "L":
        lo[0], hi[0] = -hi[0], -lo[0]
    margin = 0.02 * size
    cx, cy = pose.center[0] * size, pose.center[1] * size
    cx = float(np.clip(cx, margin - lo[0], size - margin - hi[0]))
    cy = float(np.clip(cy, margin - lo[1], size - margin - hi[1]))

    def tf(points: np.ndarray, forearm: bool = False) -> np.ndarray:
        p = _rotate(np.asarray(points, float), pose.forearm if forearm else pose.tilt, WRIST_CENTER) - WRIST_CENTER
        if pose.side == "L":
            p = p * (-1.0, 1.0)
        return p * s + (cx, cy)

    bones = {k: tf(v, k in hand.forearm_bones) for k, v in hand.bones.items()}
    digits = {k: tf(v) for k, v in hand.digits.items()}
    widths = {k: v * s for k, v in hand.digit_width.items()}
    return HandModel(bones, digits, widths, tf(hand.palm), tf(hand.forearm, True))


def clip_polygon(poly: np.ndarray, size: int) -> np.ndarray:
    """Clip a polygon to the image square [0, size-1]^2 (Sutherland-Hodgman)."""
    hi = size - 1.0
    if poly.min() >= 0 and poly.max() <= hi:
        return poly
    for axis, bound, keep_low in ((0, 0.0, False), (0, hi, True), (1, 0.0, False), (1, hi, True)):
        if len(poly) == 0:
            break
        inside = poly[:, axis] <= bound if keep_low else poly[:, axis] >= bound
        nxt = np.roll(poly, -1, axis=0)
        nxt_in = np.roll(inside, -1)
        out = []
        for p, q, pin, qin in zip(poly, nxt, inside, nxt_in):
            if pin:
                out.append(p)
            if pin != qin:
                t = (bound - p[axis]) / (q[axis] - p[axis])
                out.append(p + t * (q - p))
        poly = np.array(out).reshape(-1, 2)
    return poly


def to_pixels(poly: np.ndarray, size: int) -> np.ndarray:
    """Integer polygon inside the image, without repeated consecutive vertices."""
    pts = np.clip(np.rint(clip_polygon(poly, size)), 0, size - 1).astype(np.int32)
    keep = np.any(pts != np.roll(pts, 1, axis=0), axis=1)
    return pts[keep] if keep.any() else pts[:1]


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, size: int, sigma: float, step: int = 4) -> np.ndarray:
    """Zero-mean, unit-ish band-limited noise at full size (generated coarse, then upsampled)."""
    small = max(size // step, 8)
    z: np.ndarray = rng.standard_normal((small, small), dtype=np.float32)
    z = cv2.GaussianBlur(z, (0, 0), max(sigma / step, 0.5))
    z = z / (z.std() + 1e-6)
    return cv2.resize(z, (size, size), interpolation=cv2.INTER_LINEAR)


def _soft_tissue(hand: HandModel, size: int) -> np.ndarray:
    """Soft-tissue thickness in [0, 1]: distance into the skin envelope, smoothed."""
    step = 4
    small = max(size // step, 16)
    f = small / size
    mask = np.zeros((small, small), np.uint8)
    shift = 4
    scale = f * (1 << shift)
    cv2.fillPoly(
        mask,
        [np.rint(cv2.convexHull(hand.palm.astype(np.float32))[:, 0] * scale).astype(np.int32)],
        255,
        cv2.LINE_AA,
        shift,
    )
    cv2.fillPoly(mask, [np.rint(hand.forearm * scale).astype(np.int32)], 255, cv2.LINE_AA, shift)
    for name, chain in hand.digits.items():
        w = hand.digit_width[name] * f * (1.25 if name == "thumb" else 1.0)
        for i in range(len(chain) - 1):
            taper = 1.0 - 0.22 * i / (len(chain) - 1)
            a, b = np.rint(chain[i] * scale).astype(int), np.rint(chain[i + 1] * scale).astype(int)
            cv2.line(mask, tuple(a), tuple(b), 255, max(int(w * taper), 1), cv2.LINE_AA, shift)
    dist = cv2.distanceTransform((mask > 127).astype(np.uint8), cv2.DIST_L2, 3)
    thick = 1.0 - np.exp(-dist / max(45.0 * f * size / REF, 1.0))
    thick = cv2.GaussianBlur(thick, (0, 0), max(4.0 * f * size / REF, 0.6))
    return cv2.resize(thick, (size, size), interpolation=cv2.INTER_LINEAR)


def _bone_layer(
    polygons: dict[str, np.ndarray], size: int, k: float, texture: np.ndarray, density: float
) -> np.ndarray:
    """Projected bone density: each bone a tube with a dense cortex and a lighter medulla, summed."""
    out = np.zeros((size, size), np.float32)
    for name, poly in polygons.items():
        x0, y0 = poly.min(0)
        x1, y1 = poly.max(0) + 1
        mask = np.zeros((y1 - y0 + 2, x1 - x0 + 2), np.uint8)
        cv2.fillPoly(mask, [poly - (x0 - 1, y0 - 1)], 1)
        d = cv2.distanceTransform(mask, cv2.DIST_L2, 3)[1:-1, 1:-1]
        radius = max(float(d.max()) * 0.85, 1.0)
        inner = radius * (0.7 if name not in ("Radius", "Ulna") else 0.76)
        x = np.maximum(radius - d, 0.0)
        outer_path = np.sqrt(np.maximum(radius**2 - x**2, 0.0))
        inner_path = np.sqrt(np.maximum(inner**2 - x**2, 0.0))
        dens = (1.0 * (outer_path - inner_path) + 0.3 * inner_path) / radius**0.6 / (REF / size) ** 0.4
        dens *= (d > 0) * (1.0 + 0.07 * texture[y0:y1, x0:x1])
        out[y0:y1, x0:x1] += dens.astype(np.float32)
    return out * (k * density)


def _distractors(rng: np.random.Generator, hand: HandModel, size: int) -> np.ndarray:
    """Unlabelled bright objects real radiographs carry: a finger ring, a ruler, corner text."""
    s = size / REF
    layer = np.zeros((size, size), np.uint8)
    if rng.random() < 0.3:
        finger = rng.choice(["index", "middle", "ring", "little"])
        chain = hand.digits[finger]
        c = chain[1] + rng.uniform(0.3, 0.5) * (chain[2] - chain[1])
        ang = float(np.degrees(np.arctan2(*(chain[2] - chain[1])[::-1])))
        axes = (max(int(12 * s), 1), max(int(hand.digit_width[finger] * 0.5), 2))
        cv2.ellipse(layer, (int(c[0]), int(c[1])), axes, ang, 0, 360, 255, max(int(11 * s), 1), cv2.LINE_AA)
    if rng.random() < 0.35:
        length, width = int(rng.uniform(0.25, 0.45) * size), max(int(40 * s), 3)
        x0 = int(rng.choice([rng.uniform(0.02, 0.06), rng.uniform(0.9, 0.95)]) * size)
        y0 = int(rng.uniform(0.05, 0.45) * size)
        cv2.rectangle(layer, (x0, y0), (x0 + width, y0 + length), 110, -1)
        for i, y in enumerate(range(y0, y0 + length, max(int(20 * s), 2))):
            tick = width if i % 5 == 0 else width // 2
            cv2.line(layer, (x0, y), (x0 + tick, y), 255, max(int(3 * s), 1))
    if rng.random() < 0.55:
        text = str(rng.choice(["R", "L", "PA", "HAND", f"{int(rng.integers(1, 99)):02d}"]))
        scale = float(rng.uniform(1.5, 3.0) * s)
        thick = max(int(5 * s), 1)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        x = int(0.04 * size) if rng.random() < 0.5 else size - tw - int(0.04 * size)
        y = th + int(0.04 * size) if rng.random() < 0.6 else size - int(0.04 * size)
        cv2.putText(layer, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thick, cv2.LINE_AA)
    return layer


def render(
    hand: HandModel, polygons: dict[str, np.ndarray], pose: Pose, size: int, rng: np.random.Generator
) -> np.ndarray:
    """The 8-bit radiograph of a placed hand whose integer bone outlines are `polygons`."""
    s = size / REF
    texture = _smooth_noise(rng, size, 2.5 * s, step=2)
    tissue = _soft_tissue(hand, size)
    bone = _bone_layer(polygons, size, 0.11, texture, pose.density * rng.normal(1.0, 0.05))
    extra = _distractors(rng, hand, size).astype(np.float32) / 255.0
    atten = 0.5 * tissue * (1.0 + 0.05 * texture) + bone + 2.2 * extra
    yy = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    gx, gy = rng.normal(0.0, 0.08, 2)
    shade = 1.0 + gy * yy[:, None] + gx * yy[None, :] - 0.25 * (yy[:, None] ** 2 + yy[None, :] ** 2)
    img = 0.07 + 0.86 * (1.0 - np.exp(-1.3 * atten)) * shade.astype(np.float32)
    img = cv2.GaussianBlur(img, (0, 0), max(1.1 * s, 0.5))
    noise = rng.standard_normal((size, size), dtype=np.float32)
    img += (0.006 + 0.02 * np.sqrt(np.clip(img, 0.0, 1.0))) * noise
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def render_hand(
    rng: np.random.Generator,
    size: int = 2048,
    side: str | None = None,
    patient: Patient | None = None,
    pose: Pose | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
    """One synthetic radiograph.

    Args:
        rng: source of all randomness (same state -> same output).
        size: image side in pixels (everything scales with ``size / 2048``).
        side: ``"R"`` or ``"L"`` (random when None); a right hand has the thumb on the left.
        patient: scales the hand and sets bone density (a neutral adult when None).
        pose: a fixed pose (drawn from `rng` when None).

    Returns:
        ``(image, polygons, meta)``: the uint8 ``size x size`` image, ``{class: (N, 2) int32 [x, y]}``
        for the 29 classes in order, and the pose as a JSON-friendly dict.
    """
    if size < 16:
        raise UsageError(f"size must be at least 16 pixels, got {size}")
    if side is None:
        side = "R" if rng.random() < 0.5 else "L"
    if side not in ("R", "L"):
        raise UsageError(f"side must be 'R' or 'L', got {side!r}")
    pose = pose or sample_pose(rng, side, patient)
    hand = place(build_hand(pose, rng), pose, size)
    polygons = {name: to_pixels(poly, size) for name, poly in hand.bones.items()}
    image = render(hand, polygons, pose, size, rng)
    meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in pose.__dict__.items()}
    return image, polygons, meta


# ---------------------------------------------------------------------------------------------
# Dataset writer
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthSummary:
    """What `synthesize` wrote."""

    out: Path
    train_ids: tuple[int, ...]
    test_ids: tuple[int, ...]
    train_images: int
    test_images: int
    size: int
    seed: int


def split_ids(patients: int, test_patients: int) -> tuple[list[int], list[int]]:
    """Train and test IDs 1..N with the test IDs spread evenly between train ones (ID 1 is train)."""
    total = patients + test_patients
    test = [int(round(k * total / (test_patients + 1))) + 1 for k in range(1, test_patients + 1)]
    return [i for i in range(1, total + 1) if i not in test], test


def label_json(polygons: dict[str, np.ndarray], filename: str, size: int, rng: np.random.Generator) -> dict:
    """The competition's label document for one image, its ids drawn from `rng` (`boneseg.data.labels`)."""
    return label_document(
        polygons, filename, (size, size), new_id=lambda _: str(uuid.UUID(bytes=rng.bytes(16), version=4)), file_id=True
    )


LABEL_ERRORS = ("shift", "scale", "swap", "delete", "blob")
"""Kinds of label error `synthesize` can inject (``synth --label-errors``)."""
ERRORS_FILE = "label_errors.csv"
"""The truth list of injected errors, ``image_name,class,kind``, one row per wrong (image, class)."""


def _extent(poly: np.ndarray) -> float:
    """A polygon's linear size: the square root of its bounding-box area (at least 1)."""
    w, h = poly.max(0) - poly.min(0)
    return max(float(np.sqrt(max(w, 1) * max(h, 1))), 1.0)


def _inside(poly: np.ndarray, size: int) -> np.ndarray:
    return np.clip(np.rint(poly), 0, size - 1).astype(np.int32)


def inject_error(
    polygons: dict[str, np.ndarray], kind: str, rng: np.random.Generator, size: int
) -> tuple[dict[str, np.ndarray], list[str]]:
    """One label error of `kind` (see `LABEL_ERRORS`) in a copy of `polygons`; returns it and the classes
    made wrong. shift: a bone moved by 40-70% of its size; scale: shrunk to 0.6 or grown to 1.5 about its
    centre; swap: two neighbouring bones exchange labels; delete: a class removed; blob: a stray lobe
    joined to the bone by a zero-width bridge."""
    out = dict(polygons)
    name = str(rng.choice(CLASSES))
    poly = out[name].astype(np.float64)
    centre, ext = poly.mean(0), _extent(poly)
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    if kind == "shift":
        out[name] = _inside(poly + rng.uniform(0.4, 0.7) * ext * direction, size)
    elif kind == "scale":
        out[name] = _inside(centre + (poly - centre) * rng.choice([0.6, 1.5]), size)
    elif kind == "swap":
        apart = [c for c in CLASSES if np.hypot(*(out[c].mean(0) - centre)) > 0.5 * ext]  # not an overlapping one
        other = min(apart, key=lambda c: float(np.hypot(*(out[c].mean(0) - centre))))
        out[name], out[other] = out[other], out[name]
        return out, [name, other]
    elif kind == "delete":
        del out[name]
    elif kind == "blob":
        i = int(rng.integers(len(poly)))
        far = np.clip(poly[i] + 1.2 * ext * direction, 0, size - 1)
        th = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        lobe = far + 0.3 * ext * np.stack([np.cos(th), np.sin(th)], 1)
        out[name] = _inside(np.vstack([poly[: i + 1], far, lobe, far, poly[i:]]), size)
    else:
        raise UsageError(f"unknown label error {kind!r}{suggest(kind, LABEL_ERRORS)}")
    return out, [name]


def meta_xlsx(patients: list[Patient]) -> bytes:
    """``meta_data.xlsx`` bytes, identical for identical input (fixed document and zip times)."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(list(HEADERS))
    for i, p in enumerate(patients):
        sex = p.sex + ("_x0008_" if i == 1 else "")  # the real sheet carries this junk in places
        ws.append([p.id, p.age, sex, p.weight, p.height])
    wb.properties.created = wb.properties.modified = _FIXED_TIME
    raw = io.BytesIO()
    wb.save(raw)
    stamp = _FIXED_TIME.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    out = io.BytesIO()
    with zipfile.ZipFile(raw) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "docProps/core.xml":
                data = re.sub(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp, data)
            dst.writestr(
                zipfile.ZipInfo(info.filename, _FIXED_TIME.timetuple()[:6]), data, compress_type=zipfile.ZIP_DEFLATED
            )
    return out.getvalue()


MAX_SIZE = 8192
"""The largest ``--size`` (4x the real data's side): beyond it one image's float layers would need tens of GB."""


def check_options(
    out: str | Path, patients: int, test_patients: int, size: int, force: bool, seed: int = 0, label_errors: float = 0.0
) -> None:
    """Raise `UsageError` for impossible values and `OutputExistsError` for a non-empty `out` without `force`."""
    check_seed(seed)
    if not 0.0 <= label_errors <= 1.0:
        raise UsageError(f"--label-errors must be a fraction within [0, 1], got {label_errors}")
    if not 128 <= size <= MAX_SIZE:
        raise UsageError(f"--size must be within 128..{MAX_SIZE}, got {size}")
    if patients < 1:
        raise UsageError(f"--patients must be at least 1, got {patients}")
    if test_patients < 0:
        raise UsageError(f"--test-patients must be 0 or more, got {test_patients}")
    if label_errors and not round(label_errors * 2 * patients):
        raise UsageError(
            f"--label-errors {label_errors}: no error among {2 * patients} train images "
            f"(one needs at least {1 / (2 * patients):.4g})"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not force:
        raise OutputExistsError(f"{out} already exists and is not empty (use --force to overwrite)")


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path, "wb", force=True) as fh:
        fh.write(data)


def synthesize(
    out: str | Path,
    patients: int = 8,
    test_patients: int = 2,
    size: int = 2048,
    seed: int = 0,
    force: bool = False,
    reporter: Reporter = SILENT,
    label_errors: float = 0.0,
) -> SynthSummary:
    """Write a synthetic dataset in the competition layout.

    Args:
        out: dataset folder (created; must be empty or absent unless `force`).
        patients: train patients (two labelled images each, both hands).
        test_patients: test patients (two unlabelled images each), IDs interleaved with train.
        size: image side in pixels (>= 128).
        seed: the same arguments give byte-identical files (with the same numpy/OpenCV builds).
        force: overwrite a non-empty `out` (its ``train/``, ``test/`` and ``meta_data.xlsx`` are replaced).
        reporter: its progress (`boneseg.progress`), one step per image.
        label_errors: fraction of the train images given one label error each (`inject_error`, kinds in
            turn); the images and the other labels stay those of the clean set of the same seed, and
            ``OUT/label_errors.csv`` lists the wrong (image, class) pairs.

    Raises:
        UsageError: impossible option values. OutputExistsError: `out` not empty without `force`.
    """
    out = Path(out)
    check_options(out, patients, test_patients, size, force, seed, label_errors)
    made = not out.exists()
    try:
        with hold(out), publishing(force=True) as pub:  # the old set stays whole until the new one is
            _synthesize(pub, out, patients, test_patients, size, seed, reporter, label_errors)
    except BaseException:
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    train_ids, test_ids = split_ids(patients, test_patients)
    return SynthSummary(out, tuple(train_ids), tuple(test_ids), 2 * len(train_ids), 2 * len(test_ids), size, seed)


def _synthesize(
    pub: Publication,
    out: Path,
    patients: int,
    test_patients: int,
    size: int,
    seed: int,
    reporter: Reporter,
    label_errors: float,
) -> None:
    """`synthesize`'s files, written into `pub`: ``train/``, ``test/``, the meta file and the error list
    replace the old ones (other files in `out` stay)."""
    folders = {"train": pub.folder(out / "train")}
    if test_patients:
        folders["test"] = pub.folder(out / "test")
    else:
        pub.remove(out / "test")
    train_ids, test_ids = split_ids(patients, test_patients)
    n_wrong = int(round(label_errors * 2 * len(train_ids)))
    wrong = np.random.default_rng([seed, 0, 4]).choice(2 * len(train_ids), n_wrong, replace=False)
    kinds = {int(i): LABEL_ERRORS[j % len(LABEL_ERRORS)] for j, i in enumerate(sorted(wrong))}
    truth: list[tuple[str, str, str]] = []
    people = [
        sample_patient(np.random.default_rng([seed, pid, 0]), pid) for pid in range(1, patients + test_patients + 1)
    ]
    stamp_rng = np.random.default_rng([seed, 0, 1])
    stamp = _FIRST_STAMP + int(stamp_rng.integers(0, 3_600_000))
    task = reporter.task("synth", 2 * len(people), "img")
    for person in people:
        split = "test" if person.id in test_ids else "train"
        sides = ["R", "L"] if np.random.default_rng([seed, person.id, 2]).random() < 0.5 else ["L", "R"]
        for k, side in enumerate(sides):
            rng = np.random.default_rng([seed, person.id, 3 + k])
            stamp += int(stamp_rng.integers(15_000, 900_000))
            stem = f"image{stamp}" + (f"_{side}" if person.id == 1 else "")
            image, polygons, _ = render_hand(rng, size, side, person)
            ident = f"ID{person.id:03d}"
            _, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
            _write_bytes(folders[split] / "DCM" / ident / f"{stem}.png", png.tobytes())
            if split == "train":
                index = 2 * train_ids.index(person.id) + k
                if index in kinds:
                    polygons, names = inject_error(
                        polygons, kinds[index], np.random.default_rng([seed, person.id, 5 + k]), size
                    )
                    truth += [(f"{stem}.png", c, kinds[index]) for c in names]
                doc = label_json(polygons, f"{stem}.png", size, rng)
                _write_bytes(folders[split] / "outputs_json" / ident / f"{stem}.json", label_bytes(doc))
            task.advance()
    task.close()
    _write_bytes(pub.file(out / "meta_data.xlsx"), meta_xlsx(people))
    if label_errors:
        _write_bytes(
            pub.file(out / ERRORS_FILE),
            "".join(f"{a},{b},{c}\n" for a, b, c in [("image_name", "class", "kind"), *truth]).encode(),
        )
    else:
        pub.remove(out / ERRORS_FILE)
