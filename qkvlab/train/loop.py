"""The training loop: one run, one run directory.

Losses and finiteness flags stay on the device between log points. On CUDA
the fused AdamW skips a non-finite update itself (its `found_inf` input), so
the loop never waits for the GPU between log points; elsewhere the skip is a
host decision, one scalar read per step, which costs nothing on a CPU. All
loop state lives in `LoopState`, so a checkpoint taken at any step boundary
resumes bit for bit.

A family may add auxiliary losses (`Transformer.forward_with_aux`): the step
minimises cross-entropy + variant.aux_weight x each of them, train/loss stays
the cross-entropy alone (so it compares across families), and each auxiliary
loss is logged unweighted as train/aux/<name>, its mean over the window's
finite steps, like train/loss.

With a distillation teacher (qkvlab/train/distill.py) train/loss is the
distillation loss, the one minimised, and its terms are logged beside it as
train/ce and train/kl (train/ppl is exp(train/ce)); validation stays plain
cross-entropy, so distilled runs compare with plain ones.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from qkvlab.config import Config, as_dict
from qkvlab.data import IGNORE, MISSING, build_data, check_same_data
from qkvlab.model.matching import match_report
from qkvlab.model import (
    AttentionSpec,
    attention_spec,
    build_model,
    count_params,
    kv_cache_bytes_per_token,
    mha_kv_bytes_per_token,
    model_vocab,
)
from qkvlab.model.attention import aux_weight
from qkvlab.model.flops import matmul_params, train_flops_per_token
from qkvlab.track.metrics import MetricsWriter
from qkvlab.train.budget import resolve_steps, tokens_after, tokens_per_step
from qkvlab.train.checkpoint import FINAL, check_shapes, load_training_state, mark_final, step_path, write_checkpoint
from qkvlab.train.distill import RECORD, check_resume_without_teacher, make_distiller
from qkvlab.train.device import autocast, compute_dtype, configure_device, pick_device, precision_choice
from qkvlab.train.distributed import SINGLE, World, grad_norm_
from qkvlab.train.evaluate import evaluate
from qkvlab.train.init_from import start_weights
from qkvlab.train.sharded_checkpoint import write_consolidated, write_sharded_checkpoint
from qkvlab.train.optim import lr_at, make_optimizer
from qkvlab.train.progress import progress_bar
from qkvlab.train.signals import Preempted, StopRequest


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RunInfo:
    """What a run is, known before the first step: goes into summary and W&B config."""

    device: str
    precision: str
    vocab_size: int
    # Why this precision: `auto` picks per machine, and the figures depend on it.
    precision_reason: str = ""
    stats: dict[str, Any] = field(default_factory=dict)


def model_stats(cfg: Config, model, spec: AttentionSpec, precision: str) -> dict[str, Any]:
    dtype = compute_dtype(precision)
    # The built model's layer count: a layer-matched control has more layers than configured.
    n_layers = model.cfg.n_layers
    kv = kv_cache_bytes_per_token(model, dtype)
    kv_mha = mha_kv_bytes_per_token(spec, n_layers, dtype)
    return {
        **count_params(model),
        **match_report(cfg, model.cfg, model.vocab_size),
        "kv_cache/bytes_per_token": kv,
        "kv_cache/bytes_per_token_mha": kv_mha,
        "kv_cache/reduction_vs_mha": 1 - kv / kv_mha,
        "n_kv_heads": spec.n_kv_heads,
        "params/matmul": matmul_params(model),
        "compute/flops_per_token": train_flops_per_token(model, cfg.data.seq_len),
        # Query heads whose scores are computed, as a fraction of all (routed heads run fewer).
        "attention/query_heads_computed": sum(
            getattr(block.attn, "query_heads_computed", spec.n_heads) for block in model.blocks
        ) / (len(model.blocks) * spec.n_heads),
    }


@dataclass
class LoopState:
    """Everything the loop carries from step to step; a checkpoint stores it so a
    resumed run logs exactly what the uninterrupted run would have."""

    step: int = 0
    best: dict[str, float] = field(default_factory=dict)
    val: dict[str, float] = field(default_factory=dict)
    last_train: dict[str, float] = field(default_factory=dict)
    window_loss: float = 0.0
    # Sums over the window's finite steps of each auxiliary loss, by name.
    window_aux: dict[str, float] = field(default_factory=dict)
    # Sums over the window's finite steps of the distillation loss's terms (ce, kl), by name.
    window_terms: dict[str, float] = field(default_factory=dict)
    window_finite: int = 0
    window_steps: int = 0
    train_time: float = 0.0
    wall_time: float = 0.0
    nonfinite_skipped: int = 0
    nonfinite_in_a_row: int = 0
    # A signal cut the evaluation at `step` short; the resumed run does it first.
    eval_owed: bool = False


class Diverged(RuntimeError):
    """Non-finite loss or gradients beyond what `train.on_nonfinite` tolerates."""


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "cached": cached},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


class Trainer:
    """`world`: this process's rank in a DDP job (qkvlab/train/distributed.py); every rank trains on
    its slice of each global batch, and only rank 0 writes checkpoints, metrics and the progress bar."""

    def __init__(self, cfg: Config, run_dir: Path, world: World = SINGLE):
        self.cfg, self.run_dir, self.world = cfg, Path(run_dir), world
        seed_everything(cfg.seed)
        self.device = world.device(pick_device(cfg.train.device))
        configure_device(self.device)
        self.precision, self.precision_reason = precision_choice(cfg.train.precision, self.device, cfg.model.d_model)
        self.amp = autocast(self.device, self.precision)
        self.data = build_data(cfg)
        vocab = model_vocab(cfg.model, self.data.vocab_size)
        self.spec = attention_spec(cfg)
        self.model = build_model(cfg, vocab).to(self.device)
        started_from = start_weights(cfg, self.model, self.data, vocab)
        self.cfg = cfg = resolve_steps(cfg, matmul_params(self.model))
        self.distiller = make_distiller(cfg, self.data, vocab, self.device, self.amp)
        # Counted before FSDP shards the parameters (a rank then holds only its part of each).
        self.info = RunInfo(
            device=str(self.device),
            precision=self.precision,
            vocab_size=vocab,
            precision_reason=self.precision_reason,
            stats={**model_stats(cfg, self.model, self.spec, self.precision), **started_from, **parallel_stats(cfg, world)},
        )
        self.ddp = world.wrap(self.model, self.device, self.precision)
        self.optimizer = make_optimizer(self.model, cfg.optim, self.device)
        self.skip_on_device = bool(self.optimizer.defaults.get("fused"))
        forward = self.ddp if self.ddp is not None else self.model.forward_with_aux
        self.step_fn = torch.compile(forward) if cfg.train.compile else forward
        self.aux_weight = aux_weight(cfg)
        # The last step's auxiliary losses (means over its micro-batches), device tensors by name.
        self.last_aux: dict[str, torch.Tensor] = {}
        # The last step's distillation terms (means over its micro-batches), device tensors by name.
        self.last_terms: dict[str, torch.Tensor] = {}
        if self.distiller is not None:
            self.info.stats.update(self.distiller.record)
        self.tokens_per_step = tokens_per_step(cfg)
        self.state = LoopState()
        self.last_checkpoint: Path | None = None
        # A checkpoint is good once a step on its weights had a finite loss and gradients;
        # weights that overflowed in the update before it save fine and only fail the next step.
        self.good_checkpoint: Path | None = None
        self._unconfirmed: Path | None = None
        # A chosen checkpoint's payload whose weights are not loaded yet (`load_weights`).
        self._owed_weights: dict[str, Any] | None = None
        self._own_stream()

    def _own_stream(self) -> None:
        """Ranks other than 0 draw dropout masks from a stream of their own, derived from (seed, rank, step):
        on one stream every rank would drop the same positions of its slice. (Rank 0's stream is the one
        a checkpoint keeps, so with dropout a run at another world size matches only in distribution.)"""
        if self.world.rank:
            seed = np.random.SeedSequence([self.cfg.seed, self.world.rank, self.state.step]).generate_state(1)[0]
            torch.manual_seed(int(seed))

    def state_dict(self, weights: bool = True) -> dict[str, Any]:
        """`weights=False`: all but the model and optimizer, which a sharded checkpoint writes apart."""
        return {
            "config": as_dict(self.cfg),
            "vocab_size": self.info.vocab_size,
            "data": self.data.identity,
            **({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()} if weights else {}),
            "rng": rng_state(),
            "loop": asdict(self.state),
            **({RECORD: self.distiller.record} if self.distiller is not None else {}),
        }

    def load_state_dict(self, payload: dict[str, Any], path: Path) -> None:
        """Continue from a checkpoint already checked by `check_resumable`."""
        check_shapes(payload["model"], self.model, path)
        check_same_data(payload.get("data", MISSING), self.data, str(path), "start fresh with train.resume=never")
        if self.distiller is not None:
            self.distiller.check_resume(payload.get(RECORD, MISSING), path)
        else:
            check_resume_without_teacher(payload.get(RECORD, MISSING), path)
        self._owed_weights = payload
        if not self.world.sharded:
            self.load_weights()
        set_rng_state(payload["rng"])
        self.state = LoopState(**payload["loop"])
        self._own_stream()
        self.last_checkpoint = self._unconfirmed = path

    def load_weights(self) -> None:
        """The weights and optimizer state of the checkpoint `load_state_dict` took. Under FSDP every
        rank loads together, after rank 0 chose the checkpoint (qkvlab/train/run.py)."""
        payload, self._owed_weights = self._owed_weights, None
        if payload is not None:
            load_training_state(self.model, self.optimizer, payload)

    def save(self) -> Path:
        """Rank 0 writes the checkpoint (the unwrapped model's weights: one file at any world size);
        under FSDP every rank writes its shards (qkvlab/train/sharded_checkpoint.py)."""
        step, keep = self.state.step, self.cfg.train.keep_checkpoints
        if self.world.sharded:
            state = self.state_dict(weights=False) if self.world.is_main else {}
            path = write_sharded_checkpoint(self.run_dir, step, state, self.model, self.optimizer, keep, self.world)
        elif self.world.is_main:
            path = write_checkpoint(self.run_dir, step, self.state_dict(), keep)
        else:
            path = step_path(self.run_dir, step)
        self.last_checkpoint = self._unconfirmed = path
        return path

    def finish(self) -> None:
        """checkpoints/final.pt: the last step checkpoint, one file at any world size."""
        if self.world.sharded:
            state = self.state_dict(weights=False) if self.world.is_main else {}
            final = self.last_checkpoint.parent / FINAL
            write_consolidated(final, self.state.step, state, self.model, self.optimizer, self.world)
        elif self.world.is_main:
            mark_final(self.last_checkpoint)

    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step: (mean loss, finite) as device tensors; no update when not finite."""
        cfg = self.cfg
        lr = lr_at(step, cfg.train.steps, cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return self.update(self.world.shard(self.data.train_batch(step, micro)) for micro in range(cfg.train.grad_accum))

    def update(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over grad_accum micro-batches: the bare model step bench times."""
        cfg = self.cfg
        total = torch.zeros((), device=self.device)
        aux_total: dict[str, torch.Tensor] = {}
        terms_total: dict[str, torch.Tensor] = {}
        for micro, (x, y) in enumerate(batches):
            if self.device.type == "cuda" and x.device.type == "cpu":
                # Pinned host memory makes the copy asynchronous: the host runs ahead of the GPU.
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.world.no_sync(self.ddp if self.ddp is not None else self.model, last=micro == cfg.train.grad_accum - 1):
                with self.amp:
                    logits, aux = self.step_fn(x)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE)
                if self.distiller is not None:
                    loss, terms = self.distiller.objective(x, y, logits, loss)
                    for name, value in terms.items():
                        terms_total[name] = terms_total.get(name, 0.0) + value
                objective = loss
                for name, value in aux.items():
                    objective = objective + self.aux_weight * value.float()
                    aux_total[name] = aux_total.get(name, 0.0) + value.detach().float()
                (objective / cfg.train.grad_accum).backward()
            total += loss.detach()
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = grad_norm_(params, cfg.optim.grad_clip)
        mean = total / cfg.train.grad_accum
        self.last_aux = {name: value / cfg.train.grad_accum for name, value in aux_total.items()}
        self.last_terms = {name: value / cfg.train.grad_accum for name, value in terms_total.items()}
        finite = torch.isfinite(mean) & torch.isfinite(norm)
        for value in self.last_aux.values():
            finite = finite & torch.isfinite(value)
        if self.skip_on_device:
            self.optimizer.found_inf = (~finite).float()
            self.optimizer.step()
        elif bool(finite):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return mean, finite

    def validate(self, stop: StopRequest | None = None) -> dict[str, float] | None:
        """Validation metrics, or None when a stop request cut the pass short."""
        asked = (lambda: stop.poll() is not None) if stop is not None else None
        return evaluate(self.model, self.data.val_batches(), self.device, self.amp, self.data.exact_match, asked, self.world)

    def _evaluate_step(self, writer: MetricsWriter, stop: StopRequest | None) -> None:
        """Evaluate at the current step and log it; a stop request mid-pass checkpoints and ends the run."""
        st = self.state
        val = self.validate(stop)
        if val is None:
            st.eval_owed = True
            self.save()
            raise Preempted(stop.agreed, st.step, self.last_checkpoint)
        st.eval_owed = False
        st.val = val
        writer.log(st.step, tokens_after(self.cfg, st.step), val)
        if not st.best or val["val/loss"] < st.best["best/val/loss"]:
            st.best = {"best/val/loss": val["val/loss"], "best/val/ppl": val["val/ppl"], "best/step": st.step}

    def _nonfinite(self, done: int) -> None:
        st, t = self.state, self.cfg.train
        st.nonfinite_skipped += 1
        st.nonfinite_in_a_row += 1
        if t.on_nonfinite == "stop" or st.nonfinite_in_a_row >= t.max_nonfinite:
            streak = f"{st.nonfinite_in_a_row} steps in a row, " if st.nonfinite_in_a_row > 1 else ""
            raise Diverged(
                f"non-finite loss or gradients at step {done} ({streak}train.on_nonfinite={t.on_nonfinite}); "
                f"{self.checkpoint_verdict()}; lower optim.lr or raise optim.warmup_steps"
            )

    def checkpoint_verdict(self) -> str:
        """Which checkpoint, if any, holds weights known to train: the one a diverged run can go back to."""
        if self.good_checkpoint is not None:
            return f"the last good checkpoint is {self.good_checkpoint}"
        if self.last_checkpoint is not None:
            return f"no checkpoint is known good (no finite step has run on the weights in {self.last_checkpoint})"
        return "no checkpoint was written yet"

    def settle(self, pending: list[tuple[int, torch.Tensor]]) -> None:
        """Count the finiteness flags of the steps since the last settle, in order, with one
        device read; raises Diverged at the step where the policy gives up."""
        st = self.state
        flags = torch.stack([f for _, f in pending]).tolist() if pending else []
        for (done, _), ok in zip(pending, flags):
            if ok:
                st.window_finite += 1
                st.nonfinite_in_a_row = 0
                if self._unconfirmed is not None:
                    self.good_checkpoint, self._unconfirmed = self._unconfirmed, None
            else:
                self._nonfinite(done)
        pending.clear()

    def _mean_over_ranks(self, loss: torch.Tensor, aux: dict[str, torch.Tensor], terms: dict[str, torch.Tensor]):
        """The window sums averaged over the ranks: idempotent, so a later window adds to it on every rank alike."""
        if not self.world.distributed:
            return loss, aux, terms
        names = [("aux", n) for n in aux] + [("terms", n) for n in terms]
        values = self.world.mean([loss, *aux.values(), *terms.values()])
        out = {"aux": {}, "terms": {}}
        for (group, name), value in zip(names, values[1:]):
            out[group][name] = value
        return values[0], out["aux"], out["terms"]

    def fit(self, writer: MetricsWriter, stop: StopRequest | None = None) -> dict[str, Any]:
        cfg, t, st = self.cfg, self.cfg.train, self.state
        segment_start = time.perf_counter()
        wall_before = st.wall_time
        window_loss = torch.tensor(st.window_loss, device=self.device)
        window_aux = {name: torch.tensor(v, device=self.device) for name, v in st.window_aux.items()}
        window_terms = {name: torch.tensor(v, device=self.device) for name, v in st.window_terms.items()}
        window_time = 0.0
        bar = progress_bar(total=t.steps, initial=st.step, desc=f"{cfg.variant.name}", enabled=t.progress and self.world.is_main)
        tick = time.perf_counter()
        self.model.train()
        pending: list[tuple[int, torch.Tensor]] = []
        if st.eval_owed or (t.steps == 0 and not st.val):  # steps=0: a zero-shot run evaluates its starting weights
            st.wall_time = wall_before + time.perf_counter() - segment_start
            self._evaluate_step(writer, stop)
            self.save()
        for step in range(st.step, t.steps):
            loss, finite = self.train_step(step)
            done = step + 1
            st.step = done
            st.window_steps += 1
            window_loss += torch.where(finite, loss, 0.0)
            for name, value in self.last_aux.items():
                window_aux[name] = window_aux.get(name, 0.0) + torch.where(finite, value, 0.0)
            for name, value in self.last_terms.items():
                window_terms[name] = window_terms.get(name, 0.0) + torch.where(finite, value, 0.0)
            pending.append((done, finite))
            log_now = done % t.log_every == 0 or done == t.steps
            eval_now = done % t.eval_every == 0 or done == t.steps
            # Every rank polls at every step, so all of them stop at the same one.
            preempted = stop is not None and stop.poll() is not None and done < t.steps
            save_now = done % t.checkpoint_every == 0 or done == t.steps or preempted
            if not self.skip_on_device or log_now or eval_now or save_now:
                self.settle(pending)
            if log_now or eval_now or save_now:
                # Each rank's window holds its own slices' losses: logged and checkpointed, they are the ranks' mean.
                window_loss, window_aux, window_terms = self._mean_over_ranks(window_loss, window_aux, window_terms)
            if log_now:
                mean_loss = float(window_loss) / st.window_finite if st.window_finite else float("nan")
                # Perplexity is of the cross-entropy: a distillation loss has no perplexity.
                mean_ce = float(window_terms["ce"]) / st.window_finite if "ce" in window_terms and st.window_finite else mean_loss
                window_time += time.perf_counter() - tick
                st.train_time += window_time
                st.last_train = {
                    "train/loss": mean_loss,
                    "train/ppl": math.exp(min(mean_ce, 700.0)) if st.window_finite else float("nan"),
                    "lr": lr_at(step, t.steps, cfg.optim),
                    "throughput/tokens_per_s": (tokens_after(cfg, done) - tokens_after(cfg, done - st.window_steps)) / max(window_time, 1e-9),
                    "train/nonfinite_skipped": st.nonfinite_skipped,
                    **{
                        f"train/aux/{name}": float(summed) / st.window_finite if st.window_finite else float("nan")
                        for name, summed in window_aux.items()
                    },
                    **{
                        f"train/{name}": float(summed) / st.window_finite if st.window_finite else float("nan")
                        for name, summed in window_terms.items()
                    },
                }
                writer.log(done, tokens_after(cfg, done), st.last_train)
                bar.set_postfix(
                    loss=f"{mean_loss:.4f}",
                    lr=f"{st.last_train['lr']:.2e}",
                    tok_s=f"{st.last_train['throughput/tokens_per_s']:,.0f}",
                    refresh=False,
                )
                window_loss = torch.zeros((), device=self.device)
                window_aux = {name: torch.zeros((), device=self.device) for name in window_aux}
                window_terms = {name: torch.zeros((), device=self.device) for name in window_terms}
                st.window_finite, st.window_steps, window_time = 0, 0, 0.0
                tick = time.perf_counter()
            if eval_now:
                window_time += time.perf_counter() - tick
                st.window_loss = float(window_loss)
                st.window_aux = {name: float(total) for name, total in window_aux.items()}
                st.window_terms = {name: float(total) for name, total in window_terms.items()}
                st.wall_time = wall_before + time.perf_counter() - segment_start
                try:
                    self._evaluate_step(writer, stop)
                except Preempted:
                    bar.close()
                    raise
                bar.set_postfix(loss=f"{st.last_train.get('train/loss', float('nan')):.4f}", val=f"{st.val['val/loss']:.4f}", refresh=False)
                tick = time.perf_counter()
            bar.update(1)
            if save_now:
                window_time += time.perf_counter() - tick
                st.window_loss = float(window_loss)
                st.window_aux = {name: float(total) for name, total in window_aux.items()}
                st.window_terms = {name: float(total) for name, total in window_terms.items()}
                st.wall_time = wall_before + time.perf_counter() - segment_start
                self.save()
                tick = time.perf_counter()
            if preempted:
                bar.close()
                raise Preempted(stop.agreed, done, self.last_checkpoint)
        bar.close()
        if stop is not None:
            stop.settle()
        bad = {k: v for k, v in st.val.items() if not math.isfinite(v)}
        if bad:
            raise Diverged(
                f"the final validation gave {', '.join(f'{k}={v}' for k, v in bad.items())} at step {t.steps}, "
                f"so the run is not complete; {self.checkpoint_verdict()}; lower optim.lr or raise optim.warmup_steps"
            )
        if self.last_checkpoint is None or step_path(self.run_dir, t.steps, self.world.sharded) != self.last_checkpoint:
            st.wall_time = wall_before + time.perf_counter() - segment_start
            self.save()
        self.finish()
        tokens = tokens_after(cfg, t.steps)
        return {
            **st.val,
            **st.best,
            "train/loss": st.last_train.get("train/loss"),
            **{k: v for k, v in st.last_train.items() if k.startswith("train/aux/") or k in ("train/ce", "train/kl")},
            "train/nonfinite_skipped": st.nonfinite_skipped,
            "step": t.steps,
            "tokens": tokens,
            "compute/flops": self.info.stats["compute/flops_per_token"] * tokens,
            "compute/tokens_per_param": tokens / self.info.stats["params/matmul"],
            "throughput/tokens_per_s": tokens / max(st.train_time, 1e-9),
            "wall_time_s": wall_before + time.perf_counter() - segment_start,
        }


def parallel_stats(cfg: Config, world: World) -> dict[str, Any]:
    """How the job ran: the summary says it, since throughput and memory depend on it."""
    return {"parallel": world.parallel, "world_size": world.size, "batch_per_device": cfg.data.batch_size // world.size}


def base_summary(cfg: Config, info: RunInfo | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "variant": cfg.variant.name,
        "sharing": cfg.variant.sharing,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "seed": cfg.seed,
        "experiment": cfg.name,  # the study (`name`); summaries have said "experiment" from the start
    }
    if info is not None:
        out.update(device=info.device, precision=info.precision, precision_reason=info.precision_reason)
        out.update(vocab_size=info.vocab_size, **info.stats)
    return out


def config_record(cfg: Config, info: RunInfo) -> dict[str, Any]:
    return {**as_dict(cfg), **info.stats, "precision": info.precision, "device": info.device}
