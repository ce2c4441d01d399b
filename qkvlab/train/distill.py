"""Uptraining with distillation: a finished run teaches the one being trained.

The objective is Hinton, Vinyals and Dean 2015 (*Distilling the Knowledge in a
Neural Network*, arXiv:1503.02531, §2): with p = softmax(logits / T),

    loss = α·CE(student, targets) + (1 − α)·T²·KL(p_teacher ‖ p_student),

the T² keeping the soft term's gradients on the scale of the hard term's as T
changes (they scale as 1/T²). Here α weighs the hard (cross-entropy) term, as
the issue defines it; some codebases put α on the soft term instead. KL is summed over the vocabulary and averaged over the same scored
positions as the cross-entropy (targets != IGNORE), so a digit task's or
mqar's unscored positions teach nothing, as they score nothing.

The teacher is read through `read_finished_run` (the one reader of another
run's final checkpoint), frozen (no parameter requires a gradient), kept in
eval mode (no dropout, qvv3 folded) and run under `torch.no_grad` with the
student's autocast. It must have trained on the student's tokens (the token
cache's checksum, as resume checks it) with the student's vocabulary, since the
KL compares their distributions entry by entry. With α = 1 it never runs, and
the loss is plain training's, bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from qkvlab.config import Config
from qkvlab.data import IGNORE, MISSING, DataSource
from qkvlab.errors import ConfigError
from qkvlab.train.from_run import read_finished_run

# What a checkpoint records of its teacher, under this key; resume compares it.
RECORD = "distill"


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over scored positions of KL(softmax(teacher / T) ‖ softmax(student / T)), in fp32 (T² not applied)."""
    scored = targets.flatten() != IGNORE
    s = F.log_softmax(student.float().flatten(0, -2)[scored] / temperature, dim=-1)
    t = F.log_softmax(teacher.float().flatten(0, -2)[scored] / temperature, dim=-1)
    return F.kl_div(s, t, reduction="sum", log_target=True) / scored.sum()


def _data_name(identity: Optional[dict[str, Any]]) -> str:
    if identity is None:
        return "a synthetic task"
    return f"token cache {identity['entry']} ({identity['tokens']:,} tokens, checksum {identity['checksum']})"


class Distiller:
    """The teacher and the loss it adds; `None` stands for no distillation (distill.teacher=null)."""

    def __init__(self, cfg: Config, data: DataSource, vocab: int, device: torch.device, amp):
        d = cfg.distill
        self.alpha, self.temperature, self.amp = d.alpha, d.temperature, amp
        what = f"distill.teacher={d.teacher}"
        finished = read_finished_run(d.teacher, "distill.teacher")
        self.path, self.checkpoint = finished.run.path.resolve(), finished.checkpoint.resolve()
        check_same_tokens(finished, data, vocab, what, cfg.data.seq_len)
        # Building the teacher draws initial weights; the student's RNG stream must not notice.
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if device.type == "cuda" else []):
            self.model = finished.model(device)
        self.model.requires_grad_(False)
        side = _sidecar(self.checkpoint)
        self.record = {
            "distill/teacher": str(self.path),
            "distill/teacher_run_id": finished.run.run_id,
            "distill/teacher_crc32": side.get("crc32"),
        }

    def objective(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, ce: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the loss to minimise, its terms by name for train/<name>); α = 1 returns `ce` itself."""
        if self.alpha == 1.0:
            return ce, {"ce": ce.detach()}
        self.model.eval()
        with torch.no_grad(), self.amp:
            teacher = self.model(x)
        kl = distill_kl(logits, teacher, y, self.temperature)
        loss = self.alpha * ce + (1.0 - self.alpha) * self.temperature**2 * kl
        return loss, {"ce": ce.detach(), "kl": kl.detach()}

    def check_resume(self, record: Any, path: Path) -> None:
        """Refuse a checkpoint taken under another teacher, or before its teacher's final weights changed."""
        now = self.record["distill/teacher_crc32"]
        if record is MISSING:
            raise ConfigError(
                f"cannot resume from {path}: it was trained without a teacher; drop distill.teacher, "
                "or start fresh with train.resume=never"
            )
        if record.get("distill/teacher_crc32") != now:
            raise ConfigError(
                f"cannot resume from {path}: the teacher's final checkpoint {self.checkpoint} changed since this run "
                f"started (CRC32 {_hex(record.get('distill/teacher_crc32'))} -> {_hex(now)}); "
                "restore that teacher, or start fresh with train.resume=never"
            )


def check_resume_without_teacher(record: Any, path: Path) -> None:
    """A checkpoint of a distilled run does not continue as a plain one."""
    if record is not MISSING:
        raise ConfigError(
            f"cannot resume from {path}: it was trained with distill.teacher={record.get('distill/teacher')}; "
            "add that distill.teacher (and its distill.alpha, distill.temperature), or start fresh with train.resume=never"
        )


def check_same_tokens(finished, data: DataSource, vocab: int, what: str, seq_len: int) -> None:
    """Teacher and student must read the same token ids with the same vocabulary, and the teacher the student's length."""
    trained = finished.payload.get("data", MISSING)
    now = getattr(data, "identity", None)
    if trained is not MISSING:
        same = (trained is None and now is None) or (
            trained is not None and now is not None
            and (trained["checksum"], trained["tokens"]) == (now["checksum"], now["tokens"]))
        if not same:
            raise ConfigError(
                f"{what} trained on {_data_name(trained)}, but this run trains on {_data_name(now)}; "
                "teacher and student need the same tokenizer and corpus: use the teacher's data settings"
            )
    if finished.vocab_size != vocab:
        raise ConfigError(
            f"{what} has a vocabulary of {finished.vocab_size:,} rows, this run's model {vocab:,}; teacher and student "
            f"need the same vocabulary: set model.vocab_size={finished.vocab_size}"
        )
    context = finished.cfg.model.context
    if context < seq_len:
        raise ConfigError(
            f"{what} has model.context={context}, below this run's data.seq_len={seq_len}; lower data.seq_len to {context}"
        )


def _hex(crc: Any) -> str:
    return f"{crc:08x}" if isinstance(crc, int) else str(crc)


def _sidecar(path: Path) -> dict[str, Any]:
    import json

    from qkvlab.train.checkpoint import sum_path

    return json.loads(sum_path(path).read_text())


def make_distiller(cfg: Config, data: DataSource, vocab: int, device: torch.device, amp) -> Optional[Distiller]:
    return Distiller(cfg, data, vocab, device, amp) if cfg.distill.teacher is not None else None
