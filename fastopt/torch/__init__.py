r"""PyTorch adapter: ``torch.optim.Optimizer`` subclasses stepped by fastopt's fused kernels.

``import fastopt`` does not import this package (nor torch); import it explicitly::

    import fastopt.torch
    opt = fastopt.torch.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

Each class is made from its spec (:mod:`fastopt.specs`): it takes ``torch.optim``'s constructor
arguments in torch's order (the update rules are those of SPEC.md, option for option as
torch.optim), keeps ``param_groups``, ``add_param_group``, ``zero_grad``, ``step(closure=None)``
and ``state_dict()``/``load_state_dict()`` in torch's layout and state names, so a checkpoint
written by ``torch.optim.Adam`` loads into :class:`Adam` and the reverse.  Per-parameter state is
exactly torch's: ``step`` a float32 scalar tensor on the CPU (Adam, AdamW, RMSprop, Adagrad,
Momentum), ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad), ``square_avg``,
``grad_avg`` (centered), ``momentum_buffer``, ``sum``; SGD keeps only ``momentum_buffer``
(created by the first step).  Parameters whose ``grad`` is None are skipped and their ``step``
does not advance, as in torch.

How tensors reach the kernels
    * CPU tensors are passed as zero-copy NumPy views (``t.detach().view(-1).numpy()``, checked
      to share memory) to the host backend (the default host backend: Cython where built, else
      Numba; ``backend="numba"``/``"numpy"``/``"cython"`` may be named).
    * The CPU buffers the adapter allocates itself (state; ``flatten=True``'s flat parameters
      and gradients) of 4 MiB and up are advised into transparent huge pages before their first
      touch (Linux; ``fastopt.config.HUGE_PAGES``, ``FASTOPT_HUGE_PAGES=0`` turns it off), as
      NumPy does for its arrays: fewer page walks per stream.  torch's own allocations do so
      only under ``THP_MEM_ALLOC_ENABLE=1``.
    * CUDA tensors are passed through ``__cuda_array_interface__`` (``numba.cuda.as_cuda_array``)
      to the ``"cuda"`` backend.  **This path has never been run on a GPU**; it is written to be
      correct by construction (same kernel contract as the host path).  Kernels run on Numba's
      default stream; when torch's current stream is not the default one, the adapter
      synchronizes that stream before and the device after the kernels.
    * float32, float64, bfloat16 and float16 parameters (a bfloat16 tensor is viewed through
      its bits: NumPy has no bfloat16 of its own); a half-precision parameter's gradient may be
      float32.  ``state_dtype``, ``rounding`` and ``seed`` are :class:`fastopt.Optimizer`'s.
      Any other dtype raises ``TypeError`` naming the parameter, at construction.  With
      ``rounding="stochastic"`` SGD keeps a ``step`` in its state (torch's SGD has none; it
      feeds the random bits).  A non-contiguous parameter (transposed, sliced, channels-last)
      is stepped in place as torch.optim does: the kernel runs on a contiguous copy that is
      then written back into the parameter's own memory (contiguous parameters, the common
      case, are never copied); one whose elements share memory (``expand()``) raises
      ``ValueError``.  A non-contiguous *gradient* is copied to a contiguous one (read only).
      Sparse gradients raise ``RuntimeError``.  ``capturable=True`` and ``differentiable=True`` are not
      supported (``ValueError``); ``foreach`` and ``fused`` are accepted and ignored (the step
      is always one fused pass per buffer).
    * DTensor parameters (FSDP2's ``fully_shard``) are stepped through their local shards
      (``to_local()``; an empty shard is fine) and their state is kept as DTensors with the
      parameter's placements, as torch.optim keeps it, so ``get_optimizer_state_dict`` /
      ``set_optimizer_state_dict`` and ``torch.distributed.checkpoint`` save and restore every
      shard.  ``flatten=True`` and ``state_dtype="int8"`` reject DTensors (``ValueError``);
      :class:`LAMB`'s trust ratio needs each whole tensor's norms: its shards' sums are
      all-reduced (float64) over the mesh dimensions the tensor is sharded on, between the
      two passes; :class:`Adafactor` all-reduces its row, column and RMS sums likewise (its
      factors are DTensors replicated where the parameter is sharded on the dimension they
      reduce);
      stochastic rounding draws the bits the unsharded parameter would (shards along dim 0).

Kernel calls
    Parameters of one (device, dtype) whose step scalars agree (the bias corrections use each
    parameter's own ``step``) are one kernel call; within it, tensors laid end to end in one
    storage (parameters, gradients and every state buffer alike) are one row, others one row
    each.  :class:`LAMB` is two passes per tensor: the first call (one row per tensor) returns
    each tensor's sums, and the second pass is one call per tensor with its trust ratio.  On
    the CPU with the Cython backend the call is built from the tensors' addresses and kept
    for the next step while every tensor is the same object at the same address with the same
    size (checked each step: a moved ``.data`` or a new ``.grad`` rebinds it); it holds no
    reference to any tensor.

The step's plan (CPU, Cython backend)
    After a step, each param group keeps what that step checked and built
    (:mod:`fastopt.torch._plan`): its parameters, gradients (weak references), state tensors,
    flags, ``step`` counters and bound calls.  The next step re-checks all of it against the live
    objects in a few C-level loops (same objects, addresses, dtypes, shapes and contiguity; the
    flags; one step count for the group) and then computes the step scalars once per group,
    calls the kernels and advances ``step`` in place.  A new gradient tensor (``zero_grad()``
    then ``backward()``) passes the generic path's checks and, where its address changed, the
    call is rebound.  Any other change (``p.data`` re-assigned to another dtype or layout, a flag
    such as ``amsgrad``, ``group["params"]`` edited, a state tensor or ``step`` replaced,
    ``load_state_dict``, ``add_param_group``, parameters whose step counts differ) sends that
    group through the generic path, which raises the errors before anything is changed, and
    the plan is rebuilt after it.  The learning rate and the other hyperparameters are read
    from the group every step.  A new gradient's address is written into the kept call's
    table in place.  torch.optim's step wrapper (step hooks, the profiler's
    ``record_function``) runs only when a step hook is registered or the profiler is on: it
    costs about 10 us a step, a third of a small model's whole step.

``flatten=True``
    At construction, each param group's parameters are moved, per (device, dtype), into one
    contiguous buffer: ``p.data`` becomes a view into it and ``p.grad`` a view into a flat
    gradient buffer (existing gradients are copied in); state buffers are flat too, and each
    parameter's state entries are views into them.  A step is then **one kernel row per
    (group, device, dtype)**.  Trade-offs: the parameter objects (and so ``model.parameters()``
    and any reference to them) are kept, but their storage is re-homed and the parameter memory
    is copied once at construction (peak: old + new parameter memory); the gradient buffers
    exist for the optimizer's lifetime (as with ``zero_grad(set_to_none=False)``).

    Parameters with ``requires_grad=False`` are not flattened (they keep ``grad`` None and are
    skipped, as in torch).  ``zero_grad()`` in flatten mode always zeroes the flat gradient
    buffer and re-attaches the views, whatever ``set_to_none`` says (setting ``.grad`` to None
    would let autograd allocate fresh, scattered gradients).  Consequently a parameter that
    backward did not reach has a zero gradient rather than None and *is* stepped, exactly as
    ``torch.optim`` does after ``zero_grad(set_to_none=False)``.  If ``.grad`` was replaced by
    another tensor (or set to None), or ``.data`` moved (``model.to(...)``), that tensor simply
    is not in the run any more: the step makes it a row of its own (or skips it), and the next
    ``zero_grad()`` re-attaches the gradient views.

State dicts
    ``state_dict()`` returns torch's layout holding references to the live state (as torch);
    in flatten mode these are views into the flat state buffers (``torch.save`` writes each flat
    buffer once).  Hyperparameters torch's twin lacks (Adam's ``bias_correction``) are left out
    of ``param_groups`` at their defaults, so the keys are torch's exactly (DCP's strict load
    plans match either way); a loaded dict without them gets the defaults.
    ``load_state_dict()`` validates shapes before changing anything and then **copies** the
    loaded values into this optimizer's own buffers (torch would alias them), so the loaded dict
    can keep being used elsewhere.

Copies
    ``copy.deepcopy``, ``pickle`` and ``torch.save`` of a whole optimizer keep its options
    (``max_grad_norm``, ``state_dtype``, ``flatten``, ...; torch's ``__getstate__`` alone keeps
    only defaults, state and param groups) and none of its bound calls, which hold addresses:
    the copy steps its own tensors and continues bit for bit as the original.  In flatten mode
    the copy's parameters, gradients and state are views into its own flat buffers again (a
    plain pickle makes each tensor its own copy: the values are copied back in).
"""
from __future__ import annotations

