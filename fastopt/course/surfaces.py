r"""The course's 2-D optimization landscapes, and every fastopt optimizer's path across them.

The course notes explain why plain gradient descent struggles with four kinds of surface, and
what momentum and the adaptive methods (RMSprop, Adam) do about it:

``ravine``   an ill-conditioned quadratic :math:`\tfrac12(x^2 + \kappa y^2)`: steep across the
             valley, shallow along it.  A learning rate small enough not to blow up across the
             valley crawls along it, and gradient descent zig-zags from wall to wall.
``saddle``   :math:`\tfrac12 x^2 + \tfrac14(y^2-1)^2`: a saddle point at the origin (the gradient
             vanishes, the curvature is negative along ``y``) between two minima at
             :math:`(0, \pm 1)`.  Started almost on the ridge, a method waits near the saddle until
             the tiny ``y`` component grows.
``plateau``  :math:`1 - e^{-(x^2 + 4y^2)/2}`: a well in a flat plain.  Far from the well the
             gradient is nearly zero, so gradient descent barely moves.
``noisy``    a round-ish bowl :math:`\tfrac12(x^2 + 3y^2)` whose gradient gets Gaussian noise at
             each step, as a mini-batch gradient does; averaging (momentum, Adam's first moment)
             smooths the path.

Each :class:`Surface` is a function value and its analytic gradient (tested against finite
differences).  :func:`run_path` steps one optimizer class on a 2-element float64 parameter from
the surface's start; :func:`run_paths` does it for every optimizer of :data:`fastopt.specs.SPECS`,
so a new spec shows up without touching this module.  The learning rates are hand-tuned per
surface in :data:`LEARNING_RATES`; an optimizer not in it gets :data:`DEFAULT_LR` (and a run that
diverges or raises is recorded, not fatal).  The noise is seeded: every optimizer sees the same
noise sequence.

Importing this module costs NumPy and :mod:`fastopt` only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Surface", "Path", "SURFACES", "LEARNING_RATES", "DEFAULT_LR", "surface",
           "learning_rate", "optimizer_classes", "run_path", "run_paths", "format_paths"]


@dataclass(frozen=True)
class Surface:
    """A 2-D landscape: ``value(p)`` and its exact ``grad(p)`` for ``p = [x, y]``."""

    name: str              # "ravine"
    title: str             # one line for the panel: what it is
    lesson: str            # one line for the panel: what to look for
    formula: str           # the function, as mathtext
    value_fn: object       # (x, y) -> f, elementwise on arrays
    grad_fn: object        # (x, y) -> (df/dx, df/dy)
    start: tuple           # the same start for every optimizer
    minima: tuple          # ((x, y), ...)
    extent: tuple          # (xmin, xmax, ymin, ymax) of the picture
    steps: int             # the step budget of every optimizer
    noise: float = 0.0     # std of the Gaussian noise added to each gradient component
    saddles: tuple = ()    # ((x, y), ...)

    def value(self, p):
        """f at ``p`` (``p[..., 0]`` is x, ``p[..., 1]`` is y)."""
        p = np.asarray(p, dtype=np.float64)
        return self.value_fn(p[..., 0], p[..., 1])

    def grad(self, p):
        """The exact gradient at ``p`` (shape of ``p``)."""
        p = np.asarray(p, dtype=np.float64)
        gx, gy = self.grad_fn(p[..., 0], p[..., 1])
        return np.stack(np.broadcast_arrays(gx, gy), axis=-1).astype(np.float64)

    def gradient(self, p, rng=None, out=None):
        """The gradient an optimizer sees: exact, plus ``noise``·N(0, 1) per component when the
        surface is noisy and ``rng`` (a :class:`numpy.random.Generator`) is given."""
        gx, gy = self.grad_fn(float(p[0]), float(p[1]))
        if out is None:
            out = np.empty(2, dtype=np.float64)
        out[0], out[1] = gx, gy
        if self.noise and rng is not None:
            out += self.noise * rng.standard_normal(2)
        return out

    def distance_to_minimum(self, p):
        """Euclidean distance from ``p`` to the nearest minimum (NaN for a non-finite ``p``)."""
        p = np.asarray(p, dtype=np.float64)
        return min(float(np.hypot(*(p - np.asarray(m)))) for m in self.minima)


# --- the four surfaces --------------------------------------------------------------------------
KAPPA = 50.0           # the ravine's condition number


def _ravine_f(x, y):
    return 0.5 * (x * x + KAPPA * y * y)


def _ravine_g(x, y):
    return x, KAPPA * y


def _saddle_f(x, y):
    return 0.5 * x * x + 0.25 * (y * y - 1.0) ** 2


def _saddle_g(x, y):
    return x, y * (y * y - 1.0)


def _plateau_f(x, y):
    return 1.0 - np.exp(-0.5 * (x * x + 4.0 * y * y))


def _plateau_g(x, y):
    e = np.exp(-0.5 * (x * x + 4.0 * y * y))
    return x * e, 4.0 * y * e


def _bowl_f(x, y):
    return 0.5 * (x * x + 3.0 * y * y)


def _bowl_g(x, y):
    return x, 3.0 * y


SURFACES = (
    Surface("ravine", f"Ravine: an ill-conditioned quadratic (condition number {KAPPA:g})",
            "plain GD zig-zags across the valley and crawls along it; momentum and Adam go "
            "straighter",
            r"$f = \frac{1}{2}(x^2 + %g\,y^2)$" % KAPPA, _ravine_f, _ravine_g,
            start=(-4.0, 1.0), minima=((0.0, 0.0),), extent=(-4.6, 1.6, -1.6, 1.6), steps=50),
    Surface("saddle", "Saddle point: the gradient vanishes at the centre",
            "started almost on the ridge, GD stalls near the saddle; adaptive steps leave it "
            "sooner",
            r"$f = \frac{1}{2}x^2 + \frac{1}{4}(y^2-1)^2$", _saddle_f, _saddle_g,
            start=(-2.5, 0.005), minima=((0.0, 1.0), (0.0, -1.0)),
            extent=(-2.8, 1.2, -1.5, 1.5), steps=60, saddles=((0.0, 0.0),)),
    Surface("plateau", "Plateau: a well in a flat plain (gradient ≈ 0 far out)",
            "GD barely moves on the flat part; momentum builds speed, Adam/RMSprop rescale the "
            "tiny gradient",
            r"$f = 1 - e^{-(x^2 + 4y^2)/2}$", _plateau_f, _plateau_g,
            start=(-3.6, 0.9), minima=((0.0, 0.0),), extent=(-4.0, 1.5, -1.5, 1.5), steps=80),
    Surface("noisy", "Noisy bowl: each gradient is exact + Gaussian noise (a mini-batch)",
            "every optimizer sees the same noise; averaging the gradients (momentum, Adam) "
            "smooths the path",
            r"$f = \frac{1}{2}(x^2 + 3y^2)$,  $g = \nabla f + 1.5\,\mathcal{N}(0, I)$",
            _bowl_f, _bowl_g, start=(-3.0, 2.0), minima=((0.0, 0.0),),
            extent=(-3.6, 1.6, -1.6, 2.6), steps=60, noise=1.5),
)


def surface(name):
    """The surface called ``name``."""
    for s in SURFACES:
        if s.name == name:
            return s
    raise KeyError(name)


# --- learning rates ------------------------------------------------------------------------------
#: Hand-tuned learning rates, optimizer name -> {surface name: lr}; names not here (a new
#: optimizer) use DEFAULT_LR, which is small enough for gradient-scaled and sign/normalised
#: steps alike on these surfaces.
LEARNING_RATES = {
    "SGD":      {"ravine": 0.038, "saddle": 0.1, "plateau": 1.5, "noisy": 0.1},
    "Momentum": {"ravine": 0.038, "saddle": 0.2, "plateau": 8.0, "noisy": 0.1},
    "RMSprop":  {"ravine": 0.05, "saddle": 0.05, "plateau": 0.03, "noisy": 0.05},
    "Adagrad":  {"ravine": 1.0, "saddle": 0.5, "plateau": 0.3, "noisy": 0.5},
    "Adam":     {"ravine": 0.2, "saddle": 0.1, "plateau": 0.15, "noisy": 0.1},
    "AdamW":    {"ravine": 0.2, "saddle": 0.1, "plateau": 0.15, "noisy": 0.1},
    "Adamax":   {"ravine": 0.2, "saddle": 0.2, "plateau": 0.15, "noisy": 0.2},
    "NAdam":    {"ravine": 0.15, "saddle": 0.15, "plateau": 0.05, "noisy": 0.15},
    "RAdam":    {"ravine": 0.05, "saddle": 0.3, "plateau": 1.0, "noisy": 0.3},
    "Adadelta": {"ravine": 30.0, "saddle": 30.0, "plateau": 3.0, "noisy": 30.0},
    "ASGD":     {"ravine": 0.038, "saddle": 0.1, "plateau": 1.5, "noisy": 0.1},
    "Rprop":    {"ravine": 0.05, "saddle": 0.05, "plateau": 0.05, "noisy": 0.05},
    "Lion":     {"ravine": 0.3, "saddle": 0.1, "plateau": 0.15, "noisy": 0.15},
    # (Adafactor's lr caps its relative step min(lr, 1/sqrt(t)), which scales with the
    # parameter's RMS: 1 leaves the paper's 1/sqrt(t))
    "Adafactor": {"ravine": 1.0, "saddle": 1.0, "plateau": 1.0, "noisy": 1.0},
}
DEFAULT_LR = {"ravine": 0.03, "saddle": 0.1, "plateau": 0.1, "noisy": 0.1}

DIVERGED = 1e6   # |x| or |y| beyond this (or non-finite) ends a run as diverged


def learning_rate(name, surface_name):
    """The learning rate optimizer ``name`` uses on the surface ``surface_name``."""
    return LEARNING_RATES.get(name, {}).get(surface_name, DEFAULT_LR.get(surface_name, 0.01))


def optimizer_classes(specs=None):
    """``[(name, class or None)]`` for every spec (default: :data:`fastopt.specs.SPECS`)."""
    import fastopt
    from fastopt import optimizers
    if specs is None:
        from fastopt.specs import SPECS as specs
    return [(s.name, getattr(fastopt, s.name, None) or getattr(optimizers, s.name, None))
            for s in specs]


@dataclass
class Path:
    """One optimizer's run on one surface."""

    name: str
    surface: str
    lr: float
    points: np.ndarray                 # (steps + 1, 2); row 0 the start; NaN after a stop
    diverged_at: int = None            # the step that left the finite/bounded region
    error: str = None                  # what the constructor or a step raised
    notes: list = field(default_factory=list)   # special calls made ("train()")

    @property
    def steps_done(self):
        return int(np.sum(np.all(np.isfinite(self.points), axis=1))) - 1

    @property
    def end(self):
        """The last finite point."""
        ok = np.all(np.isfinite(self.points), axis=1)
        return self.points[np.flatnonzero(ok)[-1]]


