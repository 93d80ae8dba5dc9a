"""NAYER: noisy layer data generation (Tran et al., CVPR 2024), as its authors' code runs it (tmtuan1307/NAYER
`datafree/synthesis/nayer.py`, `datafree/models/generator.py` `NLGenerator`, `datafree_kd.py --method nayer`,
`run/nayer_200.sh`); docs/data_free.md.

The generator's input is not random noise but each target class's label-text embedding (a language model's
encoding of "a image of <class>", precomputed: `--label-embeddings`), and the randomness moves into a *noisy
layer*, a Linear between embedding and generator body that is re-drawn (weights ~ N(0, 1)) before every
synthesised batch (models/nayer_generator.py). The generator itself persists across rounds and is created
afresh every `g_life` rounds. Each round runs `loops` synthesis loops (`warmup_loops` during the warm-up
rounds, `g_loops` after); each loop re-draws the noisy layers, takes balanced targets y (every class once per
block of num_classes, `balanced_targets`) and a fresh Adam (lr_g, betas 0.5, 0.999) over all generator
parameters, and takes `g_steps` steps on x = G(y) ∈ [0, 1], seen through a pad-4 random crop and flip,
normalised:

    bn · Σ_l BN-statistic loss of the teacher, batch statistics blended with a running average of earlier
         batches' (momentum bn_mmt, folded in after each loop; bn_hooks.py)
  + oh · CE(T(x̃), y)
  + adv · (−mean of KL(T ‖ S) on samples where T and S agree)    (after the warm-up; the student in eval mode)

The lowest-loss batch of each loop joins the image bank; the student distils from the bank after `warmup`
rounds (methods/inversion.py), SGD 0.2 with cosine to 2e-4.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn

from zskt.config import check, field
from zskt.data import get_info
from zskt.errors import ZsktError
from zskt.methods.bn_hooks import BNStatistics
from zskt.methods.inversion import (
    InversionConfig,
    crop_flip_params,
    crop_padding,
    generator_synthesis_step,
    run_inversion,
)
from zskt.models.nayer_generator import NoisyLayerGenerator, balanced_targets
from zskt.runlog import RunLog
from zskt.runtime import Precision

PRESETS = {
    # run/nayer_200.sh, CIFAR-10 lines: batch 512, 400 images per loop, 220 epochs (20 warm-up) of 400 KD
    # steps, 30 synthesis steps, 10 loops per warm-up epoch and 2 after, a fresh generator every 10 epochs.
    # The bank keeps all 20·10·400 + 200·2·400 images, as the reference's ImagePool does.
    "cifar10": {
        "iterations": 220,
        "batch_size": 512,
        "synthesis_batch_size": 400,
        "kd_steps": 400,
        "g_steps": 30,
        "warmup": 20,
        "warmup_loops": 10,
        "g_loops": 2,
        "g_life": 10,
        "bank_size": 240_000,
        "eval_every": 1,
    },
    # Ours, for the 2-core CPU (docs/data_free.md, measured).
    "digits": {
        "iterations": 30,
        "batch_size": 64,
        "synthesis_batch_size": 60,
        "kd_steps": 30,
        "g_steps": 10,
        "warmup": 4,
        "warmup_loops": 2,
        "g_loops": 1,
        "g_life": 10,
        "bank_size": 2040,
        "eval_every": 5,
    },
}
LOOP_FIELDS = ("warmup_loops", "g_loops", "g_life")  # preset like PRESET_FIELDS, NAYER's own
FALLBACK_DIM = 512  # the reference's le_size: CLIP ViT-B/32 text features


@dataclass(frozen=True)
class NayerConfig(InversionConfig):
    """`zskt nayer`: defaults from NAYER's run/nayer_200.sh (CIFAR-10 lines) and datafree_kd.py."""

    PRESETS: ClassVar[dict] = PRESETS
    label_embeddings: str = field(
        "",
        "file of the label-text embeddings, one row per class: .npz/.npy/.pt holding a (num_classes, D) "
        "float array (the paper: CLIP text features; docs/data_free.md shows how to make one); empty: fixed "
        "random Gaussian class codes seeded by --seed, NOT the paper's input",
    )
    student_lr: float = field(0.2, "student SGD learning rate (--lr 0.2)")
    lr_schedule: Literal["multistep", "cosine"] = field(
        "cosine",
        "student schedule per round: cosine to 2e-4 over the rounds after warmup (NAYER datafree_kd.py, "
        "--eta_min 2e-4) or multistep (x0.1 at lr_milestones)",
    )
    generator_lr: float = field(4e-3, "Adam learning rate of the generator and noisy layers (--lr_g 4e-3)")
    adv: float = field(1.33, "weight of the agreement-masked adversarial term (--adv 1.33)")
    bn: float = field(10.0, "weight of the BN-statistic term (--bn 10)")
    oh: float = field(0.5, "weight of the one-hot cross-entropy term (--oh 0.5)")
    bn_momentum: float = field(
        0.9,
        "momentum of the running average of synthesis-batch BN statistics (datafree_kd.py --bn_mmt 0.9); "
        "0 = plain DeepInversion statistics",
    )
    warmup_loops: int | None = field(
        None, "synthesis loops (batches) per warm-up round (--gwp_loops 10); preset"
    )
    g_loops: int | None = field(
        None, "synthesis loops (batches) per round after the warm-up (--g_loops 2); preset"
    )
    g_life: int | None = field(
        None,
        "rounds a generator lives: a fresh one at rounds where round or round − warmup is a multiple "
        "(--g_life 10); preset",
    )
    noisy_dim: int = field(
        1000, "output size of the noisy layers, the generator body's input (--le_emb_size 1000)"
    )
    generator_width: int = field(64, "generator base width ngf (datafree_kd.py: 64)")

    def __post_init__(self):
        super().__post_init__()
        check(self.generator_lr > 0, "generator_lr must be positive")
        check(min(self.adv, self.bn, self.oh) >= 0, "loss weights must be >= 0")
        check(0 <= self.bn_momentum < 1, f"bn_momentum must be in [0, 1), got {self.bn_momentum}")
        for name in LOOP_FIELDS:
            value = getattr(self, name)
            check(value is None or value >= 1, f"{name} must be >= 1, got {value}")
        check(
            min(self.noisy_dim, self.generator_width) >= 1, "noisy_dim and generator_width must be positive"
        )

    def loops(self, round_index: int) -> int:
        """Synthesis loops of a round (the reference: gwp_loops while ep < warmup, else g_loops)."""
        return self.value("warmup_loops" if round_index < self.value("warmup") else "g_loops")

    def fresh_generator(self, round_index: int) -> bool:
        """`(ep − ep_start) % g_life == 0 or ep % g_life == 0`, ep the 0-based round (Python's modulo)."""
        life = self.value("g_life")
        return round_index % life == 0 or (round_index - self.value("warmup")) % life == 0


