"""Attention with shared query/key/value projections.

One module serves the four sharing patterns of the study. It builds a single
fused Linear holding only the projections the pattern needs, so the parameter
count and the matmul FLOPs show the saving for real:

    sharing       projections      Q          K          V
    mha           W_Q W_K W_V      x W_Q      x W_K      x W_V
    q_eq_k        W_K W_V          x W_K      x W_K      x W_V
    k_eq_v        W_Q W_K          x W_Q      x W_K      x W_K
    q_eq_k_eq_v   W_K              x W_K      x W_K      x W_K

Head sharing (GQA/MQA) gives K and V fewer heads than Q. With RoPE the shared
tensor S is rotated to make keys (and queries when Q=K) while values stay
unrotated S, so `k_eq_v` caches one tensor per KV head (see kv_cache.py)
and decoding forms keys from it at attention time. A fused kernel
(kv_decode.py: C on CPUs, Triton on CUDA) reads each cached element once per
token, keys made in registers, values the same rows: half of `mha`'s bytes.
Where no kernel applies, PyTorch rotates the whole cache every step; in fp32
S is then cached with its rotary pairs side by side and rotated as one
complex multiply (one pass over memory, less than half the time of the
rotate-half form).

`plus` adds the study's learned 2-D positional term to the scores (qkvlab/model/plus.py), on
any sharing: the asymmetric "+" variants.

`v_norm` adds Gemma 4's gain-free RMSNorm on values (with QK-norm): for
`k_eq_v`, V = norm(S) and K = RoPE(k_norm(S)) = RoPE(gain * norm(S)), so the
one cached tensor becomes norm(S) and decoding rebuilds keys from it with the
key norm's gain alone.

Further attention families register themselves in `FAMILIES` by name; a
variant config picks one with `variant.family`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from qkvlab.model import kv_decode
from qkvlab.model.kernels import cpu_train
from qkvlab.model.plus import PlusScores, check_plus
from qkvlab.model.probe import ScoreProbe, dot_scores, emit, fp32, wants_probe

if TYPE_CHECKING:
    from qkvlab.model.kv_cache import LayerKVCache


@dataclass(frozen=True)
class LayerInfo:
    """Where a family's module sits: what depth-dependent families (and cross-layer sharing) need."""

    index: int
    n_layers: int


@dataclass(frozen=True)
class AttentionSpec:
    d_model: int
    n_heads: int
    n_kv_heads: int
    sharing: str
    bias: bool
    dropout: float
    causal: bool
    share_every: int = 1
    kv_shared_layers: int = 0
    # Expanded attention's U: d_head x rank (None: 3 * d_head).
    rank: Optional[int] = None
    # Loop attention's sliding window over the second pass's own K/V (None: 64).
    window: Optional[int] = None
    # RMSNorm over d_head on queries and keys before RoPE (values stay raw, as in Gemma 4).
    qk_norm: bool = False
    # Gemma 4's gain-free RMSNorm on values.
    v_norm: bool = False
    # Scores times this instead of 1/sqrt(d_head) (None).
    score_scale: Optional[float] = None
    # Multi-head latent attention: latent width and decoupled RoPE width (None: 4 d_head, d_head / 2).
    kv_rank: Optional[int] = None
    rope_dim: Optional[int] = None
    norm_eps: float = 1e-5
    # Routed query heads: heads each token picks per KV group, and heads per group always on (None: defaults).
    top_k: Optional[int] = None
    shared_heads: Optional[int] = None
    # The study's "+" positional term on the scores, and what scales the content scores (plus.py).
    plus: bool = False
    plus_content_scale: str = "shared"

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def mha_twin(self) -> "AttentionSpec":
        """`mha` of the same shape: three projections, a KV head per query head, no cross-layer sharing."""
        return dataclasses.replace(self, sharing="mha", n_kv_heads=self.n_heads, share_every=1, kv_shared_layers=0, plus=False)

    def kv_source(self, layer: "LayerInfo") -> int:
        """The layer whose K/V this layer attends over: itself, or an earlier one it reuses."""
        if self.kv_shared_layers and layer.index >= layer.n_layers - self.kv_shared_layers:
            return layer.n_layers - self.kv_shared_layers - 1
        return layer.index - layer.index % self.share_every

    @property
    def projections(self) -> tuple[tuple[str, int], ...]:
        """(name, heads) of each projection the fused Linear holds, in order."""
        q, kv = self.n_heads, self.n_kv_heads
        return {
            "mha": (("q", q), ("k", kv), ("v", kv)),
            "q_eq_k": (("k", kv), ("v", kv)),
            "k_eq_v": (("q", q), ("k", kv)),
            "q_eq_k_eq_v": (("k", kv),),
        }[self.sharing]

    @property
    def cached_tensors(self) -> int:
        """Tensors per KV head a decoder caches: K and V, or one when V is K's input."""
        return 2 if self.sharing in ("mha", "q_eq_k") else 1