def run_path(surface, cls, lr, *, steps=None, seed=0, backend=None, name=None):
    """Step ``cls`` (a fastopt optimizer class) from ``surface.start`` for ``steps`` steps on a
    2-element float64 parameter; returns a :class:`Path`.  An optimizer with a ``train()`` method
    (Schedule-Free) is put in training mode first; its path is the point the gradient is taken
    at.  A constructor or step that raises, or a run that diverges, ends the path (the rest of
    ``points`` is NaN) and is recorded in ``error`` / ``diverged_at``."""
    steps = surface.steps if steps is None else int(steps)
    name = name or getattr(cls, "__name__", str(cls))
    points = np.full((steps + 1, 2), np.nan)
    x = np.array(surface.start, dtype=np.float64)
    points[0] = x
    path = Path(name, surface.name, float(lr), points)
    rng = np.random.default_rng(seed)
    g = np.empty(2, dtype=np.float64)
    try:
        if cls is None:
            raise LookupError(f"fastopt has no class {name}")
        kwargs = {} if backend is None else {"backend": backend}
        spec = getattr(cls, "spec", None)
        if spec is None or "lr" in spec.defaults():
            kwargs["lr"] = lr
        opt = cls([x], **kwargs)
        if callable(getattr(opt, "train", None)):
            opt.train()
            path.notes.append("train()")
        for t in range(1, steps + 1):
            surface.gradient(x, rng, out=g)
            opt.step([g])
            if not (math.isfinite(x[0]) and math.isfinite(x[1])) or \
                    max(abs(x[0]), abs(x[1])) > DIVERGED:
                path.diverged_at = t
                break
            points[t] = x
    except Exception as e:      # a new optimizer must not break the demo: record and go on
        path.error = f"{type(e).__name__}: {e}"
    return path