# ------------------------------------------------------------------------------------- the label embeddings


def load_label_embeddings(path: str, num_classes: int) -> torch.Tensor:
    """The (num_classes, D) float32 embeddings in `path` (.npz: its only array or the one named "embeddings";
    .npy; .pt/.pth: a tensor or a dict with "embeddings", read with weights_only). Every problem is a one-line
    ZsktError naming it and the fix."""
    fix = f"give a .npz, .npy or .pt file with a ({num_classes}, D) float array, one row per class"
    file = Path(path)
    if not file.is_file():
        raise ZsktError(f"--label-embeddings {path} not found; {fix} (docs/data_free.md: how to make one)")
    suffix = file.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(file, allow_pickle=False) as archive:
                names = list(archive.files)
                name = "embeddings" if "embeddings" in names else names[0] if len(names) == 1 else None
                if name is None:
                    raise ZsktError(
                        f"--label-embeddings {path} holds arrays {', '.join(names) or 'none'}; name the "
                        "embeddings array 'embeddings' or save it alone"
                    )
                value = archive[name]
        elif suffix == ".npy":
            value = np.load(file, allow_pickle=False)
        elif suffix in (".pt", ".pth"):
            value = torch.load(file, map_location="cpu", weights_only=True)
            if isinstance(value, dict):
                value = value.get("embeddings")
        else:
            raise ZsktError(f"--label-embeddings {path}: unknown file type {suffix or '(none)'!r}; {fix}")
    except ZsktError:
        raise
    except Exception as e:  # numpy, zipfile and torch.load raise many kinds on a damaged file
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ZsktError(f"--label-embeddings {path} could not be read ({reason[:120]}); {fix}") from None
    if isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise ZsktError(f"--label-embeddings {path} holds {value.dtype} values; {fix}")
        value = torch.from_numpy(np.asarray(value, dtype=np.float32))
    if not isinstance(value, torch.Tensor):
        raise ZsktError(f"--label-embeddings {path} holds no array (found {type(value).__name__}); {fix}")
    if value.dim() != 2 or value.shape[0] != num_classes or value.shape[1] < 1:
        raise ZsktError(f"--label-embeddings {path} holds shape {tuple(value.shape)}; {fix}")
    if value.is_complex() or not torch.isfinite(value.float()).all():
        raise ZsktError(f"--label-embeddings {path} holds non-finite or complex values; {fix}")
    return value.float()


def fallback_embeddings(num_classes: int, seed: int, dim: int = FALLBACK_DIM) -> torch.Tensor:
    """Our stand-in when no file is given, not the paper's: fixed N(0, 1) class codes, (num_classes, dim),
    from a generator seeded by --seed (so a run and its resume see the same codes)."""
    return torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(seed))


