"""Decoding a token in one C call, from its embedding to its logits (kernels/decode_step.c), where the
model is the default block on a CPU and every piece of it already runs in C.

Batch-1 decoding of a small model is bound by what is paid per call, not per byte: on a Zen 4 EPYC,
a bf16 model=small token spent 0.7 ms in the Linears and 1.8-2.8 ms in the decode kernel at 8192
cached tokens, and 1.2-1.6 ms in the Python between them (about 300 module calls, views and small
ops), the same for every variant. That share diluted what `k_eq_v`'s half cache saves. Even a few
Python ops around a C call over the blocks cost 0.2-0.4 ms: after the kernel has streamed the cache
through the CPU's caches, the interpreter's own data is cold (the first RMSNorm after it took 50-130 µs,
the next one 13), so the embedding, the final norm and the head are in the call too. The step calls
the functions the modules call (the embedding's row copy, the one-row Linears, RMSNorm, RoPE, SwiGLU,
the decode kernel) in the same order with the same arguments, so its logits and cache equal the
modules' to the bit (the tests check it); it is an evaluation order, not a second model. Anything it does not cover (other
families, biases, learned positions, LayerNorm, GELU, QK-norm, cross-layer sharing, a Linear path other
than the C loop, gradients, prompts) takes the modules, as does everything with QKVLAB_DECODE_KERNEL=off.
"""

from __future__ import annotations

import ctypes
from typing import Optional

import torch

from qkvlab.model import kv_decode
from qkvlab.model.attention import SharedQKVAttention
from qkvlab.model.inference_linear import C, InferenceLinear
from qkvlab.model.kernels import cpu_linear, cpu_step
from qkvlab.model.kv_cache import KVCache
from qkvlab.model.rms_norm import RMSNorm


def _linear_problem(lin) -> Optional[str]:
    if not isinstance(lin, InferenceLinear) or lin.paths.rows != C:
        return "its Linears do not take the C loop here"
    if lin.bias is not None:
        return "it has biases"
    if not lin._c_takes_weights():
        return "a Linear's weights do not suit the C loop"
    return None


def why_not(model, cache: KVCache) -> Optional[str]:
    """Why the step does not decode this model and cache, or None where it does."""
    m = model.cfg
    if not cpu_step.available():
        return "the C kernels did not build"
    if kv_decode.policy() == "off":
        return "QKVLAB_DECODE_KERNEL=off"
    if model.training:
        return "the model is in training mode"
    if (m.positions, m.norm, m.mlp, m.bias) != ("rope", "rmsnorm", "swiglu", False) or model.pos_emb is not None or model.passes != 1:
        return "the block is not the default one (RoPE, RMSNorm, SwiGLU, no biases)"
    if type(model.tok_emb) is not torch.nn.Embedding or model.tok_emb.max_norm is not None or type(model.norm) is not RMSNorm or model.norm.weight is None:
        return "its embedding is not a table or its final norm not RMSNorm with a gain"
    problem = _linear_problem(model.head)
    if problem:
        return problem
    params = list(model.parameters())
    dtypes = {p.dtype for p in params} | {cache.dtype, model.rope_cos.dtype, model.rope_sin.dtype}
    if {p.device.type for p in params} != {"cpu"} or len(dtypes) != 1 or cache.dtype not in cpu_linear.DTYPES:
        return "the model, its rotary tables and its cache are not all fp32 or all bf16 on the CPU"
    if not model.rope_cos.is_contiguous() or not model.rope_sin.is_contiguous():
        return "its rotary tables are not contiguous"
    if cache.batch > cpu_linear.MAX_ROWS:
        return f"more than {cpu_linear.MAX_ROWS} sequences"
    shapes = set()
    for block, layer in zip(model.blocks, cache.layers):
        attn = block.attn
        if type(attn) is not SharedQKVAttention or attn.reuses or attn.feeds or attn.plus is not None:
            return "a layer is not plain shared-QKV attention"
        if attn.q_norm is not None or attn.k_norm is not None or attn.spec.v_norm:
            return "a layer normalises queries, keys or values"
        if not attn.fused_decode(layer) or any(not b.is_contiguous() for b in layer.buffers):
            return "a layer's cache does not take the decode kernel"
        if type(block.norm1) is not RMSNorm or type(block.norm2) is not RMSNorm or block.norm1.weight is None or block.norm2.weight is None:
            return "a norm is not RMSNorm with a gain"
        for lin in (attn.qkv, attn.out, block.mlp.up, block.mlp.down):
            problem = _linear_problem(lin)
            if problem:
                return problem
        s = attn.spec
        q_heads = s.n_heads if any(name == "q" for name, _ in attn.projections) else s.n_kv_heads
        if attn.out.in_features != q_heads * s.d_head:
            return "a layer's output projection does not take its query heads"
        shapes.add((s.n_heads, s.n_kv_heads, s.d_head, s.sharing, attn._scale(), block.mlp.down.in_features))
    if len(shapes) != 1:
        return "its layers differ in shape"
    return None


