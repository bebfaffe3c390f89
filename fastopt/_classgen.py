"""Writing an optimizer class's ``__init__`` from its spec's argument list, so that the NumPy
and the torch classes have real signatures (``help()``, ``inspect.signature``, errors for
unknown keywords) without a hand-written ``__init__`` per optimizer."""
from __future__ import annotations

__all__ = ["make_init"]


def make_init(qualname, module, arguments, extra, call):
    """An ``__init__(self, params, <arguments>, *, <extra>)`` whose body is ``call``.

    ``arguments``: ``[(name, default, keyword_only)]`` in order; ``extra``: ``[(name, default)]``
    appended keyword-only; ``call``: ``(namespace, source of the body's one statement)``, where
    the statement may use ``{hyper}`` for ``name=name, ...`` over ``arguments``."""
    args, kw = [], False
    for name, default, kw_only in arguments:
        if kw_only and not kw:
            args.append("*")
            kw = True
        args.append(f"{name}={default!r}")
    if not kw:
        args.append("*")
    args += [f"{name}={default!r}" for name, default in extra]
    ns, body = call
    hyper = ", ".join(f"{name}={name}" for name, _, _ in arguments)
    src = f"def __init__(self, params, {', '.join(args)}):\n    {body.format(hyper=hyper)}\n"
    ns = dict(ns)
    exec(src, ns)  # noqa: S102 - built from the spec's names and literal defaults
    init = ns["__init__"]
    init.__qualname__ = qualname
    init.__module__ = module
    return init
