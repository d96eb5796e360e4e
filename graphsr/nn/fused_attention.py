"""Graph attention as one fused CPU kernel (forward and backward): each target's edges in one pass, no per-edge
tensors in memory.

The same function as :class:`~graphsr.nn.GraphAttention`'s gather / segment softmax / scatter path, which is
memory-bound on CPU even when compiled: that path writes and reads per-edge keys, values, logits and weights
several times, and its backward scatters them back. The kernel (``edge_attention.c``, shipped beside this module)
reads each edge's key and value once per pass, keeps the softmax's log normaliser per target (as flash attention
does) and recomputes the weights in the backward.

It is plain C, built at first use with the host's C compiler (``$CC``, else ``cc`` / ``gcc``) for each size
(heads, features per head: the loops are then unrolled) into a per-user cache (``$GRAPHSR_CACHE``, else
``~/.cache/graphsr``), keyed by the source, the sizes, the compiler flags and the CPU's vector capability, and
loaded with ctypes: no Python headers or torch build needed (about a second per size). On other devices and dtypes
:func:`available` is False and the models keep the gather / scatter path; where no compiler works, too, with a
warning (once). The kernel runs on one thread, as graphsr's compiled loops do.

Under ``torch.compile`` the kernel is an opaque custom op (``graphsr::edge_attention``) with a registered backward,
so the compiler fuses everything around it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("edge_attention.c")
_libraries: dict = {}  # (heads, dim) -> the loaded kernel
_failed: list = []  # why building failed (then no size is tried again)


def _flags() -> list[str]:
    """Compiler flags: optimised, and the vector instructions torch itself found on this CPU (not -march=native, so
    that a cache shared by a cluster's different nodes holds a build per capability, each safe where it runs)."""
    vectors = {"AVX512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"],
               "AVX2": ["-mavx2", "-mfma"]}
    return ["-O3", "-shared", "-fPIC", "-fno-math-errno", *vectors.get(torch.backends.cpu.get_cpu_capability(), [])]


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(heads: int, dim: int) -> ctypes.CDLL:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set $CC)")
    source, flags = SOURCE.read_bytes(), [*_flags(), f"-DHEADS={heads}", f"-DDIM={dim}"]
    key = hashlib.sha256(source + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("GRAPHSR_CACHE") or Path.home() / ".cache" / "graphsr")
    library = cache / f"edge_attention_{heads}x{dim}_{key}.so"
    if not library.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as folder:  # built aside, then renamed: concurrent ranks are safe
            built = Path(folder) / library.name
            run = subprocess.run([compiler, *flags, str(SOURCE), "-o", str(built), "-lm"], capture_output=True,
                                 text=True)
            if run.returncode:
                raise RuntimeError(f"{compiler} failed on {SOURCE}: {run.stderr.strip()[:500]}")
            os.replace(built, library)
    lib = ctypes.CDLL(str(library))
    i64, ptr, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
    lib.graphsr_attention_forward.argtypes = [i64, i64, i64, *[ptr] * 7, f32, ptr, ptr]
    lib.graphsr_attention_backward.argtypes = [i64, i64, i64, *[ptr] * 7, f32, *[ptr] * 6]
    lib.graphsr_csr.argtypes = [i64, i64, ptr, ptr, ptr]
    lib.graphsr_distinct_rows.argtypes = [i64, i64, ptr, ptr, ptr]
    lib.graphsr_distinct_rows.restype = i64
    return lib


def _kernel(heads: int, dim: int):
    """The kernel for these sizes, built at the first call; None where building failed (warned once)."""
    if (heads, dim) not in _libraries and not _failed:
        try:
            _libraries[heads, dim] = _build(heads, dim)
        except (OSError, RuntimeError) as error:
            _failed.append(error)
            warnings.warn(f"the fused attention kernel is not available ({error}); graph attention runs as "
                          "gathers and scatters", RuntimeWarning, stacklevel=3)
    return _libraries.get((heads, dim))


def loaded() -> bool:
    """Whether the kernel has been built and loaded (for some size) in this process."""
    return bool(_libraries)


def _any_library():
    """A loaded build (any size: the graph helpers, csr and distinct rows, do not depend on it), or None."""
    return next(iter(_libraries.values()), None)