def run_paths(surfaces=SURFACES, specs=None, *, seed=0, backend=None, lrs=None):
    """Every optimizer of ``specs`` (default :data:`fastopt.specs.SPECS`) on every surface from
    the same start: ``{surface name: [Path, ...]}`` in spec order.  ``lrs`` overrides
    :func:`learning_rate` (``(optimizer name, surface name) -> lr``)."""
    lr_of = lrs or learning_rate
    classes = optimizer_classes(specs)
    return {s.name: [run_path(s, cls, lr_of(name, s.name), seed=seed, backend=backend,
                              name=name) for name, cls in classes]
            for s in surfaces}


def format_paths(paths, surfaces=SURFACES):
    """A table: each optimizer's distance to the nearest minimum after each surface's budget."""
    by_name = {s.name: s for s in surfaces}
    names = list(dict.fromkeys(p.name for ps in paths.values() for p in ps))
    cols = [n for n in paths]
    head = f"{'optimizer':18s}" + "".join(
        f" {f'{c} ({by_name[c].steps} steps)':>22s}" for c in cols)
    lines = [head, "-" * len(head)]
    for n in names:
        cells = []
        for c in cols:
            p = next((q for q in paths[c] if q.name == n), None)
            if p is None:
                cells.append("")
            elif p.error:
                cells.append("failed")
            elif p.diverged_at is not None:
                cells.append(f"diverged at {p.diverged_at}")
            else:
                cells.append(f"{by_name[c].distance_to_minimum(p.end):.3g} (lr {p.lr:g})")
        lines.append(f"{n:18s}" + "".join(f" {c:>22s}" for c in cells))
    return "\n".join(lines)
