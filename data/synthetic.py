"""Synthetic labelled video: textured shapes moving over a panning background, with exact
segmentation and depth. Positions are functions of real time, so irregular timestamps matter.

Everything random is drawn from the caller's `np.random.Generator`: one seed, one clip.
The scene is drawn before the frame gaps, so re-rendering a seed with explicit timestamps shows
the same scene at other times.

By default objects move at constant velocity (bouncing off the borders), so a few frames determine
the future. With `event_rate > 0` each object's velocity changes at random times (a Poisson
process): it turns by a random angle and takes a new random speed, so the future is uncertain.
The events are part of the scene, drawn from a copy of the caller's stream jumped far ahead, which
leaves the caller's rng untouched: the same seed gives the same scene and frame times with events
on or off, and the two clips agree up to the first event.
"""

from dataclasses import dataclass

import numpy as np
import torch

SHAPES = ("disc", "square", "triangle")  # class c >= 1 is drawn as SHAPES[(c - 1) % 3]
# class tints (RGB, 0..255), cycled for class c >= 1 as PALETTE[(c - 1) % len(PALETTE)]
PALETTE = np.array(
    [[230, 60, 60], [60, 200, 80], [70, 90, 230], [235, 200, 50], [200, 70, 220], [60, 210, 220]],
    dtype=np.float32,
)
BG_WAVES = 6


def sample_gaps(rng: np.random.Generator, num_frames: int, min_gap: float, max_gap: float) -> np.ndarray:
    """Timestamps (num_frames,) float64 in seconds, t0 = 0, gaps i.i.d. uniform in [min_gap, max_gap]."""
    if num_frames < 1 or not 0 < min_gap <= max_gap:
        raise ValueError(f"need num_frames >= 1 and 0 < min_gap <= max_gap, got {num_frames}, {min_gap}, {max_gap}")
    gaps = rng.uniform(min_gap, max_gap, size=num_frames - 1)
    return np.concatenate([[0.0], np.cumsum(gaps)])


@dataclass
class Scene:
    """All parameters of a clip; pixel units refer to a (height, width) frame, velocities are px/s."""

    height: int
    width: int
    cam_vel: np.ndarray  # (2,) background pan (x, y)
    bg_base: np.ndarray  # (3,) mean background colour
    bg_freq: np.ndarray  # (K, 2) plane-wave frequencies, rad/px
    bg_phase: np.ndarray  # (K,)
    bg_amp: np.ndarray  # (K, 3) per-wave colour amplitude
    bg_depth: float  # metres, mean background depth
    bg_depth_amp: float  # metres, amplitude of the smooth depth wave
    bg_depth_freq: np.ndarray  # (2,) rad/px
    bg_depth_phase: float
    obj_class: np.ndarray  # (n,) int in 1..num_classes-1
    obj_pos: np.ndarray  # (n, 2) centre (x, y) at t = 0
    obj_vel: np.ndarray  # (n, 2)
    obj_radius: np.ndarray  # (n,)
    obj_depth: np.ndarray  # (n,) metres
    obj_color: np.ndarray  # (n, 3)
    obj_tex_freq: np.ndarray  # (n, 2) stripe texture frequency, rad/px, fixed to the object
    obj_tex_phase: np.ndarray  # (n,)
    obj_event_time: np.ndarray  # (n, E) seconds, ascending per object, inf after its last event; E = 0: none
    obj_event_vel: np.ndarray  # (n, E, 2) velocity from each event on


def _unit(angle: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(angle), np.sin(angle)], -1)  # (..., 2)


def _velocity(rng: np.random.Generator, n: int, lo: float, hi: float, size: np.ndarray) -> np.ndarray:
    """(n, 2) velocities covering lo..hi frame sizes per second in a uniform random direction."""
    return rng.uniform(lo, hi, (n, 1)) * _unit(rng.uniform(0, 2 * np.pi, n)) * size