def available(like: torch.Tensor, heads: int = 4, dim: int = 8) -> bool:
    """Whether the kernel runs for tensors like ``like`` (float32, on the CPU) and attention of ``heads`` heads of
    ``dim`` features: the kernel for those sizes built."""
    if like.device.type != "cpu" or like.dtype != torch.float32:
        return False
    return _kernel(heads, dim) is not None


def csr(target: torch.Tensor, num_targets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(order [E], ptr [num_targets + 1])``: the edges sorted by ``target`` (stable) and where each target's
    edges start, for :func:`edge_attention`. By counting in the kernel's library where it is loaded (a sort's
    fraction of the time), else by a sort."""
    lib = _any_library()
    if lib is not None and target.device.type == "cpu" and target.dtype == torch.long:
        target = target.contiguous()
        order, ptr = torch.empty_like(target), target.new_empty(num_targets + 1)
        code = lib.graphsr_csr(target.numel(), num_targets, *_pointers(target, order, ptr))
        if code == 1:
            raise ValueError(f"edge targets outside 0..{num_targets - 1}")
        if code:
            raise MemoryError("csr: out of memory")
        return order, ptr
    order = torch.sort(target, stable=True).indices
    count = torch.bincount(target, minlength=num_targets)
    return order, torch.cat([count.new_zeros(1), torch.cumsum(count, 0)])


def distinct_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(distinct [R, F], index [E])`` of float32 rows [E, F] on the CPU, equal bit for bit, in order of first
    appearance, by hashing in the kernel's library (no sort); None where the library is not loaded."""
    lib = _any_library()
    if lib is None or rows.device.type != "cpu" or rows.dtype != torch.float32 or rows.dim() != 2:
        return None
    rows = rows.contiguous()
    index, first = (torch.empty(rows.size(0), dtype=torch.long) for _ in range(2))
    count = lib.graphsr_distinct_rows(rows.size(0), rows.size(1), *_pointers(rows, index, first))
    if count < 0:
        raise MemoryError("distinct rows: out of memory")
    return rows.index_select(0, first[:count]), index


def tile_csr(order: torch.Tensor, ptr: torch.Tensor, copies: int, first: int | None = None):
    """:func:`csr` of ``copies`` copies of a graph batched one after the other (targets and sources offset per copy),
    from the graph's own. ``first``: the edges come in two parts (the first ``first`` edges, then the rest), each
    tiled on its own (as :meth:`~graphsr.nn.GraphTransformer.repeat_prepared` tiles the cross edges)."""
    edges = order.numel()
    copy = torch.arange(copies, device=order.device).unsqueeze(1)
    if first is None:
        tiled = order + copy * edges
    else:  # copy c's edge e: c * first + e in the first part, copies * first + c * (edges - first) + e - first after
        tiled = torch.where(order < first, order + copy * first,
                            order + (copies - 1) * first + copy * (edges - first))
    starts = ptr[:-1] + copy * edges
    return tiled.reshape(-1), torch.cat([starts.reshape(-1), ptr.new_full((1,), copies * edges)])


def event_graphs(batch: torch.Tensor, num_graphs: int, tokens: int) -> dict:
    """The two attentions of :class:`~graphsr.nn.EventContext` as :func:`edge_attention` graphs, each ``(source,
    order, ptr)`` (edges already in target order; no edge terms), from ``batch`` [N] (sorted):

    - ``"pool"``: target ``b * tokens + t`` (event b's token t) over every node of event b;
    - ``"read"``: target node n over its event's tokens ``batch[n] * tokens + t``.
    """
    device = batch.device
    count = torch.bincount(batch, minlength=num_graphs)
    first = torch.cumsum(count, 0) - count  # each event's first node
    edges = batch.numel() * tokens
    # pool: for each event, its nodes once per token
    length = count.repeat_interleave(tokens)
    start = torch.cumsum(length, 0) - length
    segment = torch.arange(num_graphs * tokens, device=device).repeat_interleave(length, output_size=edges)
    pool_source = torch.arange(edges, device=device) - (start - first.repeat_interleave(tokens)).index_select(
        0, segment)
    pool_ptr = torch.cat([start, start.new_full((1,), edges)])
    # read: each node its event's tokens
    read_source = (batch.unsqueeze(1) * tokens + torch.arange(tokens, device=device)).reshape(-1)
    read_ptr = torch.arange(0, edges + 1, tokens, device=device)
    order = torch.arange(edges, device=device)
    return {"pool": (pool_source, order, pool_ptr), "read": (read_source, order, read_ptr)}


