"""A procedural metric-depth dataset: scenes of known geometry rendered through a pinhole camera,
so the ground truth is exact by construction and nothing is downloaded.

A depth head can only learn from what the image shows, so every scene carries the cues real
photographs carry: textures painted in metric surface coordinates (floor tiles shrink and
crowd towards the horizon; a box's grain is finer the farther it stands), occlusion, and aerial
perspective (colours fade towards a haze colour as exp(-Z / 4 m)). The horizon row, camera height,
focal length, room depth and materials vary per scene, so depth is not a fixed function of the
image row. Depths span about 1.2-7 m, a room as in NYU's indoor scenes.

Geometry (camera coordinates: x right, y down, z forward; the camera looks along z, level):

    focal f (px), principal point (cx, cy); pixel (u, v) has its centre at (u + 0.5, v + 0.5)
    ground plane y = H (camera H metres above it):  Z = H f / (v + 0.5 - cy)   below the horizon
    back wall, fronto-parallel at Z = Zw           (everything else is in front of it)
    boxes standing on the ground: a front face at Z = Zb (fronto-parallel, constant depth) and,
    when the camera looks down on it, a top face on the plane y = H - height

Depth is z-depth in metres (distance along the optical axis, what NYU-style depth maps store),
the nearest surface along the ray through each pixel centre (a z-buffer); the image is shaded
from the same hits, so image and depth agree pixel for pixel.

    scene = make_depth_scene(seed=3, height=160, width=192)   # .image uint8 HxWx3, .depth float32 HxW
    image, depth = make_depth_sample(seed=3, height=160, width=192)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FOG_DISTANCE = 4.0  # metres: the haze covers 1 - 1/e of a surface's colour at this depth
WALL, GROUND = 0, 1  # surface ids; box k has front face 2 + 2k and top face 3 + 2k


@dataclass(frozen=True)
class Camera:
    focal: float  # pixels
    cx: float
    cy: float  # the horizon row (level camera)
    height: float  # metres above the ground


@dataclass(frozen=True)
class Box:
    x0: float  # lateral extent (metres, camera x)
    x1: float
    z0: float  # front face depth
    z1: float  # back of the top face
    top: float  # height above the ground


@dataclass
class DepthScene:
    image: np.ndarray  # uint8 [H, W, 3]
    depth: np.ndarray  # float32 [H, W], metres, > 0 everywhere
    surface: np.ndarray  # uint8 [H, W]: WALL, GROUND, or a box face (2 + 2k front, 3 + 2k top)
    camera: Camera
    wall_depth: float
    boxes: list[Box]


def ground_depth(v: np.ndarray | float, cam: Camera) -> np.ndarray:
    """z-depth of the ground plane at image row coordinate v (continuous; pixel centres at row + 0.5);
    inf at and above the horizon."""
    dv = np.asarray(v, dtype=np.float64) - cam.cy
    with np.errstate(divide="ignore"):
        return np.where(dv > 0, cam.height * cam.focal / np.where(dv > 0, dv, 1.0), np.inf)


def _trace(u: np.ndarray, v: np.ndarray, cam: Camera, wall: float, boxes: list[Box]):
    """Nearest surface at continuous pixel coordinates (u, v): (depth, surface id, s, t) where (s, t)
    are metric coordinates on that surface (texture space)."""
    f = cam.focal
    xn, yn = (u - cam.cx) / f, (v - cam.cy) / f  # ray direction (xn, yn, 1): a point at depth Z is (xn Z, yn Z, Z)
    depth = np.full(u.shape, wall)
    surf = np.full(u.shape, WALL, dtype=np.uint8)
    s, t = xn * wall, yn * wall
    zg = ground_depth(v, cam)
    hit = zg < depth
    depth = np.where(hit, zg, depth)
    surf[hit] = GROUND
    s, t = np.where(hit, xn * zg, s), np.where(hit, zg, t)
    for k, b in enumerate(boxes):
        # front face: the rectangle x in [x0, x1], y in [H - top, H] at Z = z0
        x, y = xn * b.z0, yn * b.z0
        hit = (x >= b.x0) & (x <= b.x1) & (y >= cam.height - b.top) & (y <= cam.height) & (b.z0 < depth)
        depth = np.where(hit, b.z0, depth)
        surf[hit] = 2 + 2 * k
        s, t = np.where(hit, x, s), np.where(hit, y, t)
        if b.top < cam.height:  # the camera sees the top face (plane y = H - top) from above
            with np.errstate(divide="ignore", invalid="ignore"):
                zt = np.where(yn > 0, (cam.height - b.top) / np.where(yn > 0, yn, 1.0), np.inf)
            x = xn * zt
            hit = (zt >= b.z0) & (zt <= b.z1) & (x >= b.x0) & (x <= b.x1) & (zt < depth)
            depth = np.where(hit, zt, depth)
            surf[hit] = 3 + 2 * k
            s, t = np.where(hit, x, s), np.where(hit, zt, t)
    return depth, surf, s, t


# -- materials: (base colour, texture kind, texture scale in metres) -----------------------------------
_WALL_COLOURS = ((200, 190, 170), (170, 180, 195), (190, 160, 140), (150, 165, 150))
_GROUND_COLOURS = ((140, 110, 80), (120, 120, 125), (95, 120, 70), (175, 150, 115))
_BOX_COLOURS = ((180, 60, 50), (60, 90, 170), (210, 170, 60), (80, 140, 90), (150, 80, 150), (90, 160, 170))
_TEXTURES = ("tiles", "planks", "waves", "grain")


def _texture(kind: str, rng: np.random.Generator, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A pattern in metric surface coordinates, roughly in [-1, 1]."""
    # a few random plane waves: resolution-independent noise, 1-5 cycles per metre
    n = 4
    freq = rng.uniform(1.0, 5.0, size=n)
    ang = rng.uniform(0, np.pi, size=n)
    phase = rng.uniform(0, 2 * np.pi, size=n)
    noise = sum(np.sin(2 * np.pi * fr * (s * np.cos(a) + t * np.sin(a)) + p)
                for fr, a, p in zip(freq, ang, phase)) / n  # fmt: skip
    if kind == "tiles":
        p = rng.uniform(0.3, 0.6)
        return np.where(((np.floor(s / p) + np.floor(t / p)) % 2) == 0, 0.55, -0.55) + 0.3 * noise
    if kind == "planks":
        p = rng.uniform(0.15, 0.3)
        seam = (s / p) % 1.0 < 0.08
        return np.where(seam, -1.0, 0.35 * np.sin(2 * np.pi * t * rng.uniform(3, 6)) + 0.3 * noise)
    if kind == "waves":
        return 0.8 * np.sin(2 * np.pi * rng.uniform(2, 4) * (s + 0.3 * t) + 2 * noise)
    return 0.9 * noise  # grain