def sample_events(
    rng: np.random.Generator,
    vel: np.ndarray,
    *,
    rate: float,
    turn: float,
    speed: tuple[float, float],
    span: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Velocity changes of objects moving at `vel` (n, 2) px/s: per object a Poisson process of `rate`
    events per second over [0, span] seconds. At each event the heading turns by an angle uniform
    in +-`turn` degrees (turns add up) and the speed becomes the object's initial speed times a
    factor uniform in `speed` (min, max). Returns the event times (n, E), ascending, inf after an
    object's last event, and the velocity from each event on (n, E, 2)."""
    n = len(vel)
    counts = rng.poisson(rate * span, n)  # (n,)
    E = int(counts.max(initial=0))
    times = rng.uniform(0, span, (n, E))
    times[np.arange(E) >= counts[:, None]] = np.inf  # padding masked before sorting: real times stay i.i.d.
    times.sort(1)
    turns = np.deg2rad(rng.uniform(-turn, turn, (n, E)))  # (n, E)
    factors = rng.uniform(*speed, (n, E))  # (n, E)
    heading = np.arctan2(vel[:, 1], vel[:, 0])[:, None] + np.cumsum(turns, 1)  # (n, E)
    new_speed = np.linalg.norm(vel, axis=1)[:, None] * factors  # (n, E)
    return times, new_speed[..., None] * _unit(heading)


def sample_scene(
    rng: np.random.Generator,
    *,
    height: int = 64,
    width: int = 64,
    num_classes: int = 4,
    num_shapes: int = 3,
    object_speed: tuple[float, float] = (0.1, 0.3),
    event_rate: float = 0.0,
    event_turn: float = 90.0,
    event_speed: tuple[float, float] = (0.5, 1.5),
    event_span: float | None = None,
) -> Scene:
    """Draw a scene: panning background, `num_shapes` objects of classes 1..num_classes-1 moving at
    `object_speed` (min, max) frame sizes per second. With `event_rate` > 0, each object's velocity
    changes `event_rate` times per second on average during the first `event_span` seconds (turns
    within +-`event_turn` degrees, speed factors in `event_speed`; see `sample_events`), and moves
    straight after them."""
    if num_shapes > 0 and num_classes < 2:
        raise ValueError("num_classes must be >= 2 (class 0 is background) when there are shapes")
    if not 0 <= object_speed[0] <= object_speed[1]:
        raise ValueError(f"object_speed must be (min, max) with 0 <= min <= max, got {tuple(object_speed)}")
    if event_rate < 0 or event_turn < 0 or not 0 <= event_speed[0] <= event_speed[1]:
        raise ValueError(
            "need event_rate >= 0, event_turn >= 0 and event_speed (min, max) with 0 <= min <= max, got "
            f"{event_rate}, {event_turn}, {tuple(event_speed)}"
        )
    if event_rate > 0 and (event_span is None or event_span < 0):
        raise ValueError(f"events need event_span >= 0 seconds, got {event_span}")
    size = np.array([width, height], dtype=np.float64)
    short = min(height, width)
    # background: periods of 1/8 to 1.5 frame sizes, so it is textured yet smooth
    period = rng.uniform(short / 8, 1.5 * short, BG_WAVES)
    bg_freq = (2 * np.pi / period)[:, None] * _unit(rng.uniform(0, np.pi, BG_WAVES))
    n = num_shapes
    obj_class = rng.integers(1, num_classes, n)
    # class tint times a per-object brightness, so the class stays recognisable by colour
    obj_color = PALETTE[(obj_class - 1) % len(PALETTE)] * rng.uniform(0.75, 1.05, (n, 1))
    tex_period = rng.uniform(short / 10, short / 4, n)
    tex_freq = (2 * np.pi / tex_period)[:, None] * _unit(rng.uniform(0, np.pi, n))
    scene = Scene(
        height=height,
        width=width,
        cam_vel=_velocity(rng, 1, 0.05, 0.2, size)[0],
        bg_base=rng.uniform(70, 180, 3),
        bg_freq=bg_freq,
        bg_phase=rng.uniform(0, 2 * np.pi, BG_WAVES),
        bg_amp=rng.uniform(-20, 20, (BG_WAVES, 3)),
        bg_depth=float(rng.uniform(30, 50)),
        bg_depth_amp=float(rng.uniform(1, 5)),
        bg_depth_freq=rng.uniform(-1, 1, 2) * 2 * np.pi / (3 * short),
        bg_depth_phase=float(rng.uniform(0, 2 * np.pi)),
        obj_class=obj_class,
        obj_pos=rng.uniform(0, 1, (n, 2)) * size,
        obj_vel=_velocity(rng, n, *object_speed, size),
        obj_radius=rng.uniform(0.08, 0.18, n) * short,
        obj_depth=rng.uniform(2, 20, n),
        obj_color=obj_color,
        obj_tex_freq=tex_freq,
        obj_tex_phase=rng.uniform(0, 2 * np.pi, n),
        obj_event_time=np.zeros((n, 0)),
        obj_event_vel=np.zeros((n, 0, 2)),
    )
    if event_rate > 0:  # a jumped copy of the stream: the caller's rng stays where it is
        scene.obj_event_time, scene.obj_event_vel = sample_events(
            np.random.default_rng(rng.bit_generator.jumped()),
            scene.obj_vel,
            rate=event_rate,
            turn=event_turn,
            speed=event_speed,
            span=event_span,
        )
    return scene


def _bounce(x: np.ndarray, length: float) -> np.ndarray:
    """Reflect free motion into [0, length]: a ball bouncing off the frame borders."""
    u = np.mod(x, 2 * length)
    return length - np.abs(u - length)


def object_centres(scene: Scene, timestamps: np.ndarray) -> np.ndarray:
    """Object centres (T, n, 2) at `timestamps` (T,) seconds: free piecewise-linear motion (obj_vel,
    then obj_event_vel from each event on) folded into the frame, i.e. bouncing off its borders."""
    t = np.asarray(timestamps, dtype=np.float64)[:, None, None]  # (T, 1, 1)
    vel = np.concatenate([scene.obj_vel[:, None], scene.obj_event_vel], 1)  # (n, E + 1, 2)
    since = np.maximum(t - scene.obj_event_time, 0)  # (T, n, E) seconds since each event, 0 before it
    free = scene.obj_pos + scene.obj_vel * t + np.einsum("tne,nec->tnc", since, np.diff(vel, axis=1))  # (T, n, 2)
    return np.stack([_bounce(free[..., 0], scene.width), _bounce(free[..., 1], scene.height)], -1)


def _plane_wave(freq: np.ndarray, phase: np.ndarray, xw: np.ndarray, yw: np.ndarray) -> np.ndarray:
    """sin(fx*x + fy*y + phase) for K waves on a (T, H, W) grid from (T, W) and (T, H) world
    coordinates, by the angle-sum identity: two outer products instead of K*T*H*W sines."""
    ax = freq[:, 0, None, None] * xw[None] + phase[:, None, None]  # (K, T, W)
    by = freq[:, 1, None, None] * yw[None]  # (K, T, H)
    return np.sin(ax)[:, :, None, :] * np.cos(by)[:, :, :, None] + np.cos(ax)[:, :, None, :] * np.sin(by)[:, :, :, None]


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "disc":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    # upright equilateral triangle with circumradius r (image y points down)
    return (dy <= r / 2) & (np.abs(dx) <= (dy + r) / np.sqrt(3))


def render_scene(scene: Scene, timestamps: np.ndarray) -> dict[str, torch.Tensor]:
    """Render `scene` at `timestamps` (T,) seconds. Returns frames uint8 (T, 3, H, W), timestamps
    float32 (T,), segmentation int64 (T, H, W) and depth float32 (T, H, W) in metres."""
    # render at exactly the float32 times returned, so re-rendering those times reproduces frames
    t = np.asarray(timestamps, dtype=np.float32).astype(np.float64)
    if t.ndim != 1 or len(t) == 0:
        raise ValueError(f"timestamps must be a non-empty 1-D array, got shape {t.shape}")
    H, W = scene.height, scene.width
    xs = np.arange(W, dtype=np.float32) + 0.5
    ys = np.arange(H, dtype=np.float32) + 0.5
    # the camera pans, so the background is sampled at moving world coordinates
    xw = (xs[None] + scene.cam_vel[0] * t[:, None]).astype(np.float32)  # (T, W)
    yw = (ys[None] + scene.cam_vel[1] * t[:, None]).astype(np.float32)  # (T, H)
    waves = _plane_wave(scene.bg_freq.astype(np.float32), scene.bg_phase.astype(np.float32), xw, yw)
    rgb = np.tensordot(waves, scene.bg_amp.astype(np.float32), axes=(0, 0))  # (T, H, W, 3)
    rgb += scene.bg_base.astype(np.float32)
    depth_wave = _plane_wave(scene.bg_depth_freq[None].astype(np.float32), np.float32([scene.bg_depth_phase]), xw, yw)[
        0
    ]
    depth = (scene.bg_depth + scene.bg_depth_amp * depth_wave).astype(np.float32)  # (T, H, W)
    seg = np.zeros(depth.shape, dtype=np.int64)
    centres = object_centres(scene, t).astype(np.float32)  # (T, n, 2)

    # painter's algorithm, far to near: nearer objects overwrite colour, class and depth
    for j in np.argsort(-scene.obj_depth, kind="stable"):
        cx, cy = centres[:, j, 0], centres[:, j, 1]  # (T,) each
        dx = xs[None, None, :] - cx[:, None, None]  # (T, 1, W)
        dy = ys[None, :, None] - cy[:, None, None]  # (T, H, 1)
        cls = int(scene.obj_class[j])
        shape = SHAPES[(cls - 1) % len(SHAPES)]
        mask = _shape_mask(shape, dx, dy, float(scene.obj_radius[j]))  # (T, H, W)
        ti, yi, xi = np.nonzero(mask)  # (P,) each; texture only where the object is seen
        fx, fy, phase = np.float32([*scene.obj_tex_freq[j], scene.obj_tex_phase[j]])
        stripes = np.sin(fx * (xs[xi] - cx[ti]) + fy * (ys[yi] - cy[ti]) + phase)  # (P,)
        rgb[ti, yi, xi] = scene.obj_color[j].astype(np.float32) * (1 + 0.2 * stripes[:, None])
        seg[ti, yi, xi] = cls
        depth[ti, yi, xi] = scene.obj_depth[j]

    frames = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)  # + 0.5 then truncate: rounding
    return {
        "frames": torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))),
        "timestamps": torch.from_numpy(t.astype(np.float32)),
        "segmentation": torch.from_numpy(seg),
        "depth": torch.from_numpy(depth),
    }