class DecodeStep:
    """The step for one model and one cache: pointers to every weight and buffer, packed once."""

    def __init__(self, model, cache: KVCache):
        blocks = list(model.blocks)
        attn0 = blocks[0].attn
        s = attn0.spec
        has_q = any(name == "q" for name, _ in attn0.projections)
        dtype = cache.dtype
        self.cache, self.model = cache, model
        layers = (cpu_step.StepLayer * len(blocks))()
        like = torch.empty(0, dtype=dtype)  # what the norms' eps=None reads its dtype's epsilon from
        for layer, block, lc in zip(layers, blocks, cache.layers):
            a = block.attn
            buf = lc.buffers
            layer.norm1, layer.norm2 = block.norm1.weight.data_ptr(), block.norm2.weight.data_ptr()
            layer.qkv, layer.out = a.qkv.weight.data_ptr(), a.out.weight.data_ptr()
            layer.up, layer.down = block.mlp.up.weight.data_ptr(), block.mlp.down.weight.data_ptr()
            layer.k, layer.v = buf[0].data_ptr(), (buf[1].data_ptr() if len(buf) == 2 else None)
            layer.cb, layer.ckv, layer.cl = buf[0].stride(0), buf[0].stride(1), buf[0].stride(2)
            layer.eps1, layer.eps2 = block.norm1._eps(like), block.norm2._eps(like)
        self.layers = layers
        self.spec = cpu_step.StepModel(
            n_layers=len(blocks), bf16=int(dtype == torch.bfloat16), d_model=s.d_model,
            q_heads=s.n_heads if has_q else s.n_kv_heads, kv_heads=s.n_kv_heads, d_head=s.d_head,
            d_ff=blocks[0].mlp.down.in_features, has_q=int(has_q), max_len=cache.max_len, scale=attn0._scale(),
            cos_t=model.rope_cos.data_ptr(), sin_t=model.rope_sin.data_ptr(), layers=layers,
            embedding=model.tok_emb.weight.data_ptr(), final_norm=model.norm.weight.data_ptr(), head=model.head.weight.data_ptr(),
            vocab=model.head.out_features, final_eps=model.norm._eps(like),
        )
        self.ref = ctypes.byref(self.spec)
        lib = cpu_step.library()
        self.scratch = torch.empty(lib.qkvlab_decode_step_scratch(self.ref, cache.batch), dtype=dtype)
        self.work: dict[int, torch.Tensor] = {}

    def __call__(self, idx: torch.Tensor, start_pos: int) -> torch.Tensor:
        """Logits (B, 1, vocab) for the tokens idx (B, 1) at start_pos, the cache written there."""
        idx = idx.reshape(-1).to(torch.int64).contiguous()
        threads = torch.get_num_threads()
        work = self.work.get(threads)
        lib = cpu_step.library()
        if work is None:
            work = self.work[threads] = torch.empty(lib.qkvlab_decode_step_work(self.ref, self.cache.batch, threads), dtype=torch.float32)
        B = idx.shape[0]
        logits = torch.empty(B, 1, self.spec.vocab, dtype=self.scratch.dtype)
        status = lib.qkvlab_decode_step(self.ref, idx.data_ptr(), logits.data_ptr(), B, start_pos, self.scratch.data_ptr(), work.data_ptr(), threads)
        if status == 2:
            raise ValueError(f"KV cache holds {self.cache.max_len} positions; asked to write up to {start_pos + 1}")
        if status == 3:
            raise IndexError("index out of range in self")  # what the embedding table says
        if status:
            raise RuntimeError(f"decode step: a C function refused the shapes of {type(self.model).__name__} (status {status})")
        return logits


def _slots(model) -> list[tuple[dict, str]]:
    """Where each parameter and buffer lives (its module's dict and name): read per token instead of
    walking the module tree, which took 0.2-0.5 ms of a 1.1 ms token."""
    return [(d, name) for m in model.modules() for d in (m._parameters, m._buffers) for name, t in d.items() if t is not None]


def _signature(model, slots: list[tuple[dict, str]]) -> tuple:
    """What a step's packing and applicability depend on and may change during a cache's life: the
    decode policy, training mode, and every parameter's and buffer's storage (a cast or a replaced weight
    moves it)."""
    return (kv_decode.policy(), model.training, *(d[name].data_ptr() for d, name in slots))


def step_for(model, cache: KVCache) -> Optional[DecodeStep]:
    """The step for this model and cache (packed once per cache and checked again when the signature
    changes), or None where the modules decode."""
    got = getattr(cache, "_step", None)
    if got is None or got[0] is not model:
        got = (model, _slots(model), None, None)
    signature = _signature(model, got[1])
    if got[2] != signature:
        got = (model, got[1], signature, DecodeStep(model, cache) if why_not(model, cache) is None else None)
    cache._step = got
    return got[3]