def _pointers(*tensors):
    """Each tensor's data pointer; NULL for an empty one (an edge table of no rows: no edge terms)."""
    return [ctypes.c_void_p(t.data_ptr() if t.numel() else None) for t in tensors]


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself where its rows are contiguous (any distance apart, e.g. a column slice of a wider matmul
    output: the kernel takes the row stride), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


@torch.library.custom_op("graphsr::edge_attention", mutates_args=())
def _forward(q: torch.Tensor, kv: torch.Tensor, table: torch.Tensor, source: torch.Tensor, row: torch.Tensor,
             order: torch.Tensor, ptr: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    q, kv, table = _rows(q), _rows(kv), table.contiguous()
    targets, dim = q.size(0), q.size(1) // heads
    out, lse = q.new_empty(q.shape), q.new_empty(targets, heads)
    code = _kernel(heads, dim).graphsr_attention_forward(
        targets, q.stride(0), kv.stride(0),
        *_pointers(q, kv, table, source.contiguous(), row.contiguous(), order.contiguous(), ptr.contiguous()),
        dim ** -0.5, *_pointers(out, lse))
    if code:
        raise MemoryError("edge attention: out of memory for its per-target buffers")
    return out, lse


@_forward.register_fake
def _(q, kv, table, source, row, order, ptr, heads):
    return q.new_empty(q.shape), q.new_empty(q.size(0), heads)


@torch.library.custom_op("graphsr::edge_attention_backward", mutates_args=())
def _backward(q: torch.Tensor, kv: torch.Tensor, table: torch.Tensor, source: torch.Tensor, row: torch.Tensor,
              order: torch.Tensor, ptr: torch.Tensor, heads: int, out: torch.Tensor, lse: torch.Tensor,
              grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, kv, table, grad = _rows(q), _rows(kv), table.contiguous(), grad.contiguous()
    dq, dkv, dtable = q.new_empty(q.shape), kv.new_zeros(kv.shape), torch.zeros_like(table)  # dq: every row set
    code = _kernel(heads, q.size(1) // heads).graphsr_attention_backward(
        q.size(0), q.stride(0), kv.stride(0),
        *_pointers(q, kv, table, source.contiguous(), row.contiguous(), order.contiguous(), ptr.contiguous()),
        (q.size(1) // heads) ** -0.5, *_pointers(out.contiguous(), lse.contiguous(), grad, dq, dkv, dtable))
    if code:
        raise MemoryError("edge attention backward: out of memory for its buffers")
    return dq, dkv, dtable


@_backward.register_fake
def _(q, kv, table, source, row, order, ptr, heads, out, lse, grad):
    return q.new_empty(q.shape), kv.new_empty(kv.shape), torch.empty_like(table)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:7], *output)
    ctx.heads = inputs[7]


def _gradients(ctx, grad_out, grad_lse):
    q, kv, table, source, row, order, ptr, out, lse = ctx.saved_tensors
    dq, dkv, dtable = _backward(q, kv, table, source, row, order, ptr, ctx.heads, out, lse, grad_out)
    return dq, dkv, dtable, None, None, None, None, None


_forward.register_autograd(_gradients, setup_context=_setup)


def edge_attention(q: torch.Tensor, kv: torch.Tensor, table: torch.Tensor | None, row: torch.Tensor | None,
                   source: torch.Tensor, order: torch.Tensor, ptr: torch.Tensor, heads: int) -> torch.Tensor:
    """Attention of targets over their incoming edges: q [T, W] (queries), kv [S, 2W] (keys, then values, per
    source), table [R, 2W] (edge terms added to key and value; edge e uses row ``row[e]``; None: no edge terms),
    ``source`` [E], and the :func:`csr` of the edges' targets -> [T, W]. Differentiable in q, kv and table. The log
    normaliser of each softmax is not differentiable (its gradient is ignored)."""
    if table is None:  # an empty table: the kernel reads no edge terms and accumulates no gradient for them
        table, row = q.new_empty(0, kv.size(1)), source.new_empty(0)
    return _forward(q, kv, table, source, row, order, ptr, heads)[0]