def render_clip(
    rng: np.random.Generator,
    *,
    num_frames: int = 8,
    height: int = 64,
    width: int = 64,
    num_classes: int = 4,
    num_shapes: int = 3,
    object_speed: tuple[float, float] = (0.1, 0.3),
    min_gap: float = 1 / 25,
    max_gap: float = 1 / 3,
    timestamps: np.ndarray | None = None,
    event_rate: float = 0.0,
    event_turn: float = 90.0,
    event_speed: tuple[float, float] = (0.5, 1.5),
) -> dict[str, torch.Tensor]:
    """A random labelled clip (see `render_scene` for the keys). Events (`event_rate` per second per
    object, 0 = none; see `sample_scene`) happen within the longest span a clip can cover,
    (num_frames - 1) * max_gap seconds; motion after it is straight. With `timestamps` given, those
    times are rendered and `num_frames`, `max_gap` only set that span (`min_gap` is unused)."""
    scene = sample_scene(
        rng,
        height=height,
        width=width,
        num_classes=num_classes,
        num_shapes=num_shapes,
        object_speed=object_speed,
        event_rate=event_rate,
        event_turn=event_turn,
        event_speed=event_speed,
        event_span=(num_frames - 1) * max_gap,
    )
    if timestamps is None:
        timestamps = sample_gaps(rng, num_frames, min_gap, max_gap)
    return render_scene(scene, timestamps)
