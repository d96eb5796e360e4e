"""The backbones under ``torch.compile``: the same function, its per-edge gathers, products and segment softmax
fused into a few loops instead of one pass over memory each (the eager network is memory-bound).

:func:`use_compile` switches a model's backbones (:class:`~graphsr.nn.GraphTransformer`,
:class:`~graphsr.nn.CellTransformer`) to compiled code, built at their first call (tens of seconds on CPU, cached
on disk by torch for later processes) for dynamic shapes, so batches of any size reuse it. Compiled code runs the
pure-torch segment reductions (:mod:`graphsr.ops`), which the compiler fuses; where compiling fails (no C++
compiler, an unsupported platform), the backbone warns once and runs eagerly.
"""

from __future__ import annotations

import warnings

import torch

from graphsr import ops
from graphsr.nn import fused_attention

CPU_THREADS = 1  # threads of the compiled CPU loops (-1: torch's); set before the first compiled call
_compiled: dict = {}
_failed: set = set()


def cpu_options() -> dict:
    """Options of the compiled CPU loops: one thread (:data:`CPU_THREADS`), and the compiler's own vector width,
    except on AVX-512 hosts where the graph attention itself runs in the compiled loops (its fused kernel,
    :mod:`graphsr.nn.fused_attention`, not loaded): 256-bit vectors there, as attention heads have 8 features at
    graphsr's sizes (width 32, 4 heads) and each head's dot product then fills one vector instead of half of a
    masked one. With the kernel, the remaining loops (layer norms, GELU, modulation) run faster on 512-bit ones."""
    options = {"cpp.threads": CPU_THREADS}
    if torch.backends.cpu.get_cpu_capability() == "AVX512" and not fused_attention.loaded():
        options["cpp.simdlen"] = 256
    return options


def use_compile(model: torch.nn.Module, enabled: bool = True) -> torch.nn.Module:
    """Run every backbone in ``model`` compiled (``enabled``) or eagerly; returns ``model``. Copies of the model
    (e.g. an EMA) inherit the setting."""
    for module in model.modules():
        if hasattr(module, "_forward") and hasattr(module, "compile_backbone"):
            module.compile_backbone = enabled
    return model


def run_compiled(function, *args):
    """``function(*args)`` through ``torch.compile`` (built once per function), or eagerly where compiling
    failed before."""
    if function in _failed:
        return function(*args)
    if function not in _compiled:
        # the generated CPU loops run on one thread: their scatter-adds (the backward of every gather) contend
        # between threads, and on a 2-core machine 2-thread loops made training steps 2.5x slower than 1-thread
        # ones (bench/bench_speed.py); matmuls stay on torch's threads
        _compiled[function] = torch.compile(function, dynamic=True, options=cpu_options())
    # every tensor's first dimension (nodes, edges, distinct offsets) may change between calls: compile for any
    # size at once instead of for the first call's sizes and then again
    for leaf in torch.utils._pytree.tree_leaves(args):
        if isinstance(leaf, torch.Tensor) and leaf.dim() > 0:
            torch._dynamo.maybe_mark_dynamic(leaf, 0)
    try:
        with ops.use_extensions(False):
            return _compiled[function](*args)
    except Exception as error:  # the compiler's failures come in many types; the eager run re-raises real errors
        _failed.add(function)
        warnings.warn(f"torch.compile failed ({type(error).__name__}: {str(error)[:300]}); running eagerly",
                      RuntimeWarning, stacklevel=2)
        return function(*args)