from .. import specs as _specs
from .._classgen import make_init
from ._optimizer import FusedOptimizer, torch_signature
from ._tensors import host as _host  # noqa: F401 - zero-copy view helper (tests, users)

#: Adafactor's factored state has its own class (below), not FusedOptimizer's buffers
_TORCH_SPECS = [s for s in _specs.SPECS if s.name != "Adafactor"]
__all__ = ["FusedOptimizer", "make_class"] + [s.name for s in _TORCH_SPECS]


def make_class(spec, module=__name__):
    """The torch class of ``spec``: torch.optim's constructor signature, the spec's rule."""
    init = make_init(f"{spec.name}.__init__", module, torch_signature(spec),
                     [("backend", None), ("flatten", False), ("state_dtype", None),
                      ("rounding", "nearest"), ("seed", 0), ("min_8bit_size", 4096),
                      ("max_grad_norm", None)],
                     ({"_base": FusedOptimizer, "_fixed": dict(spec.fixed) | dict(spec.group_state)},
                      "_base.__init__(self, params, dict({hyper}, **_fixed), backend=backend, "
                      "flatten=flatten, state_dtype=state_dtype, rounding=rounding, seed=seed, "
                      "min_8bit_size=min_8bit_size, max_grad_norm=max_grad_norm)"))
    equivalent = f"as ``{spec.torch}``" if spec.torch else "no torch.optim equivalent"
    doc = (f"{spec.summary}  ({equivalent}; the rule is :class:`fastopt.{spec.name}`'s.)\n\n"
           f"{spec.math.strip()}\n\nTakes torch.optim's arguments; extra keyword arguments: "
           f"``backend``, ``flatten`` (see :mod:`fastopt.torch`), ``state_dtype``, ``rounding``, "
           f"``seed``, ``min_8bit_size``, ``max_grad_norm`` (see :class:`fastopt.Optimizer`).\n")
    ns = {"__init__": init, "spec": spec, "__module__": module, "__doc__": doc}
    for method in spec.switch:            # Schedule-Free's train() / eval()
        ns[method] = _switch_method(method)
    return type(spec.name, (FusedOptimizer,), ns)


