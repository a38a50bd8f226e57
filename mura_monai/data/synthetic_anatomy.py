"""Drawing for the synthetic MURA-like generator: anatomy, abnormalities and confounders.

Everything is drawn in an *anatomy frame* (x across the limb, centred on 0; y along the limb,
0 = proximal edge of the field, 1 = distal edge), then mapped to pixels by a per-view similarity
transform. A study's anatomy and abnormalities are fixed in that frame, so every view of a study
shows the same bones, fracture, lesion or hardware from a different angle.

The image model is a toy radiograph: intensity = background + soft tissue + bone (bones add up
where they overlap), a soft knee for saturation, exposure (gain, bias, gamma), very bright metal,
then collimation, markers and rulers, blur and noise. Bones have a bright cortex and a darker
medulla; fractures are dark lines across a bone, optionally with a step (displacement) and
angulation; lesions are lytic (dark) or sclerotic (bright) blobs inside a bone; hardware is plates
with screws, screws, K-wires, nails or a shoulder prosthesis.

Calibration (generator version 2): version 1 drew findings so faint at 128 px that a small CNN
trained from scratch on a 140-patient root stayed at chance (validation study AUC 0.44-0.73
from epoch to epoch) and DenseNet-169 never left it in CPU minutes. Version 2 raises the
severity floor, widens fracture lines and soft-tissue swelling, enlarges lesions and hardware,
and keeps processed bone below white so metal stands out as on a real radiograph. The same
probe then peaks at 0.86-0.89 (``benchmarks/learnability.py``), well short of trivial: the
fifth of findings drawn with severity below 0.7 stay subtle, and one view in ten of an abnormal
study does not show its fracture or lesion.

Used by :mod:`mura_monai.data.synthetic`; nothing here touches the file system.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Bone", "build_anatomy", "sample_anatomy", "sample_abnormalities", "sample_view",
           "sample_confounders", "render_view", "VIEW_KINDS"]

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT

# Per body part: the sequence of views a study takes (view kind, DICOM ViewPosition).
VIEW_KINDS: dict[str, tuple[tuple[str, str], ...]] = {
    "XR_ELBOW": (("frontal", "AP"), ("lateral", "LL"), ("oblique", "RLO"), ("oblique", "LLO")),
    "XR_FINGER": (("frontal", "PA"), ("lateral", "LL"), ("oblique", "RLO"), ("frontal", "AP")),
    "XR_FOREARM": (("frontal", "AP"), ("lateral", "LL"), ("oblique", "RLO"), ("frontal", "PA")),
    "XR_HAND": (("frontal", "PA"), ("oblique", "RLO"), ("lateral", "LL"), ("oblique", "LLO")),
    "XR_HUMERUS": (("frontal", "AP"), ("lateral", "LL"), ("oblique", "RLO"), ("frontal", "PA")),
    "XR_SHOULDER": (("frontal", "AP"), ("lateral", "LL"), ("oblique", "RLO"), ("frontal", "PA")),
    "XR_WRIST": (("frontal", "PA"), ("lateral", "LL"), ("oblique", "RLO"), ("oblique", "LLO")),
}

_DISTAL_UP = ("XR_FINGER", "XR_HAND", "XR_WRIST")

# Field of view of each template in anatomy units: (x_min, x_max, y_min, y_max).
_EXTENT = {
    "XR_ELBOW": (-0.42, 0.42, 0.0, 1.0),
    "XR_FINGER": (-0.3, 0.3, 0.0, 1.0),
    "XR_FOREARM": (-0.3, 0.3, 0.0, 1.0),
    "XR_HAND": (-0.36, 0.42, -0.05, 1.0),
    "XR_HUMERUS": (-0.32, 0.32, 0.0, 1.0),
    "XR_SHOULDER": (-0.55, 0.45, 0.0, 1.0),
    "XR_WRIST": (-0.36, 0.36, 0.0, 1.0),
}


# --------------------------------------------------------------------------------------------
# Primitives and bones
# --------------------------------------------------------------------------------------------
def cap(x0, y0, x1, y1, r0, r1=None):
    """A (tapered) capsule from (x0, y0) to (x1, y1) with end radii r0, r1."""
    return ("cap", float(x0), float(y0), float(x1), float(y1), float(r0), float(r0 if r1 is None else r1))


def ell(cx, cy, ax, ay, angle=0.0):
    """An ellipse with semi-axes ax, ay, rotated by ``angle`` degrees."""
    return ("ell", float(cx), float(cy), float(ax), float(ay), float(angle))


def trap(x0, y0, x1, y1, r0, r1):
    """A trapezoid (a flared metaphysis): half-widths r0 at (x0, y0) and r1 at (x1, y1), flat ends."""
    dx, dy = x1 - x0, y1 - y0
    n = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / n, dx / n
    return poly([(x0 + nx * r0, y0 + ny * r0), (x1 + nx * r1, y1 + ny * r1),
                 (x1 - nx * r1, y1 - ny * r1), (x0 - nx * r0, y0 - ny * r0)])


def poly(points):
    return ("poly", np.asarray(points, dtype=np.float64))


@dataclass
class Bone:
    name: str
    prims: list
    axis: tuple  # (x0, y0, x1, y1, radius): the segment abnormalities are placed along
    density: float = 1.0  # cortex brightness relative to a long-bone cortex
    inner: float = 0.55  # medulla size relative to the outer shape (0: solid)
    medulla: float | None = None  # medulla brightness relative to the cortex (None: per study)
    weight: float = 1.0  # how likely an abnormality lands on this bone


def _rot_point(x, y, cx, cy, ang):
    c, s = math.cos(ang), math.sin(ang)
    return cx + c * (x - cx) - s * (y - cy), cy + s * (x - cx) + c * (y - cy)


def _rotate_prim(p, cx, cy, deg):
    a = math.radians(deg)
    if p[0] == "cap":
        x0, y0 = _rot_point(p[1], p[2], cx, cy, a)
        x1, y1 = _rot_point(p[3], p[4], cx, cy, a)
        return ("cap", x0, y0, x1, y1, p[5], p[6])
    if p[0] == "ell":
        x, y = _rot_point(p[1], p[2], cx, cy, a)
        return ("ell", x, y, p[3], p[4], p[5] + deg)
    pts = np.array([_rot_point(x, y, cx, cy, a) for x, y in p[1]])
    return ("poly", pts)


def _rotate_bone(b: Bone, cx, cy, deg) -> Bone:
    a = math.radians(deg)
    x0, y0 = _rot_point(b.axis[0], b.axis[1], cx, cy, a)
    x1, y1 = _rot_point(b.axis[2], b.axis[3], cx, cy, a)
    return Bone(b.name, [_rotate_prim(p, cx, cy, deg) for p in b.prims], (x0, y0, x1, y1, b.axis[4]),
                b.density, b.inner, b.medulla, b.weight)


def _long_bone(name, pts, radii, ends=(), weight=1.0, density=1.0):
    """A bone made of a polyline of capsules (pts, radii per point) plus end ellipses."""
    prims = [cap(*pts[i], *pts[i + 1], radii[i], radii[i + 1]) for i in range(len(pts) - 1)]
    prims += list(ends)
    rmean = float(np.mean(radii))
    axis = (pts[0][0], pts[0][1], pts[-1][0], pts[-1][1], rmean)
    return Bone(name, prims, axis, density=density, weight=weight)


def _short_bone(name, cx, cy, ax, ay, angle=0.0, weight=0.3, density=0.95):
    a = math.radians(angle)
    dx, dy = math.cos(a) * ax * 0.7, math.sin(a) * ax * 0.7
    return Bone(name, [ell(cx, cy, ax, ay, angle)], (cx - dx, cy - dy, cx + dx, cy + dy, min(ax, ay)),
                density=density, inner=0.72, medulla=0.72, weight=weight)


def _chain(name, x, y, angles, lengths, radii, gap, weight=1.0):
    """Bones of a finger: successive segments from (x, y) along the given angles (deg from +y)."""
    bones = []
    for i, (ang, ln, (r0, r1)) in enumerate(zip(angles, lengths, radii)):
        a = math.radians(ang)
        dx, dy = math.sin(a), math.cos(a)
        x1, y1 = x + dx * ln, y + dy * ln
        ends = [ell(x + dx * r0 * 0.3, y + dy * r0 * 0.3, r0 * 1.2, r0 * 0.55, -ang),
                ell(x1 - dx * r1 * 0.2, y1 - dy * r1 * 0.2, r1 * 1.15, r1 * 0.6, -ang)]
        bones.append(_long_bone(f"{name}{i + 1}", [(x, y), (x1, y1)], [r0, r1], ends, weight=weight))
        x, y = x1 + dx * gap, y1 + dy * gap
    return bones, (x, y)


# --------------------------------------------------------------------------------------------
# Templates: one per body part, returning (bones, tissue primitives)
# --------------------------------------------------------------------------------------------
def _spread(kind):
    return {"frontal": 1.0, "oblique": 0.62, "lateral": 0.28}[kind]


def _humerus(a, kind):
    b, t, j = a["bw"], a["tw"], a["jit"]
    wf = {"frontal": 1.0, "oblique": 0.8, "lateral": 0.55}[kind]
    x1 = 0.015 * j[0]
    bones = [
        _long_bone("humerus", [(0.0, 0.1), (x1, 0.5), (0.01 * j[1], 0.84)], [0.043 * b, 0.041 * b, 0.044 * b],
                   ends=[ell(0.035, 0.05, 0.09 * b, 0.085 * b), ell(0.085, 0.095, 0.035 * b, 0.04 * b),
                         trap(0.0, 0.78, 0.0, 0.9, 0.046 * b, 0.09 * b * wf),
                         ell(0.0, 0.905, 0.11 * b * wf, 0.038 * b),
                         ell(0.045 * wf, 0.93, 0.035 * b, 0.03 * b), ell(-0.045 * wf, 0.93, 0.04 * b, 0.03 * b)],
                   weight=3.0),
        Bone("scapula", [poly([(-0.05, -0.05), (-0.45, -0.05), (-0.4, 0.24), (-0.06, 0.14)]),
                         ell(-0.07, 0.06, 0.03 * b, 0.08 * b)], (-0.3, 0.0, -0.1, 0.1, 0.05),
             density=0.45, inner=0.0, weight=0.2),
        _long_bone("radius", [(0.045 * wf, 0.965), (0.05 * wf, 1.15)], [0.022 * b, 0.024 * b],
                   ends=[ell(0.045 * wf, 0.962, 0.03 * b, 0.014 * b)], weight=0.3),
        _long_bone("ulna", [(-0.035 * wf, 0.945), (-0.04 * wf, 1.15)], [0.03 * b, 0.026 * b],
                   ends=[ell(-0.035 * wf, 0.94, 0.035 * b, 0.028 * b)], weight=0.3),
    ]
    tissue = [cap(0.0, -0.1, 0.0, 1.1, 0.17 * t, 0.13 * t), ell(-0.05, 0.0, 0.32 * t, 0.14)]
    return bones, tissue


def _forearm(a, kind):
    b, t, j = a["bw"], a["tw"], a["jit"]
    sf = _spread(kind)
    xr, xu = 0.06 * sf + 0.01 * j[2], -0.05 * sf
    bones = [
        _long_bone("radius", [(xr, 0.03), (xr + 0.005, 0.2), (xr + 0.02 + 0.01 * j[3], 0.6), (xr + 0.015, 0.9)],
                   [0.018 * b, 0.022 * b, 0.026 * b, 0.03 * b],
                   ends=[ell(xr, 0.03, 0.03 * b, 0.016 * b), trap(xr + 0.015, 0.88, xr + 0.02, 0.97, 0.03 * b, 0.058 * b),
                         ell(xr + 0.02, 0.97, 0.06 * b * (0.5 + 0.5 * sf), 0.022 * b)], weight=2.0),
        _long_bone("ulna", [(xu, 0.02), (xu - 0.005, 0.3), (xu - 0.01, 0.96)], [0.034 * b, 0.026 * b, 0.018 * b],
                   ends=[ell(xu + 0.005, 0.0, 0.04 * b, 0.04 * b), ell(xu - 0.01, 0.965, 0.022 * b, 0.018 * b)],
                   weight=2.0),
        Bone("humerus", [ell(0.0, -0.04, 0.11 * b * (0.5 + 0.5 * sf), 0.04 * b)], (-0.05, -0.04, 0.05, -0.04, 0.03),
             inner=0.7, weight=0.1),
    ]
    for i in range(3):
        bones.append(_short_bone(f"carpal{i}", (0.06 - 0.06 * i) * sf, 1.025, 0.035 * b, 0.028 * b, weight=0.05))
    tissue = [cap(0.0, -0.1, 0.0, 1.1, 0.165 * t, 0.12 * t)]
    return bones, tissue


def _elbow(a, kind):
    b, t, j = a["bw"], a["tw"], a["jit"]
    wf = {"frontal": 1.0, "oblique": 0.8, "lateral": 0.55}[kind]
    sf = _spread(kind)
    flex = {"frontal": 4.0 * j[4], "oblique": 25.0 + 8 * j[4], "lateral": 80.0 + 12 * j[4]}[kind]
    jx, jy = 0.0, 0.5
    humerus = _long_bone("humerus", [(0.0, -0.05), (0.005 * j[5], 0.38)], [0.05 * b, 0.055 * b],
                         ends=[trap(0.0, 0.34, 0.0, 0.47, 0.052 * b, 0.125 * b * wf), ell(0.0, 0.47, 0.13 * b * wf, 0.035 * b),
                               ell(0.06 * wf, 0.5, 0.04 * b, 0.035 * b), ell(-0.05 * wf, 0.5, 0.045 * b, 0.035 * b),
                               ell(-0.13 * wf, 0.44, 0.025 * b, 0.025 * b)], weight=2.0)
    radius = _long_bone("radius", [(0.06 * sf, 0.55), (0.065 * sf, 0.68), (0.08 * sf, 1.1)],
                        [0.022 * b, 0.024 * b, 0.028 * b], ends=[ell(0.06 * sf, 0.545, 0.04 * b, 0.016 * b)], weight=1.5)
    ulna = _long_bone("ulna", [(-0.04 * sf, 0.53), (-0.055 * sf, 1.1)], [0.04 * b, 0.026 * b],
                      ends=[ell(-0.04 * sf, 0.52, 0.045 * b, 0.045 * b)], weight=1.5)
    radius, ulna = _rotate_bone(radius, jx, jy, -flex), _rotate_bone(ulna, jx, jy, -flex)
    tissue = [cap(0.0, -0.15, 0.0, 0.5, 0.19 * t, 0.19 * t),
              _rotate_prim(cap(0.0, 0.5, 0.0, 1.15, 0.18 * t, 0.14 * t), jx, jy, -flex)]
    return [humerus, radius, ulna], tissue


def _wrist(a, kind):
    b, t, j = a["bw"], a["tw"], a["jit"]
    wf = {"frontal": 1.0, "oblique": 0.72, "lateral": 0.42}[kind]
    bones = [
        _long_bone("radius", [(0.06 * wf, -0.05), (0.06 * wf, 0.3)], [0.045 * b, 0.05 * b],
                   ends=[trap(0.06 * wf, 0.28, 0.065 * wf, 0.43, 0.05 * b, 0.088 * b * wf),
                         ell(0.07 * wf, 0.435, 0.085 * b * wf, 0.03 * b), ell(0.14 * wf, 0.44, 0.02 * b, 0.03 * b)],
                   weight=3.0),
        _long_bone("ulna", [(-0.1 * wf, -0.05), (-0.1 * wf, 0.38)], [0.032 * b, 0.03 * b],
                   ends=[ell(-0.1 * wf, 0.41, 0.036 * b, 0.03 * b)], weight=1.5),
    ]
    carpals = [("scaphoid", 0.09, 0.51, 0.05, 0.03, -30), ("lunate", 0.0, 0.51, 0.04, 0.035, 0),
               ("triquetrum", -0.075, 0.52, 0.035, 0.03, 10), ("pisiform", -0.1, 0.545, 0.022, 0.022, 0),
               ("trapezium", 0.13, 0.6, 0.04, 0.035, -20), ("trapezoid", 0.06, 0.6, 0.03, 0.03, 0),
               ("capitate", 0.0, 0.6, 0.035, 0.05, 0), ("hamate", -0.07, 0.6, 0.04, 0.045, 0)]
    for name, cx, cy, ax, ay, ang in carpals:
        bones.append(_short_bone(name, cx * wf, cy, ax * b, ay * b, ang,
                                 weight=1.0 if name == "scaphoid" else 0.25))
    for i in range(4):
        x0 = (0.08 - i * 0.055) * wf
        bones.append(_long_bone(f"metacarpal{i + 2}", [(x0, 0.66), (x0 * 1.3, 1.12)], [0.028 * b, 0.022 * b],
                                ends=[ell(x0, 0.665, 0.03 * b, 0.015 * b)], weight=0.3))
    bones.append(_long_bone("metacarpal1", [(0.15 * wf, 0.64), (0.25 * wf + 0.02 * j[6], 0.9)], [0.03 * b, 0.026 * b],
                            weight=0.3))
    tissue = [cap(0.0, -0.1, 0.0, 0.5, 0.17 * t, 0.18 * t), ell(0.0, 0.85, 0.22 * t * wf + 0.06, 0.35),
              cap(0.14 * wf, 0.6, 0.27 * wf, 0.95, 0.06 * t)]
    return bones, tissue


def _hand(a, kind):
    b, t, j = a["bw"], a["tw"], a["jit"]
    sf = _spread(kind)
    bones = [
        _long_bone("radius", [(0.06 * sf, -0.12), (0.06 * sf, 0.0)], [0.04 * b, 0.055 * b],
                   ends=[ell(0.065 * sf, 0.02, 0.07 * b * (0.5 + 0.5 * sf), 0.026 * b)], weight=0.6),
        _long_bone("ulna", [(-0.07 * sf, -0.12), (-0.07 * sf, 0.03)], [0.025 * b, 0.025 * b], weight=0.3),
    ]
    for k, (cx, cy) in enumerate([(0.06, 0.09), (0.0, 0.09), (-0.055, 0.1), (0.08, 0.16),
                                  (0.03, 0.16), (-0.015, 0.165), (-0.06, 0.165), (-0.08, 0.11)]):
        bones.append(_short_bone(f"carpal{k}", cx * sf, cy, 0.028 * b, 0.024 * b, 15 * j[k % 8], weight=0.15))
    tissue = [ell(0.0, 0.33, 0.16 * t * (0.55 + 0.45 * sf), 0.22), cap(0.0, -0.15, 0.0, 0.15, 0.12 * t, 0.14 * t)]
    lengths = (1.0, 1.07, 1.0, 0.82)
    for i in range(4):  # fingers 2..5 (index .. little)
        bx = (0.06 - i * 0.04) * sf
        ang = (9.0 - 6.0 * i + 2.0 * j[8 + i]) * sf
        mx = bx + math.sin(math.radians(ang)) * 0.28
        bones.append(_long_bone(f"metacarpal{i + 2}", [(bx, 0.22), (mx, 0.5)], [0.018 * b, 0.015 * b],
                                ends=[ell(mx, 0.505, 0.02 * b, 0.015 * b)], weight=0.8))
        l1 = 0.175 * lengths[i]
        flexion = {"frontal": 0.0, "oblique": 8.0, "lateral": 18.0}[kind]
        fb, tip = _chain(f"phalanx{i + 2}_", mx, 0.53, [ang, ang + flexion * 0.5, ang + flexion],
                         [l1, 0.6 * l1, 0.42 * l1], [(0.016 * b, 0.012 * b), (0.013 * b, 0.011 * b),
                                                     (0.011 * b, 0.008 * b)], 0.018, weight=1.0)
        bones += fb
        tissue.append(cap(mx, 0.5, tip[0], tip[1] - 0.01, 0.034 * t, 0.026 * t))
    th = 35.0 * (0.4 + 0.6 * sf)
    bones.append(_long_bone("metacarpal1", [(0.1 * sf, 0.2), (0.1 * sf + 0.12, 0.38)], [0.02 * b, 0.017 * b], weight=0.8))
    fb, tip = _chain("phalanx1_", 0.1 * sf + 0.135, 0.4, [th, th - 10], [0.12, 0.085],
                     [(0.017 * b, 0.014 * b), (0.014 * b, 0.01 * b)], 0.016, weight=0.8)
    bones += fb
    tissue.append(cap(0.1 * sf + 0.04, 0.22, tip[0], tip[1], 0.05 * t, 0.03 * t))
    return bones, tissue


def _finger(a, kind):
    b, t, j = a["bw"], a["tw"], a["jit"]
    flex = {"frontal": 0.0, "oblique": 10.0, "lateral": 22.0}[kind]
    a0 = 3.0 * j[12]
    bones = [_long_bone("metacarpal", [(0.0, -0.12), (0.0, 0.2)], [0.05 * b, 0.045 * b],
                        ends=[ell(0.0, 0.21, 0.055 * b, 0.04 * b)], weight=1.0)]
    fb, tip = _chain("phalanx", 0.0, 0.265, [a0, a0 + flex * 0.6, a0 + flex], [0.28, 0.17, 0.1],
                     [(0.045 * b, 0.033 * b), (0.035 * b, 0.028 * b), (0.03 * b, 0.02 * b)], 0.035, weight=2.0)
    bones += fb
    tissue = [cap(0.0, -0.15, 0.0, 0.25, 0.1 * t, 0.09 * t), cap(0.0, 0.25, tip[0], tip[1] - 0.02, 0.085 * t, 0.06 * t)]
    if a["neighbour"]:
        nx = 0.27 * (1 if j[13] > 0 else -1)
        nb, ntip = _chain("neighbour", nx, 0.3, [a0 + 8 * j[14], a0 + flex], [0.3, 0.2],
                          [(0.04 * b, 0.03 * b), (0.032 * b, 0.026 * b)], 0.035, weight=0.0)
        bones += nb
        tissue.append(cap(nx, 0.1, ntip[0], ntip[1], 0.08 * t, 0.065 * t))
    return bones, tissue


def _shoulder(a, kind):
    b, t, j = a["bw"], a["tw"], a["jit"]
    wf = {"frontal": 1.0, "oblique": 0.75, "lateral": 0.5}[kind]
    hx = 0.1 + 0.02 * j[15]
    bones = [
        _long_bone("humerus", [(hx + 0.02, 0.5), (hx + 0.06, 0.75), (hx + 0.08, 1.15)], [0.075 * b, 0.06 * b, 0.055 * b],
                   ends=[ell(hx, 0.4, 0.14 * b, 0.15 * b), ell(hx + 0.12, 0.38, 0.05 * b, 0.065 * b)], weight=3.0),
        Bone("scapula", [poly([(-0.08, 0.3), (-0.5 * wf - 0.05, 0.22), (-0.45 * wf - 0.05, 1.0), (-0.1, 0.56)]),
                         ell(-0.06, 0.42, 0.035 * b, 0.12 * b)], (-0.08, 0.3, -0.08, 0.56, 0.04),
             density=0.5, inner=0.0, weight=0.6),
        _long_bone("acromion", [(-0.5 * wf, 0.18), (0.14, 0.15)], [0.03 * b, 0.04 * b],
                   ends=[ell(0.15, 0.16, 0.08 * b, 0.035 * b)], weight=0.6),
        _long_bone("clavicle", [(-0.55, 0.02), (-0.2, 0.07), (0.12, 0.08)], [0.035 * b, 0.032 * b, 0.03 * b],
                   weight=1.2),
        _long_bone("coracoid", [(-0.05, 0.2), (0.02, 0.28)], [0.025 * b, 0.02 * b], weight=0.2),
    ]
    for k in range(3):
        y = 0.38 + 0.2 * k
        bones.append(Bone(f"rib{k}", [cap(-0.62, y, -0.38, y + 0.06, 0.018), cap(-0.38, y + 0.06, -0.2, y + 0.16, 0.016)],
                          (-0.62, y, -0.2, y + 0.16, 0.017), density=0.35, inner=0.5, weight=0.0))
    tissue = [ell(-0.25, 0.62, 0.6 * t, 0.62), ell(0.12, 0.62, 0.27 * t, 0.62), ell(0.0, 0.25, 0.38 * t, 0.2)]
    return bones, tissue


_TEMPLATES = {"XR_ELBOW": _elbow, "XR_FINGER": _finger, "XR_FOREARM": _forearm, "XR_HAND": _hand,
              "XR_HUMERUS": _humerus, "XR_SHOULDER": _shoulder, "XR_WRIST": _wrist}


def sample_anatomy(part: str, rng: np.random.Generator) -> dict:
    """Per-study anatomy parameters (the same patient arm in every view)."""
    return {
        "part": part,
        "bw": float(rng.uniform(0.85, 1.2)),  # bone width
        "tw": float(rng.uniform(0.85, 1.35)),  # soft-tissue width
        "jit": rng.uniform(-1.0, 1.0, 16),
        "neighbour": bool(rng.random() < 0.5),
        "bone_level": float(rng.uniform(0.36, 0.52)),
        "tissue_level": float(rng.uniform(0.16, 0.3)),
        "medulla": float(rng.uniform(0.55, 0.72)),
        "laterality": "L" if rng.random() < 0.5 else "R",
    }


def build_anatomy(anat: dict, kind: str) -> tuple[list[Bone], list]:
    bones, tissue = _TEMPLATES[anat["part"]](anat, kind)
    return bones, tissue


# --------------------------------------------------------------------------------------------
# Abnormalities (anatomy frame; fixed per study)
# --------------------------------------------------------------------------------------------
def _pick_bone(bones: list[Bone], rng) -> int:
    w = np.array([bn.weight for bn in bones], dtype=np.float64)
    return int(rng.choice(len(bones), p=w / w.sum()))


def _visible(n_views, rng, p=0.8):
    vis = rng.random(n_views) < p
    vis[rng.integers(n_views)] = True
    return [bool(v) for v in vis]


def sample_abnormalities(part: str, n_views: int, rng: np.random.Generator) -> list[dict]:
    """The abnormalities of one abnormal study: 1 or 2 of fracture / hardware / lesion."""
    bones, _ = build_anatomy({"part": part, "bw": 1.0, "tw": 1.0, "jit": np.zeros(16), "neighbour": False}, "frontal")
    kinds = ["fracture", "hardware", "lesion"]
    first = str(rng.choice(kinds, p=[0.35, 0.4, 0.25]))
    chosen = [first]
    if rng.random() < 0.3:
        second = {"fracture": "hardware", "hardware": "fracture", "lesion": "fracture"}[first]
        chosen.append(second)
    out = []
    for kind in chosen:
        bi = _pick_bone(bones, rng)
        # severity in [0.45, 1]: most findings survive downsampling to 128 px, some stay subtle
        sev = 0.45 + 0.55 * float(rng.uniform(0.0, 1.0)) ** 0.5
        if kind == "fracture":
            out.append({
                "kind": "fracture", "bone": bi, "t": float(rng.uniform(0.2, 0.8)),
                "angle": float(rng.uniform(-40, 40)),
                "width": float(0.024 + 0.036 * sev),  # anatomy units (1 unit ~ the image height)
                "depth": float(0.9 + 0.1 * sev),
                "disp": float(rng.uniform(0.4, 1.3) * sev if rng.random() < 0.8 else 0.0),
                "angulation": float(rng.uniform(-12, 12) * sev if rng.random() < 0.4 else 0.0),
                "lines": int(1 + (rng.random() < 0.25)),
                "kinks": rng.uniform(-1, 1, 6).tolist(),
                "cast": bool(rng.random() < 0.5),
                "swelling": float(rng.uniform(0.5, 1.0)),
                "views": _visible(n_views, rng, 0.9),
            })
        elif kind == "lesion":
            out.append({
                "kind": "lesion", "bone": bi, "t": float(rng.uniform(0.15, 0.85)),
                "u": float(rng.uniform(-0.4, 0.4)),
                "radius": float(1.5 + 1.5 * sev),  # relative to the bone radius
                "aspect": float(rng.uniform(0.6, 1.0)), "rot": float(rng.uniform(0, 180)),
                "lytic": bool(rng.random() < 0.6),
                "expansile": bool(rng.random() < 0.35),
                "depth": float(0.8 + 0.2 * sev),
                "satellites": int(rng.integers(0, 3)), "sat": rng.uniform(-1, 1, 6).tolist(),
                "views": _visible(n_views, rng, 0.9),
            })
        else:
            if part == "XR_SHOULDER" and rng.random() < 0.4:
                hw = "prosthesis"
                bi = 0
            else:
                hw = str(rng.choice(["plate", "screws", "wires", "nail"], p=[0.4, 0.25, 0.2, 0.15]))
            out.append({
                "kind": "hardware", "type": hw, "bone": bi,
                "t0": float(rng.uniform(0.1, 0.45)), "t1": float(rng.uniform(0.55, 0.9)),
                "side": float(rng.choice([-1.0, 1.0])), "n": int(rng.integers(2, 6)),
                "tilt": rng.uniform(-1, 1, 8).tolist(),
                "level": float(rng.uniform(0.98, 1.0)),
                "views": [True] * n_views,
            })
    return out


# --------------------------------------------------------------------------------------------
# Views and confounders
# --------------------------------------------------------------------------------------------
def sample_view(part: str, rng: np.random.Generator) -> dict:
    """Per-view geometry, exposure and noise (independent of the label)."""
    long_side = int(rng.integers(256, 513))
    if part in ("XR_HUMERUS", "XR_FOREARM"):
        aspect = rng.uniform(0.6, 0.9) if rng.random() < 0.85 else rng.uniform(1.1, 1.5)
    elif part == "XR_SHOULDER":
        aspect = rng.uniform(0.8, 1.5)
    else:
        aspect = rng.uniform(0.6, 1.0) if rng.random() < 0.75 else rng.uniform(1.0, 1.5)
    if aspect <= 1.0:
        h, w = long_side, int(round(long_side * aspect))
    else:
        w, h = long_side, int(round(long_side / aspect))
    return {
        "h": h, "w": w,
        "rot": float(rng.normal(0.0, 7.0)) + (180.0 if rng.random() < 0.05 else 0.0),
        "zoom": float(rng.uniform(0.85, 1.15)),
        "dx": float(rng.uniform(-0.05, 0.05)), "dy": float(rng.uniform(-0.05, 0.05)),
        "bg": float(rng.uniform(0.0, 0.12)),
        "knee": float(rng.uniform(1.0, 2.0)),
        "gain": float(rng.uniform(0.85, 1.15)), "bias": float(rng.uniform(-0.06, 0.06)),
        "gamma": float(np.exp(rng.uniform(-0.35, 0.35))),
        "blur": float(rng.uniform(0.5, 1.3)),
        "noise": float(rng.uniform(0.004, 0.025)),
        "texture": float(rng.uniform(0.05, 0.16)),
        "heel": rng.uniform(-0.05, 0.05, 2).tolist(),
        "noise_seed": int(rng.integers(2**31)),
    }


def sample_confounders(laterality: str, rng: np.random.Generator) -> dict:
    """Markers, rulers, collimation: drawn in both classes at the same rates."""
    c = {"marker": None, "ruler": None, "collimation": None, "text": None}
    if rng.random() < 0.65:
        letter = laterality if rng.random() < 0.85 else ("L" if laterality == "R" else "R")
        c["marker"] = {"letter": letter, "pos": rng.uniform(0.03, 0.97, 2).tolist(),
                       "corner": int(rng.integers(4)), "size": float(rng.uniform(0.04, 0.08)),
                       "thick": int(rng.integers(2, 5)), "box": bool(rng.random() < 0.35),
                       "level": float(rng.uniform(0.85, 1.0)), "font": int(rng.integers(2))}
    if rng.random() < 0.25:
        c["ruler"] = {"edge": int(rng.integers(4)), "start": float(rng.uniform(0.05, 0.4)),
                      "length": float(rng.uniform(0.35, 0.6)), "width": float(rng.uniform(0.025, 0.045)),
                      "inset": float(rng.uniform(0.01, 0.08)), "level": float(rng.uniform(0.65, 0.95)),
                      "ticks": int(rng.integers(12, 30))}
    if rng.random() < 0.45:
        c["collimation"] = {"inset": rng.uniform(0.02, 0.14, 4).tolist(), "rot": float(rng.normal(0, 2.0)),
                            "level": float(rng.uniform(0.0, 0.06) if rng.random() < 0.6 else rng.uniform(0.55, 0.9))}
    if rng.random() < 0.2:
        c["text"] = {"text": str(rng.choice(["AP", "LAT", "OBL", "PA", "1", "2"])),
                     "pos": rng.uniform(0.05, 0.95, 2).tolist(), "level": float(rng.uniform(0.7, 1.0))}
    return c


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
class _Xf:
    """Similarity transform anatomy -> pixels."""

    def __init__(self, part: str, view: dict, laterality: str):
        h, w = view["h"], view["w"]
        x0, x1, y0, y1 = _EXTENT[part]
        ex, ey = x1 - x0, y1 - y0
        base = 180.0 if part in _DISTAL_UP else 0.0  # hands and fingers point up, as usually shown
        if ey / ex > 1.3 and w > h:
            base += 90.0
        theta = math.radians(base + view["rot"])
        c, s_ = abs(math.cos(theta)), abs(math.sin(theta))
        fit_w, fit_h = ex * c + ey * s_, ex * s_ + ey * c
        self.s = view["zoom"] * min(w / fit_w, h / fit_h)
        self.flip = -1.0 if laterality == "R" else 1.0
        self.theta = theta
        self.ct, self.st = math.cos(theta), math.sin(theta)
        self.cx, self.cy = (x0 + x1) / 2, (y0 + y1) / 2
        self.ox, self.oy = w / 2 + view["dx"] * w, h / 2 + view["dy"] * h

    def pt(self, x, y):
        x = (x - self.cx) * self.flip * self.s
        y = (y - self.cy) * self.s
        return self.ox + self.ct * x - self.st * y, self.oy + self.st * x + self.ct * y

    def vec(self, dx, dy):
        dx = dx * self.flip
        return self.ct * dx - self.st * dy, self.st * dx + self.ct * dy

    def angle(self, deg):
        return (deg * self.flip) + math.degrees(self.theta)


def _px_prim(p, xf: _Xf, scale=1.0):
    """Primitive in pixels: ('cap', (x0,y0), (x1,y1), r0, r1) etc."""
    if p[0] == "cap":
        return ("cap", xf.pt(p[1], p[2]), xf.pt(p[3], p[4]), p[5] * xf.s * scale, p[6] * xf.s * scale)
    if p[0] == "ell":
        return ("ell", xf.pt(p[1], p[2]), p[3] * xf.s * scale, p[4] * xf.s * scale, xf.angle(p[5]))
    pts = np.array([xf.pt(x, y) for x, y in p[1]])
    if scale != 1.0:
        c = pts.mean(0)
        pts = c + (pts - c) * scale
    return ("poly", pts)


def _bbox(pp):
    if pp[0] == "cap":
        r = max(pp[3], pp[4])
        xs, ys = (pp[1][0], pp[2][0]), (pp[1][1], pp[2][1])
        return min(xs) - r, min(ys) - r, max(xs) + r, max(ys) + r
    if pp[0] == "ell":
        r = max(pp[2], pp[3])
        return pp[1][0] - r, pp[1][1] - r, pp[1][0] + r, pp[1][1] + r
    return pp[1][:, 0].min(), pp[1][:, 1].min(), pp[1][:, 0].max(), pp[1][:, 1].max()


def _fx(v):
    return int(round(v * _ONE))


def _draw(img, pp, value, off=(0.0, 0.0)):
    ox, oy = off
    if pp[0] == "cap":
        (x0, y0), (x1, y1), r0, r1 = pp[1], pp[2], pp[3], pp[4]
        x0, y0, x1, y1 = x0 - ox, y0 - oy, x1 - ox, y1 - oy
        dx, dy = x1 - x0, y1 - y0
        n = math.hypot(dx, dy) or 1.0
        nx, ny = -dy / n, dx / n
        quad = np.array([[_fx(x0 + nx * r0), _fx(y0 + ny * r0)], [_fx(x1 + nx * r1), _fx(y1 + ny * r1)],
                         [_fx(x1 - nx * r1), _fx(y1 - ny * r1)], [_fx(x0 - nx * r0), _fx(y0 - ny * r0)]], np.int32)
        cv2.fillConvexPoly(img, quad, value, cv2.LINE_8, _SHIFT)
        cv2.circle(img, (_fx(x0), _fx(y0)), _fx(r0), value, -1, cv2.LINE_8, _SHIFT)
        cv2.circle(img, (_fx(x1), _fx(y1)), _fx(r1), value, -1, cv2.LINE_8, _SHIFT)
    elif pp[0] == "ell":
        (cx, cy), ax, ay, ang = pp[1], pp[2], pp[3], pp[4]
        cv2.ellipse(img, (_fx(cx - ox), _fx(cy - oy)), (max(_fx(ax), 1), max(_fx(ay), 1)), ang, 0, 360, value, -1,
                    cv2.LINE_8, _SHIFT)
    else:
        pts = np.round((pp[1] - np.array([ox, oy])) * _ONE).astype(np.int32)
        cv2.fillPoly(img, [pts], value, cv2.LINE_8, _SHIFT)


def _axis_px(bone: Bone, xf: _Xf, t: float):
    """Pixel point at t along the bone's axis, the unit axis direction and the radius in pixels."""
    x0, y0, x1, y1, r = bone.axis
    p = xf.pt(x0 + t * (x1 - x0), y0 + t * (y1 - y0))
    d = xf.vec(x1 - x0, y1 - y0)
    n = math.hypot(*d) or 1.0
    return np.array(p), np.array(d) / n, r * xf.s