def _material(rng: np.random.Generator, colours) -> tuple[np.ndarray, str, np.random.Generator]:
    colour = np.asarray(colours[int(rng.integers(len(colours)))], dtype=np.float64)
    colour = colour * rng.uniform(0.85, 1.15) + rng.normal(0, 6, size=3)
    return colour, _TEXTURES[int(rng.integers(len(_TEXTURES)))], np.random.default_rng(rng.integers(2**32))


def _random_scene(rng: np.random.Generator, h: int, w: int) -> tuple[Camera, float, list[Box]]:
    hfov = np.deg2rad(rng.uniform(55, 70))
    focal = (w / 2) / np.tan(hfov / 2)
    horizon, height = float(h * rng.uniform(0.28, 0.5)), float(rng.uniform(1.0, 1.7))
    cam = Camera(focal=float(focal), cx=w / 2, cy=horizon, height=height)
    wall = float(rng.uniform(3.5, 7.0))  # room-sized, as NYU's indoor scenes
    boxes = []
    for _ in range(int(rng.integers(2, 5))):
        z0 = float(rng.uniform(1.2, wall - 0.6))
        half_view = z0 * (w / 2) / focal  # lateral half-width visible at depth z0
        width = float(rng.uniform(0.4, 1.4))
        x0 = float(rng.uniform(-half_view, half_view - width * 0.5))
        top = float(rng.uniform(0.3, 1.9))
        boxes.append(Box(x0=x0, x1=x0 + width, z0=z0, z1=min(z0 + float(rng.uniform(0.3, 1.2)), wall), top=top))
    return cam, wall, boxes


def make_depth_scene(seed: int, height: int, width: int) -> DepthScene:
    """One rendered scene; the same (seed, height, width) gives the same scene."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(height), int(width), 0xD3]))
    h, w = int(height), int(width)
    cam, wall, boxes = _random_scene(rng, h, w)

    # one ray per pixel centre: the depth is exact there, and the image is shaded from the same hit
    vv, uu = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    depth, surface, s, t = _trace(uu, vv, cam, wall, boxes)
    rgb = np.zeros((h, w, 3))
    materials = [_material(rng, _WALL_COLOURS), _material(rng, _GROUND_COLOURS)]
    for _ in boxes:
        front = _material(rng, _BOX_COLOURS)
        materials += [front, (front[0] * 0.8 + 30, front[1], front[2])]  # top face: same material, lit differently
    for sid, (colour, kind, tex_rng) in enumerate(materials):
        sel = surface == sid
        if sel.any():
            tex = _texture(kind, tex_rng, s[sel], t[sel])
            rgb[sel] = colour[None, :] * (1 + 0.3 * tex[:, None])
    # aerial perspective (it also damps the far textures that would alias), a light gradient, sensor noise
    fog_colour = np.array([200.0, 205.0, 215.0])
    fade = np.exp(-depth / FOG_DISTANCE)[..., None]
    rgb = rgb * fade + fog_colour * (1 - fade)
    light = 1 + rng.uniform(-0.1, 0.1) * ((np.arange(w) + 0.5) / w - 0.5)[None, :, None]
    image = np.clip(rgb * light + rng.normal(0, 3, size=rgb.shape), 0, 255).astype(np.uint8)
    return DepthScene(image=image, depth=depth.astype(np.float32), surface=surface, camera=cam, wall_depth=wall,
                      boxes=boxes)


def make_depth_sample(seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 [H,W,3], depth float32 [H,W] in metres) of scene `seed`."""
    scene = make_depth_scene(seed, height, width)
    return scene.image, scene.depth