AUX = "aux"


def add_aux(shared: Optional[dict], name: str, value: torch.Tensor) -> None:
    """Add a family's auxiliary loss to this forward's total under `name` (summed over layers).

    The training loop adds aux_weight x each total to the loss and logs it as train/aux/<name>;
    `shared` is None when nobody collects (a bare layer call), and then this does nothing."""
    if shared is None:
        return
    aux = shared.setdefault(AUX, {})
    aux[name] = aux[name] + value if name in aux else value


class Rope(NamedTuple):
    """Rotary tables for positions start..start+T: cos and sin of shape (T, d_head),
    and for decoding `cis` = cos + i·sin of the first half, (T, d_head/2) complex."""

    cos: torch.Tensor
    sin: torch.Tensor
    cis: Optional[torch.Tensor] = None

    def at(self, start: int) -> "Rope":
        return Rope(*(None if t is None else t[start:] for t in self))


def to_pairs(x: torch.Tensor) -> torch.Tensor:
    """Rotate-half layout [x1 | x2] -> rotary pairs side by side (x1_0, x2_0, x1_1, x2_1, ...)."""
    return x.unflatten(-1, (2, -1)).transpose(-1, -2).flatten(-2)


def from_pairs(x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)


def rotate_pairs(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """RoPE on a tensor in pair layout: one complex multiply, one pass over memory."""
    return torch.view_as_real(torch.view_as_complex(x.unflatten(-1, (-1, 2))) * cis).flatten(-2)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """x·cos + sign·rotate_half(x)·sin into one new tensor: one multiply and two half-width
    multiply-adds, where the textbook form makes a concatenated copy and four full passes."""
    h = x.shape[-1] // 2
    out = x * cos
    out[..., :h].addcmul_(x[..., h:], sin[..., :h], value=-sign)
    out[..., h:].addcmul_(x[..., :h], sin[..., h:], value=sign)
    return out


class _Rope(torch.autograd.Function):
    """RoPE with a hand-written backward: the gradient is the inverse rotation, R(-θ)·g, so nothing
    but the tables is saved; on CPUs in fp32 both directions are one pass in C (kernels/cpu_train.py),
    elsewhere `_rotate`'s three passes."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        ctx.dtype = x.dtype
        return _rotate_any(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate_any(grad, cos, sin, sign=-1.0).to(ctx.dtype), None, None


def _rotate_any(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    if cpu_train.rope_applies(x, cos, sin):
        return cpu_train.rope(x, cos, sin, sign)
    return _rotate(x, cos, sin, sign)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (rotate-half form) on (B, H, T, D)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _Rope.apply(x, cos, sin)
    return _rotate_any(x, cos, sin)


def _decode_attention(q, k, v, start_pos: int, enable_gqa: bool, scale: Optional[float] = None) -> torch.Tensor:
    """Causal attention of T new queries at start_pos.. over all cached keys 0..start_pos+T."""
    T = q.shape[2]
    if T == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=enable_gqa, scale=scale)
    if start_pos == 0:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=enable_gqa, scale=scale)
    mask = torch.ones(T, k.shape[2], dtype=torch.bool, device=q.device).tril(diagonal=start_pos)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=enable_gqa, scale=scale)


class SharedQKVAttention(nn.Module):
    """The four sharing patterns, with GQA/MQA and cross-layer KV sharing.

    A layer that reuses an earlier layer's K/V (`spec.kv_source`) builds only its
    query projection and attends over the producer's keys and values, the very
    tensors (in training) or cache views (in decoding) the producer made, which it
    hands over in the per-forward `shared` dict."""

    def __init__(self, spec: AttentionSpec, layer: LayerInfo):
        super().__init__()
        self.spec, self.layer = spec, layer
        self.source = spec.kv_source(layer)
        self.reuses = self.source != layer.index
        self.feeds = any(spec.kv_source(LayerInfo(j, layer.n_layers)) == layer.index for j in range(layer.index + 1, layer.n_layers))
        self.projections = (("q", spec.n_heads),) if self.reuses else spec.projections
        self.split = [heads * spec.d_head for _, heads in self.projections]
        self.qkv = nn.Linear(spec.d_model, sum(self.split), bias=spec.bias)
        self.out = nn.Linear(spec.n_heads * spec.d_head, spec.d_model, bias=spec.bias)
        has_q = any(name == "q" for name, _ in self.projections)
        self.q_norm = nn.RMSNorm(spec.d_head, eps=spec.norm_eps) if spec.qk_norm and has_q else None
        self.k_norm = nn.RMSNorm(spec.d_head, eps=spec.norm_eps) if spec.qk_norm and not self.reuses else None
        if spec.score_scale is not None:
            self.score_scale = spec.score_scale
        self.plus = PlusScores(spec.plus_content_scale) if spec.plus else None

    def _nq(self, q: torch.Tensor) -> torch.Tensor:
        return q if self.q_norm is None else self.q_norm(q)

    def _nk(self, k: torch.Tensor, pairs: bool = False) -> torch.Tensor:
        """The key path's norm; in pair layout its gains are permuted like the features."""
        if self.k_norm is None:
            return k
        if not pairs:
            return self.k_norm(k)
        return F.rms_norm(k, (k.shape[-1],), to_pairs(self.k_norm.weight).to(k.dtype), self.k_norm.eps)

    def _nv(self, v: torch.Tensor) -> torch.Tensor:
        """Gemma 4's value norm: RMSNorm without a gain (order-free, so pair layout needs nothing)."""
        return F.rms_norm(v, (v.shape[-1],), eps=self.spec.norm_eps) if self.spec.v_norm else v

    def _k_from_cache(self, s: torch.Tensor, pairs: bool) -> torch.Tensor:
        """Unrotated keys from the one cached tensor. With v_norm it holds norm(S), and
        k_norm(S) = gain * norm(S), so the key needs only the gain (pair-permuted in pair layout)."""
        if not self.spec.v_norm:
            return self._nk(s, pairs)
        gain = to_pairs(self.k_norm.weight) if pairs else self.k_norm.weight
        return s * gain.to(s.dtype)

    # 1/sqrt of the dimension scores are scaled by; None: SDPA's default, the query's last dimension.
    score_scale: Optional[float] = None

    @property
    def rope_dim(self) -> int:
        """The size of the vectors RoPE rotates: the model builds its rotary tables for it."""
        return self.spec.d_head

    def score_flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token of scores and mixing (QK^T and AV, forward and backward)
        over a context of seq_len, counted in full as in PaLM's MFU."""
        return 12 * self.spec.n_heads * self.spec.d_head * seq_len

    def attend(self, x, q, k, v, start_pos: int, decoding: bool, shared: Optional[dict]) -> torch.Tensor:
        """Attention of the queries (B, H, T, d) over the keys and values (B, kv, S, d), per query head;
        a family that changes which heads run or how they mix (routed heads) overrides this.
        `x` is the layer's input, `decoding` says whether k and v are the cache."""
        gqa = k.shape[1] != q.shape[1]
        if self.plus is not None:
            drop = self.spec.dropout if self.training and not decoding else 0.0
            return self.plus.attend(q, k, v, start_pos, self.spec.causal or decoding, self.score_scale, gqa, drop)
        if decoding:
            return _decode_attention(q, k, v, start_pos, gqa, self.score_scale)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            dropout_p=self.spec.dropout if self.training else 0.0,
            is_causal=self.spec.causal,
            enable_gqa=gqa,
            scale=self.score_scale,
        )

    def score_space(self, q: torch.Tensor, k: torch.Tensor, pairs: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries and keys as the scores see them (`pairs`: in rotary pair layout); a family that
        changes only the score (expanded attention) overrides this, and the cache keeps plain K."""
        return q, k

    def probe(self, x: torch.Tensor, p: dict[str, torch.Tensor], q: torch.Tensor, k: torch.Tensor) -> ScoreProbe:
        """What analyses read (probe.py): the scores `attend` computes from q and k (as `score_space` gave
        them), before the mask, and this layer's raw projections `p`; a reusing layer projects no K/V."""
        if self.plus is not None:
            scale = self.score_scale if self.score_scale is not None else q.shape[-1] ** -0.5
            with fp32(q):
                scores = self.plus.logits(q.float(), k.float(), scale)
        else:
            scores = dot_scores(q, k, self.score_scale)
        own = not self.reuses
        return ScoreProbe(scores, p.get("q", p.get("k")), p["k"] if own else None, p.get("v", p["k"]) if own else None)

    def init_family(self) -> None:
        """Initialise what the model's generic init (normal for matrices, ones for gains) must not touch."""
        if self.plus is not None:
            self.plus.init_weights()

    def cache_shapes(self, batch: int, max_len: int) -> list[tuple[int, ...]]:
        """The buffers this layer caches for decoding; none when it reuses another layer's."""
        s = self.spec
        return [] if self.reuses else [(batch, s.n_kv_heads, max_len, s.d_head)] * s.cached_tensors

    def cache_values_per_token(self) -> int:
        """Closed form of what `cache_shapes` holds per token."""
        return 0 if self.reuses else self.spec.cached_tensors * self.spec.n_kv_heads * self.spec.d_head

    def project(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The projections this layer computes, as (B, heads, T, d_head)."""
        B, T, _ = x.shape
        parts = self.qkv(x).split(self.split, dim=-1)
        return {
            name: part.view(B, T, heads, self.spec.d_head).transpose(1, 2)
            for (name, heads), part in zip(self.projections, parts)
        }

    def qkv_from(
        self, p: dict[str, torch.Tensor], rope: Optional[Rope]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values from the projections; V is always the unrotated tensor."""
        shared_k = p["k"]
        v = self._nv(p.get("v", shared_k))
        k = self._nk(shared_k)
        k = rotate(k, rope.cos, rope.sin) if rope is not None else k
        if "q" in p:
            q = self._nq(p["q"])
            q = rotate(q, rope.cos, rope.sin) if rope is not None else q
        else:
            q = k
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        rope: Optional[Rope] = None,
        cache: Optional["LayerKVCache"] = None,
        start_pos: int = 0,
        shared: Optional[dict] = None,
    ) -> torch.Tensor:
        if cache is not None:
            return self.forward_cached(x, rope, cache, start_pos, {} if shared is None else shared)
        B, T, _ = x.shape
        p = self.project(x)
        if self.reuses:
            k, v, _ = shared[self.source]
            q = self._nq(p["q"])
            q = rotate(q, rope.cos, rope.sin) if rope is not None else q
        else:
            q, k, v = self.qkv_from(p, rope)
            if self.feeds:
                shared[self.layer.index] = (k, v, False)
        q, k = self.score_space(q, k, False)
        if wants_probe(shared):
            emit(shared, self.layer.index, self.probe(x, p, q, k))
        y = self.attend(x, q, k, v, start_pos, False, shared)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

    def fused_decode(self, cache: "LayerKVCache") -> bool:
        """Whether one-token decoding of this layer's cache runs a fused kernel (kv_decode.py): one cached
        tensor through any of them, K and V through the CPU one. Fixed per cache, since it also fixes a
        one-tensor cache's layout: a layer whose K/V later layers reuse, or
        a family that changes the scores or their mixing, keeps the PyTorch path."""
        if self.feeds or self.plus is not None or not cache.buffers:
            return False
        cls = type(self)
        if cls.attend is not SharedQKVAttention.attend or cls.score_space is not SharedQKVAttention.score_space:
            return False
        s = self.spec
        kernel = kv_decode.kernel_for(cache.buffers[0].device, cache.dtype, s.n_heads, s.n_kv_heads, s.d_head)
        return kernel is not None and (s.cached_tensors == 1 or kernel in kv_decode.TWO_TENSOR_KERNELS)

    def _decode_fused(self, p: dict, rope: Optional[Rope], new_rope: Optional[Rope], cache: "LayerKVCache", start_pos: int) -> torch.Tensor:
        """One token through the fused kernel: S is read once, keys formed from it on the fly."""
        s_new = self._nv(p["k"])
        (s,) = cache.update(start_pos, [s_new])
        if "q" in p:
            q = self._nq(p["q"])
        else:
            q = self._k_from_cache(s_new, False)
        if rope is not None:
            q = rotate(q, new_rope.cos, new_rope.sin)
        gain = eps = None
        if self.k_norm is not None:
            gain = self.k_norm.weight
            if not self.spec.v_norm:
                eps = self.k_norm.eps if self.k_norm.eps is not None else torch.finfo(s.dtype).eps
        half = self.spec.d_head // 2
        cos = sin = None
        if rope is not None:
            cos, sin = rope.cos[:, :half], rope.sin[:, :half]
        y = kv_decode.decode(q[:, :, 0], s, cos, sin, scale=self._scale(), key_gain=gain, key_norm_eps=eps)
        B = y.shape[0]
        return self.out(y.to(q.dtype).reshape(B, 1, -1))

    def _scale(self) -> float:
        return self.score_scale if self.score_scale is not None else self.spec.d_head**-0.5

    def forward_cached(self, x, rope: Optional[Rope], cache: "LayerKVCache", start_pos: int, shared: dict) -> torch.Tensor:
        """Incremental decoding; `rope` covers positions 0..start_pos+T.

        One cached tensor (`k_eq_v`, `q_eq_k_eq_v`) is the unrotated S (norm(S) with
        v_norm): keys are RoPE(S) and values the cached tensor itself, through the fused
        kernel for one new token where it applies, else recomputed here over the whole
        cache. On that PyTorch path, where the cache's dtype has a complex twin (fp32,
        fp64), S is cached in pair layout and the attention runs in it; the output goes
        back to the rotate-half layout before the output projection.
        """
        B, T, _ = x.shape
        p = self.project(x)
        new_rope = None if rope is None else rope.at(start_pos)
        if self.reuses:
            k, v, pairs = shared[self.source]
            q = self._nq(p["q"])
            if rope is not None:
                q = rotate_pairs(to_pairs(q).to(k.dtype), new_rope.cis) if pairs else rotate(q, new_rope.cos, new_rope.sin)
        elif self.spec.cached_tensors == 2:
            q, k, v = self.qkv_from(p, new_rope)
            (k, v), pairs = cache.update(start_pos, [k, v]), False
            if T == 1 and self.fused_decode(cache):
                y = kv_decode.decode(q[:, :, 0], k, None, None, scale=self._scale(), key_gain=None, key_norm_eps=None, values=v)
                return self.out(y.to(q.dtype).reshape(B, 1, -1))
        else:
            fused = self.fused_decode(cache)
            if fused and T == 1:
                return self._decode_fused(p, rope, new_rope, cache, start_pos)
            if rope is None:
                (v,) = cache.update(start_pos, [self._nv(p["k"])])
                k, pairs = self._k_from_cache(v, False), False
                q = self._nq(p["q"]) if "q" in p else k[:, :, start_pos:]
            elif not fused and rope.cis is not None and cache.dtype in (torch.float32, torch.float64):
                (v,) = cache.update(start_pos, [to_pairs(self._nv(p["k"]))])
                k, pairs = rotate_pairs(self._k_from_cache(v, True), rope.cis), True
                q = rotate_pairs(to_pairs(self._nq(p["q"])).to(cache.dtype), new_rope.cis) if "q" in p else k[:, :, start_pos:]
            else:
                (v,) = cache.update(start_pos, [self._nv(p["k"])])
                k, pairs = rotate(self._k_from_cache(v, False), rope.cos, rope.sin), False
                q = rotate(self._nq(p["q"]), new_rope.cos, new_rope.sin) if "q" in p else k[:, :, start_pos:]
        if self.feeds:
            shared[self.layer.index] = (k, v, pairs)
        q, k = self.score_space(q, k, pairs)
        y = self.attend(x, q, k, v, start_pos, True, shared)
        if pairs:
            y = from_pairs(y)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


FAMILIES: dict[str, Callable[[AttentionSpec, LayerInfo], nn.Module]] = {"shared_qkv": SharedQKVAttention}
# What a family cannot combine with: its module registers a check returning the one line to print, or None.
FAMILY_CHECKS: dict[str, Callable[[object], Optional[str]]] = {}


def check_model(cfg) -> None:
    """The family is one the model knows; run at start-up with every other check."""
    from qkvlab.errors import ConfigError

    v, n_layers = cfg.variant, cfg.model.n_layers
    if v.family not in FAMILIES:
        raise ConfigError(f"variant.family={v.family!r} is not valid; choose one of: {', '.join(FAMILIES)}")
    if v.share_every < 1:
        raise ConfigError(f"variant.share_every={v.share_every} is out of range; it must be >= 1 (1: every layer computes its own K/V)")
    if not 0 <= v.kv_shared_layers < n_layers:
        raise ConfigError(
            f"variant.kv_shared_layers={v.kv_shared_layers} is out of range; it must be in [0, {n_layers - 1}] "
            f"for model.n_layers={n_layers} (one layer must compute the K/V the others reuse)"
        )
    if v.share_every > 1 and v.kv_shared_layers:
        raise ConfigError("variant.share_every and variant.kv_shared_layers are two rules for the same thing; set one of them")
    check = FAMILY_CHECKS.get(v.family)
    problem = check(cfg) if check else None
    if problem:
        raise ConfigError(problem)
    if v.window is not None and (v.family != "loop" or v.window < 1):
        raise ConfigError(f"variant.window={v.window} is read only by variant.family=loop, as an integer >= 1; drop it or pick family=loop")
    if v.family != "routed" and (v.top_k is not None or v.shared_heads is not None):
        key = "top_k" if v.top_k is not None else "shared_heads"
        raise ConfigError(f"variant.{key}={getattr(v, key)} is read only by variant.family=routed; drop it or pick family=routed")
    check_aux_weight(cfg)
    problem = check_plus(cfg)
    if problem:
        raise ConfigError(problem)
    for key in ("kv_rank", "rope_dim"):
        if getattr(v, key) is not None and v.family != "mla":
            raise ConfigError(f"variant.{key}={getattr(v, key)} is read only by variant.family=mla; drop it or pick family=mla")
    if v.v_norm and not v.qk_norm:
        raise ConfigError(
            "variant.v_norm=true normalises values as Gemma 4 does, next to its key norm (the K=V cache keeps "
            "norm(S) and rebuilds K from the key norm's gain); set variant.qk_norm=true too"
        )
    if v.score_scale is not None and v.family != "shared_qkv":
        raise ConfigError(
            f"variant.score_scale={v.score_scale} is read only by variant.family=shared_qkv (other families fix "
            "their own scale); drop it or set null"
        )
    if v.rank is not None and (v.family != "expanded" or v.rank < 1):
        raise ConfigError(f"variant.rank={v.rank} is read only by variant.family=expanded, as an integer >= 1; drop it or pick family=expanded")
    if (v.share_every > 1 or v.kv_shared_layers) and v.sharing in ("q_eq_k", "q_eq_k_eq_v"):
        raise ConfigError(
            f"cross-layer KV sharing needs a query projection of its own, but variant.sharing={v.sharing} makes Q the K "
            "projection; use sharing mha or k_eq_v"
        )
    if cfg.model.vocab_multiple < 1:
        raise ConfigError(f"model.vocab_multiple={cfg.model.vocab_multiple} is out of range; it must be >= 1")
    if cfg.model.vocab_size is not None and cfg.model.vocab_size < 1:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is out of range; it must be >= 1, or null for the data's")


def check_aux_weight(cfg) -> None:
    from qkvlab.errors import ConfigError

    v = cfg.variant
    if v.aux_weight is None:
        return
    names = getattr(FAMILIES[v.family], "aux_losses", ())
    if not names:
        raise ConfigError(
            f"variant.aux_weight={v.aux_weight} weighs auxiliary losses, and variant.family={v.family} adds none; "
            "drop it (families with one: " + ", ".join(n for n, f in FAMILIES.items() if getattr(f, "aux_losses", ())) + ")"
        )


def aux_weight(cfg) -> float:
    """The weight of each auxiliary loss in the training loss: variant.aux_weight, else the family's default."""
    if cfg.variant.aux_weight is not None:
        return float(cfg.variant.aux_weight)
    return float(getattr(FAMILIES[cfg.variant.family], "default_aux_weight", 0.0))