def _fracture(arr, off, bone, f, xf):
    p, d, r = _axis_px(bone, xf, f["t"])
    p = p - np.array(off)
    a = math.radians(f["angle"])
    nrm = np.array([-d[1], d[0]])
    ldir = nrm * math.cos(a) + d * math.sin(a)  # direction of the fracture line
    width = max(1.5, f["width"] * xf.s)
    mask = np.zeros_like(arr)
    for k in range(f["lines"]):
        q = p + d * (k * 1.6 * r)
        pts = []
        for i, kk in enumerate(np.linspace(-1.6, 1.6, 6)):
            jitter = f["kinks"][i] * 0.12 * r
            pts.append(q + ldir * kk * r + d * jitter)
        cv2.polylines(mask, [np.round(np.array(pts) * _ONE).astype(np.int32)], False, 1.0,
                      max(1, int(round(width))), cv2.LINE_8, _SHIFT)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.6)
    arr *= 1.0 - f["depth"] * mask
    if f["disp"] > 0 or f["angulation"] != 0:
        h, w = arr.shape
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        lnorm = np.array([-ldir[1], ldir[0]])
        if np.dot(lnorm, d) < 0:
            lnorm = -lnorm
        side = (xx - p[0]) * lnorm[0] + (yy - p[1]) * lnorm[1] > 0
        shift = ldir * f["disp"] * r + lnorm * width * 0.4
        ang = math.radians(f["angulation"])
        ca, sa = math.cos(-ang), math.sin(-ang)
        rx, ry = xx - p[0] - shift[0], yy - p[1] - shift[1]
        mx = np.where(side, p[0] + ca * rx - sa * ry, xx).astype(np.float32)
        my = np.where(side, p[1] + sa * rx + ca * ry, yy).astype(np.float32)
        arr[:] = cv2.remap(arr, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _lesion(arr, off, bone, les, xf):
    p, d, r = _axis_px(bone, xf, les["t"])
    nrm = np.array([-d[1], d[0]])
    rad = les["radius"] * r
    axis_deg = math.degrees(math.atan2(d[1], d[0]))
    if les["expansile"]:
        # a bubbly lesion that widens the bone: thin bright shell, lucent inside
        c = p - np.array(off)
        ax_along, ax_across = rad * 1.3, max(r * 1.3, rad * 0.85)
        shell = np.zeros_like(arr)
        centre = (_fx(c[0]), _fx(c[1]))
        cv2.ellipse(shell, centre, (_fx(ax_along), _fx(ax_across)), axis_deg, 0, 360, 1.0, -1, cv2.LINE_8, _SHIFT)
        inner = np.zeros_like(arr)
        t = max(1.5, 0.12 * r)
        cv2.ellipse(inner, centre, (_fx(max(ax_along - t, 1)), _fx(max(ax_across - t, 1))), axis_deg, 0, 360, 1.0, -1,
                    cv2.LINE_8, _SHIFT)
        ring = shell - inner
        arr[:] = np.maximum(arr, ring * bone.density * 0.9)
        arr *= 1.0 - les["depth"] * cv2.GaussianBlur(inner, (0, 0), max(0.8, 0.1 * rad))
        return
    c = p - np.array(off) + nrm * les["u"] * r
    blob = np.zeros_like(arr)
    cv2.ellipse(blob, (_fx(c[0]), _fx(c[1])), (max(_fx(rad), 1), max(_fx(rad * les["aspect"]), 1)), les["rot"], 0, 360,
                1.0, -1, cv2.LINE_8, _SHIFT)
    for k in range(les["satellites"]):
        sc = c + np.array(les["sat"][2 * k:2 * k + 2]) * rad * 1.2
        cv2.circle(blob, (_fx(sc[0]), _fx(sc[1])), max(_fx(rad * 0.45), 1), 1.0, -1, cv2.LINE_8, _SHIFT)
    blob = cv2.GaussianBlur(blob, (0, 0), max(0.8, rad * 0.2))
    inside = (arr > 0).astype(np.float32)
    if les["lytic"]:
        arr *= 1.0 - les["depth"] * blob
    else:
        arr += les["depth"] * 1.1 * bone.density * blob * inside


def _hardware(metal, hw, bones, xf, level):
    bone = bones[hw["bone"]]
    x0, y0, x1, y1, r = bone.axis
    dx, dy = x1 - x0, y1 - y0
    n = math.hypot(dx, dy) or 1.0
    ux, uy = dx / n, dy / n
    nx, ny = -uy, ux

    def at(t, u):  # anatomy point at t along the axis, u (in radii) across
        return x0 + t * dx + nx * u * r, y0 + t * dy + ny * u * r

    def rect(p0, p1, half):  # filled rectangle between anatomy points, half-width in anatomy units
        a, b = np.array(xf.pt(*p0)), np.array(xf.pt(*p1))
        v = b - a
        ln = np.linalg.norm(v) or 1.0
        q = np.array([-v[1], v[0]]) / ln * max(half * xf.s, 0.9)
        pts = np.array([a + q, b + q, b - q, a - q])
        cv2.fillConvexPoly(metal, np.round(pts * _ONE).astype(np.int32), level, cv2.LINE_8, _SHIFT)

    t0, t1, side, k = hw["t0"], hw["t1"], hw["side"], hw["n"]
    tilt = hw["tilt"]
    kind = hw["type"]
    if kind == "plate":
        rect(at(t0, side * 1.2), at(t1, side * 1.2), 0.45 * r)
        for i in range(k + 1):
            t = t0 + (t1 - t0) * (i + 0.5) / (k + 1)
            rect(at(t, side * 1.5), at(t + 0.02 * tilt[i % 8], -side * 1.15), 0.18 * r)
    elif kind == "screws":
        for i in range(min(k, 3)):
            t = t0 + (t1 - t0) * i / max(1, min(k, 3) - 1) if k > 1 else (t0 + t1) / 2
            a, b = at(t, side * 1.3), at(t + 0.08 * tilt[i], -side * 1.0)
            rect(a, b, 0.22 * r)
            rect(at(t - 0.02, side * 1.35), at(t + 0.02, side * 1.35), 0.3 * r)  # screw head
    elif kind == "wires":
        for i in range(min(k, 3)):
            ta = t0 + 0.1 * i
            rect(at(ta, side * (1.6 + 0.3 * tilt[i])), at(ta + 0.35 + 0.1 * tilt[i + 3], -side * (1.2 + 0.3 * tilt[i + 5])),
                 max(0.12 * r, 0.006))
    elif kind == "nail":
        rect(at(-0.05, 0.0), at(0.95, 0.0), 0.35 * r)
        for t in (0.1, 0.85):
            rect(at(t, 1.4), at(t, -1.4), 0.14 * r)
    else:  # shoulder prosthesis: metal head + stem down the humerus
        hx, hy = xf.pt(x0 - ux * 0.1, y0 - uy * 0.1)
        cv2.circle(metal, (_fx(hx), _fx(hy)), _fx(0.13 * xf.s), level, -1, cv2.LINE_8, _SHIFT)
        rect(at(-0.1, 0.0), at(0.55, 0.0), 0.45 * r)


def _cast(layer, bones, xf):
    pts = []
    for bn in bones:
        if bn.weight > 0.5:
            x0, y0, x1, y1, _r = bn.axis
            pts += [xf.pt(x0, y0), xf.pt(x1, y1)]
    if len(pts) < 2:
        return
    pts = np.array(pts, np.float32)
    rect = cv2.minAreaRect(pts)
    (cx, cy), (w, h), ang = rect
    grow = 0.22 * xf.s
    box = cv2.boxPoints(((cx, cy), (w + grow, h + grow), ang))
    cv2.fillConvexPoly(layer, np.round(box * _ONE).astype(np.int32), 1.0, cv2.LINE_8, _SHIFT)


_BODY_WHITE = 0.86  # brightest tissue or bone after processing; metal is drawn at ~1.0 above it


def _lowres_noise(rng, h, w, cell):
    small = rng.standard_normal((max(2, h // cell), max(2, w // cell))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def render_view(anat: dict, kind: str, view: dict, abn: list[dict], view_index: int, conf: dict,
                abnormal: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One radiograph: (uint8 image HxW, uint8 bone mask HxW)."""
    part = anat["part"]
    h, w = view["h"], view["w"]
    bones, tissue = build_anatomy(anat, kind)
    xf = _Xf(part, view, anat["laterality"])
    rng = np.random.default_rng(view["noise_seed"])
    active = [a for a in abn if abnormal and a["views"][view_index]]

    # soft tissue at quarter resolution
    q = 4
    hs, ws = max(8, h // q), max(8, w // q)
    xf_s = _Xf(part, {**view, "h": hs, "w": ws, "dx": view["dx"], "dy": view["dy"]}, anat["laterality"])
    soft = np.zeros((hs, ws), np.float32)
    for p in tissue:
        _draw(soft, _px_prim(p, xf_s), 1.0)
    for a in active:
        if a["kind"] == "fracture":
            pc, _d, r = _axis_px(bones[a["bone"]], xf_s, a["t"])
            cv2.circle(soft, (_fx(pc[0]), _fx(pc[1])), _fx(r * (2.2 + 1.5 * a["swelling"])), 1.0 + 0.3 * a["swelling"],
                       -1, cv2.LINE_8, _SHIFT)
    soft = cv2.GaussianBlur(soft, (0, 0), max(1.0, 0.012 * xf_s.s))
    soft = cv2.resize(soft, (w, h), interpolation=cv2.INTER_LINEAR)
    soft *= 1.0 + 0.08 * _lowres_noise(rng, h, w, 24)

    # bones, each in its own box, summed (overlaps add up as in a projection)
    bone = np.zeros((h, w), np.float32)
    for bi, bn in enumerate(bones):
        outer = [_px_prim(p, xf) for p in bn.prims]
        boxes = np.array([_bbox(pp) for pp in outer])
        pad = 6 + 0.1 * xf.s
        bx0 = int(max(0, math.floor(boxes[:, 0].min() - pad)))
        by0 = int(max(0, math.floor(boxes[:, 1].min() - pad)))
        bx1 = int(min(w, math.ceil(boxes[:, 2].max() + pad)))
        by1 = int(min(h, math.ceil(boxes[:, 3].max() + pad)))
        if bx1 - bx0 < 2 or by1 - by0 < 2:
            continue
        arr = np.zeros((by1 - by0, bx1 - bx0), np.float32)
        off = (bx0, by0)
        for pp in outer:
            _draw(arr, pp, bn.density, off)
        if bn.inner > 0:
            med = bn.density * (anat["medulla"] if bn.medulla is None else bn.medulla)
            for p in bn.prims:
                sc = bn.inner if p[0] == "cap" else max(bn.inner, 0.78)
                _draw(arr, _px_prim(p, xf, sc), med, off)
        for a in active:
            if a["bone"] != bi:
                continue
            if a["kind"] == "fracture":
                _fracture(arr, off, bn, a, xf)
            elif a["kind"] == "lesion":
                _lesion(arr, off, bn, a, xf)
        bone[by0:by1, bx0:bx1] += arr
    bone_mask = (bone > 0.05).astype(np.uint8)
    bone = cv2.GaussianBlur(bone, (0, 0), 0.8)
    bone *= 1.0 + view["texture"] * _lowres_noise(rng, h, w, 6)

    img = view["bg"] + anat["tissue_level"] * soft + anat["bone_level"] * bone
    if any(a["kind"] == "fracture" and a["cast"] for a in active):
        castl = np.zeros((h, w), np.float32)
        _cast(castl, bones, xf)
        castl = cv2.GaussianBlur(castl, (0, 0), 1.5)
        yy, xx = np.mgrid[0:h, 0:w]
        period = max(3, int(0.012 * xf.s))
        mesh = 0.85 + 0.15 * (((xx + yy) // period + (xx - yy) // period) % 2)
        img = img + 0.2 * castl * mesh.astype(np.float32)
    # heel effect / exposure gradient
    gy = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    gx = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    img = img * (1.0 + view["heel"][0] * gy + view["heel"][1] * gx)
    k = view["knee"]
    img = (1.0 - np.exp(-k * img)) / (1.0 - math.exp(-k * 1.45))  # bone ~0.7, overlaps brighter
    # bone never reaches white: only metal (and the markers and rulers drawn over it) saturates
    img = _BODY_WHITE * np.clip(view["gain"] * img + view["bias"], 0.0, 1.0) ** view["gamma"]

    metal = np.zeros((h, w), np.float32)
    for a in active:
        if a["kind"] == "hardware":
            _hardware(metal, a, bones, xf, a["level"])
    if metal.any():
        metal = cv2.GaussianBlur(metal, (0, 0), 0.7)
        img = np.maximum(img, metal)

    img = _confound(img, conf, h, w)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), view["blur"])
    img += view["noise"] * rng.standard_normal((h, w), dtype=np.float32)
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out, bone_mask


def _put_text(img, text, org, font, scale, level, thick):
    """Anti-aliased text (cv2.putText draws on 8-bit images only) blended over a float image."""
    mask = np.zeros(img.shape, np.uint8)
    cv2.putText(mask, text, org, font, scale, 255, thick, cv2.LINE_AA)
    a = mask.astype(np.float32) * (1.0 / 255.0)
    return img * (1.0 - a) + level * a


def _confound(img, conf, h, w):
    img = img.astype(np.float32)
    col = conf.get("collimation")
    if col:
        left, t, r, b = col["inset"]
        box = ((w * (0.5 + (left - r) / 2), h * (0.5 + (t - b) / 2)), (w * (1 - left - r), h * (1 - t - b)), col["rot"])
        mask = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(mask, np.round(cv2.boxPoints(box)).astype(np.int32), 1)
        img = np.where(mask > 0, img, np.float32(col["level"]))
    m = conf.get("marker")
    if m:
        short = min(h, w)
        font = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX)[m["font"]]
        target = m["size"] * max(h, w)
        (tw, th), _ = cv2.getTextSize(m["letter"], font, 1.0, m["thick"])
        scale = target / max(th, 1)
        (tw, th), _ = cv2.getTextSize(m["letter"], font, scale, m["thick"])
        # marker in a band along the image border (corner chosen at random)
        fx, fy = m["pos"]
        cx = fx * 0.25 if m["corner"] in (0, 2) else 1 - fx * 0.25
        cy = fy * 0.25 if m["corner"] in (0, 1) else 1 - fy * 0.25
        x = int(np.clip(cx * w - tw / 2, 2, max(2, w - tw - 2)))
        y = int(np.clip(cy * h + th / 2, th + 2, h - 2))
        if m["box"]:
            pad = max(2, th // 4)
            cv2.rectangle(img, (x - pad, y - th - pad), (x + tw + pad, y + pad), float(m["level"] * 0.9), max(1, short // 160))
        img = _put_text(img, m["letter"], (x, y), font, scale, float(m["level"]), m["thick"])
    r = conf.get("ruler")
    if r:
        horizontal = r["edge"] in (0, 1)
        length = (w if horizontal else h) * r["length"]
        width = max(5.0, min(h, w) * r["width"])
        start = (w if horizontal else h) * r["start"]
        inset = (h if horizontal else w) * r["inset"]
        if r["edge"] == 1:
            inset = h - inset - width
        if r["edge"] == 3:
            inset = w - inset - width
        if horizontal:
            x0, y0, x1, y1 = start, inset, start + length, inset + width
        else:
            x0, y0, x1, y1 = inset, start, inset + width, start + length
        cv2.rectangle(img, (int(x0), int(y0)), (int(x1), int(y1)), float(r["level"]), -1)
        n = r["ticks"]
        for i in range(n + 1):
            frac = i / n
            tl = 0.7 if i % 5 == 0 else 0.4
            if horizontal:
                xx = int(x0 + frac * (x1 - x0))
                cv2.line(img, (xx, int(y0)), (xx, int(y0 + tl * width)), 0.1, 1)
            else:
                yy = int(y0 + frac * (y1 - y0))
                cv2.line(img, (int(x0), yy), (int(x0 + tl * width), yy), 0.1, 1)
    t = conf.get("text")
    if t:
        scale = max(h, w) / 900.0
        img = _put_text(img, t["text"], (int(t["pos"][0] * w * 0.8), int(10 + t["pos"][1] * (h - 20))),
                        cv2.FONT_HERSHEY_SIMPLEX, scale, float(t["level"]), max(1, int(scale * 2)))
    return img