def class_embeddings(cfg: NayerConfig, num_classes: int) -> torch.Tensor:
    if cfg.label_embeddings:
        return load_label_embeddings(cfg.label_embeddings, num_classes)
    return fallback_embeddings(num_classes, cfg.seed)


def check_embeddings(cfg: NayerConfig) -> None:
    """Before the run folder is made: the embeddings file reads and fits the data set."""
    if cfg.label_embeddings:
        load_label_embeddings(cfg.label_embeddings, get_info(cfg.dataset).num_classes)


# ------------------------------------------------------------------------------------- one synthesis step


def nayer_step(
    generator: NoisyLayerGenerator,
    opt: torch.optim.Optimizer,
    teacher: nn.Module,
    student: nn.Module,
    hooks: BNStatistics,
    targets: torch.Tensor,
    aug: tuple,
    cfg: NayerConfig,
    mean,
    std,
    pad: int,
    adversarial: bool,
    precision: Precision | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One synthesis iteration: the loss at the generator's current weights, its gradient to the generator
    only, one Adam step. `aug` = (offsets, flips) of the crop. Returns the loss terms (detached) and the
    images G(y) ∈ [0, 1] before the step."""
    return generator_synthesis_step(
        generator,
        targets,
        opt,
        teacher,
        student,
        hooks,
        targets,
        aug,
        cfg,
        mean,
        std,
        pad,
        adversarial,
        precision,
    )


class NayerSynthesizer:
    """The generator (with its noisy layers) and the BN-statistic momentum: carried over rounds and
    checkpointed. The Adam of each loop is fresh, as the reference's."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        cfg: NayerConfig,
        shape: dict,
        device: torch.device,
        precision: Precision,
        embeddings: torch.Tensor,
    ):
        self.teacher, self.student, self.cfg, self.shape = teacher, student, cfg, shape
        self.device, self.precision = device, precision
        self.hooks = BNStatistics(teacher, momentum=cfg.bn_momentum)
        self.generator = NoisyLayerGenerator(
            embeddings,
            cfg.value("synthesis_batch_size"),
            nz=cfg.noisy_dim,
            ngf=cfg.generator_width,
            img_size=shape["size"],
            nc=shape["channels"],
        )
        self.generator = self.generator.to(device).train()
        self.losses: dict[str, torch.Tensor] = {}

    def synthesize(self, round_index: int) -> torch.Tensor:
        """One round: `cfg.loops(round)` batches, each the lowest-loss of its g_steps, together, in [0, 1]."""
        cfg, shape = self.cfg, self.shape
        n, pad = cfg.value("synthesis_batch_size"), crop_padding(shape["size"])
        if cfg.fresh_generator(round_index):
            self.generator.reinitialise()
        adversarial = round_index >= cfg.value("warmup")  # the reference's `ep > ep_start` after `ep += 1`
        batches = []
        was_training = self.student.training
        self.student.eval()  # for every loop (the reference's student.train() after the first: not copied)
        try:
            for _ in range(cfg.loops(round_index)):
                self.generator.reset_noisy_layers()
                targets = balanced_targets(n, shape["num_classes"]).to(self.device)
                opt = torch.optim.Adam(self.generator.parameters(), lr=cfg.generator_lr, betas=(0.5, 0.999))
                best, best_loss = None, torch.tensor(float("inf"), device=self.device)
                for _ in range(cfg.value("g_steps")):
                    terms, x = nayer_step(
                        self.generator,
                        opt,
                        self.teacher,
                        self.student,
                        self.hooks,
                        targets,
                        crop_flip_params(n, pad),
                        cfg,
                        shape["mean"],
                        shape["std"],
                        pad,
                        adversarial,
                        self.precision,
                    )
                    better = terms["loss"] < best_loss  # on the device: no host sync per iteration
                    best = x if best is None else torch.where(better, x, best)
                    best_loss = torch.where(better, terms["loss"], best_loss)
                if cfg.bn_momentum:
                    self.hooks.update_momentum()
                batches.append(best)
        finally:
            self.student.train(was_training)
        self.losses = {f"synth_{k}": v for k, v in terms.items()}
        return torch.cat(batches)

    def state_dict(self) -> dict:
        return {"generator": self.generator.state_dict(), "bn": self.hooks.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.hooks.load_state_dict(state["bn"])


def run_nayer(cfg: NayerConfig, log: RunLog) -> dict:
    """`zskt nayer`."""
    embeddings = class_embeddings(cfg, get_info(cfg.dataset).num_classes)
    source = cfg.label_embeddings or f"random Gaussian class codes (seed {cfg.seed}; not the paper's input)"
    log.print(f"nayer: label embeddings {tuple(embeddings.shape)} from {source}")
    return run_inversion(
        cfg,
        log,
        "nayer",
        lambda teacher, student, run, shape: NayerSynthesizer(
            teacher, student, cfg, shape, run.device, run.precision, embeddings
        ),
    )
