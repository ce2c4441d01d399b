"""RoPE forward + backward at model=small's training shape: qkvlab's rotate (three-pass forward,
hand-written backward) against the textbook x*cos + rotate_half(x)*sin through autograd, timed in
interleaved blocks (ABAB), medians after three warm-up blocks. Usage: python scripts/bench_rope.py"""
import torch, time, statistics
from qkvlab.model.attention import rotate
def old(x, cos, sin):
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
B,H,T,D = 64, 8, 64, 48
ang = torch.rand(T, D//2)*3; a = torch.cat([ang,ang],-1); cos, sin = a.cos(), a.sin()
x0 = torch.randn(B,H,T,D)
def run(f):
    x = x0.clone().requires_grad_()
    y = f(x, cos, sin); y.backward(torch.ones_like(y))
ts = {"old": [], "new": []}
for r in range(30):
    for name, f in (("old", old), ("new", rotate)):
        t = time.perf_counter()
        for _ in range(5): run(f)
        ts[name].append((time.perf_counter()-t)/5*1e3)
o, n = statistics.median(ts["old"][3:]), statistics.median(ts["new"][3:])
print(f"RoPE fwd+bwd on {B}x{H}x{T}x{D}: textbook {o:.2f} ms, hand-written {n:.2f} ms, ratio {o/n:.2f}")
