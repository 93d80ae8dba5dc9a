"""`zskt kd-at`: the few-shot KD+AT baseline, and the fine-tuning of a zero-shot student (`--init`)."""

from pathlib import Path

from zskt.errors import ZsktError
from zskt.methods.kd_at import KDATConfig, kd_at
from zskt.methods.train_cli import schedule_command


def check_files(cfg: KDATConfig) -> None:
    """Fail before the run folder is made when a named file is not there."""
    for role, path in (("teacher", cfg.teacher), ("init", cfg.init)):
        if path and not Path(path).is_file():
            raise ZsktError(f"--{role} {path} not found; expected a model file (e.g. a run folder's model.pt)")


COMMAND = schedule_command(
    "kd-at", "few-shot KD+AT: distil a teacher into a student on M images per class (or fine-tune --init)",
    KDATConfig, kd_at, required=("teacher", "images_per_class"), prepare=check_files,
    description="Few-shot knowledge distillation with attention transfer, as the authors' FewShotKnowledgeTransfer "
    "code (SPEC §4): loss (1-α)·CE + 2·α·T²·KL + β·Σ attention (α 0.9, T 4, β 1000 per layer; digits 250), "
    "SGD 0.1, momentum 0.9, wd 5e-4, lr /5 at 30/60/80%% of the run, batch 128, on M images per class chosen "
    "per seed, epochs scaled with M as the authors did (--print-schedule shows them). With --init PATH a "
    "zero-shot student is fine-tuned with the same KD+AT run (--finetune-epochs to shorten it). "
    "The no-teacher baseline is `zskt train --images-per-class M`. See docs/kd_at.md.",
    aliases={"images_per_class": ("-M",)})