def _switch_method(method):
    def switch(self):
        self._switch(method)
    switch.__name__ = method
    switch.__doc__ = (f"As ``schedulefree``'s ``{method}()``: one pass per parameter towards its "
                      f"``z`` (see :class:`fastopt.AdamWScheduleFree`).")
    return switch


for _spec in _TORCH_SPECS:
    globals()[_spec.name] = make_class(_spec)
del _spec


def _adafactor_class():
    from ._adafactor import AdafactorBase
    spec = _specs.ADAFACTOR
    init = make_init("Adafactor.__init__", __name__, torch_signature(spec),
                     [("backend", None), ("state_dtype", None), ("rounding", "nearest"),
                      ("seed", 0), ("min_8bit_size", 4096), ("max_grad_norm", None)],
                     ({"_base": AdafactorBase},
                      "_base.__init__(self, params, dict({hyper}), backend=backend, "
                      "state_dtype=state_dtype, rounding=rounding, seed=seed, "
                      "min_8bit_size=min_8bit_size, max_grad_norm=max_grad_norm)"))
    doc = (f"{spec.summary}  (as ``torch.optim.Adafactor``, whose state and state_dict it "
           f"keeps; the rules are :class:`fastopt.Adafactor`'s.)\n\n{spec.math.strip()}\n\n"
           f"Takes torch.optim's arguments; extra keyword arguments: ``backend``, "
           f"``state_dtype``, ``rounding``, ``seed``, ``min_8bit_size``, ``max_grad_norm`` "
           f"(see :class:`fastopt.Optimizer`; with ``state_dtype='int8'`` a vector's "
           f"``variance`` of at least ``min_8bit_size`` elements is uint8 codes with "
           f"``variance_absmax``).  float32, float64, bfloat16 and float16 tensors, CPU or "
           f"CUDA (the CUDA path has run on numba's simulator only).\n")
    return type("Adafactor", (AdafactorBase,), {"__init__": init, "spec": spec,
                                                 "__module__": __name__, "__doc__": doc})


Adafactor = _adafactor_class()
__all__.append("Adafactor")
