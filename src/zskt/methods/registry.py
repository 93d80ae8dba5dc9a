"""The method registry: every training command of zskt, in one literal dict. The `zskt` subcommands, the
run-id grammar of the experiment grids, the report's series labels and the demo's time estimate are built from
it, so adding a method is its own file plus one entry here (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zskt.data import preset
from zskt.errors import ZsktError
from zskt.methods.cmi import CMIConfig, run_cmi
from zskt.methods.dafl import DAFLConfig, run_dafl
from zskt.methods.deepinversion import DeepInversionConfig, run_deepinversion
from zskt.methods.dfad import DFADConfig, run_dfad
from zskt.methods.dfq import DFQConfig, run_dfq
from zskt.methods.fast import FastConfig, run_fast
from zskt.methods.kd_at import KDATConfig, check_files, kd_at
from zskt.methods.nayer import NayerConfig, check_embeddings, run_nayer
from zskt.methods.schedule import make_schedule, schedule_command
from zskt.methods.train import TrainConfig, train
from zskt.methods.zero_shot import ZeroShotConfig, run_zero_shot
from zskt.runids import Series

PAIR = "{dataset}/%s/{teacher}_{student}/seed{seed}"  # a data-free method's runs: teacher, student, seed


@dataclass(frozen=True)
class Method:
    """A training command: its config (the options), `run(cfg, log) -> result`, the run-id series its runs
    take in the experiment grids (the first is the method's own; its label names it in reports), one-line help
    and a longer description for `--help`, the options that must be given, option aliases, `command`, a
    builder of a custom subcommand (default: `zskt.cli.run_folder_command`), `check(cfg)`, more checks before
    the run folder is made, and `reads`, the data splits a run reads (`check_inputs` requires only those
    files)."""

    config: type
    run: Callable[[Any, Any], dict]
    series: tuple[Series, ...]
    help: str
    description: str = ""
    required: tuple[str, ...] = ("teacher",)
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    command: Callable | None = None
    check: Callable[[Any], None] | None = None  # checks the config's files before the run folder is made
    reads: tuple[str, ...] = ("test",)  # the data splits a run reads (data-free methods: the test split only)
    cost: Callable[[dict, dict, Any, Any], float] | None = None  # seconds of a run at the demo's unit costs

    @property
    def label(self) -> str:
        return self.series[0].label


# ------------------------------------------------------------------------------------ the demo's time
# estimates


def supervised_seconds(options: dict, tags: dict, info, costs) -> float:
    """Seconds of a train or kd-at run at the demo's probed unit costs (zskt/experiments/demo.py)."""
    o = options
    student = o.get("model") or o.get("student", "wrn-16-1")
    per_image = costs.per_image(student)
    m = o.get("images_per_class", -1)
    epochs = make_schedule(info.name, info.n_train, m, 128, base_epochs=o.get("epochs")).epochs
    if "teacher" in tags:  # kd-at:  # the teacher's forward pass on every training image
        per_image += costs.per_image(tags.get("teacher", "wrn-16-2")) / 3
    evaluations = epochs // max(1, epochs // 100)  # every epochs/100 epochs (the commands' default)
    return (
        epochs * (info.n_train if m < 0 else m * info.num_classes) * per_image
        + evaluations * info.n_test * costs.per_image(student) / 3
    )


def zero_shot_seconds(options: dict, tags: dict, info, costs) -> float:
    """Seconds of a zero-shot run at the demo's probed unit costs."""
    iterations = options.get("iterations") or preset(info.name, "zero-shot", "iterations", "--iterations")
    evaluations = min(iterations, 100)  # every iterations/100 pseudo batches (the command's default)
    student = options.get("student", "wrn-16-1")
    return iterations * costs.zero_shot_per_batch + evaluations * info.n_test * costs.per_image(student) / 3


def data_free(name: str, label: str) -> tuple[Series, ...]:
    """The run-id series of a data-free method: `<dataset>/<name>/<teacher>_<student>/seed<s>`."""
    return (Series(name, PAIR % name, label),)


METHODS: dict[str, Method] = {
    "train": Method(
        TrainConfig,
        train,
        (
            Series("scratch", "{dataset}/scratch/{model}/seed{seed}", "from scratch"),
            Series("no-teacher", "{dataset}/no-teacher/{student}/M{m}/seed{seed}", "no teacher"),
        ),
        "train a teacher or scratch student with cross-entropy (the paper's SGD recipe)",
        "Train a network from scratch with the paper's recipe (SGD 0.1, momentum 0.9, wd 5e-4, lr /5 after "
        "30, "
        "60 and 80 percent of the epochs, batch 128). With --images-per-class M it is the few-shot 'no "
        "teacher' "
        "baseline on M images per class, with the authors' epoch scaling (docs/kd_at.md).",
        required=(),
        aliases={"images_per_class": ("-M",)},
        command=schedule_command,
        reads=("train", "test"),
        cost=supervised_seconds,
    ),
    "zero-shot": Method(
        ZeroShotConfig,
        run_zero_shot,
        data_free("zero-shot", "zero-shot"),
        "zero-shot transfer from a teacher file into a student (the paper's Algorithm 1)",
        "Zero-shot knowledge transfer (Micaelli & Storkey 2019, Algorithm 1, as the authors' code runs it): "
        "per "
        "pseudo batch, 1 generator step maximising KL(teacher || student) on G(z), then 10 student steps "
        "minimising KL + beta x attention (beta 250; digits preset 0) on that pseudo batch; Adam (generator "
        "1e-3, "
        "student 2e-3), cosine annealing, grad-norm clip 5, batch 128. Only the test split is read (for "
        "evaluation). Writes model.pt (the student), generator.pt, pseudo/*.png, metrics.jsonl and "
        "result.json "
        "(final test_accuracy, best_test_accuracy, seconds_per_iteration). See docs/zero_shot.md.",
        aliases={"iterations": ("-N",)},
        cost=zero_shot_seconds,
    ),
    "kd-at": Method(
        KDATConfig,
        kd_at,
        (
            Series("kd-at", "{dataset}/kd-at/{teacher}_{student}/M{m}/seed{seed}", "KD+AT"),
            Series(
                "finetune",
                "{dataset}/finetune/{teacher}_{student}/M{m}/seed{seed}",
                "zero-shot (M = 0) / fine-tuned (M > 0)",
            ),
        ),
        "few-shot KD+AT: distil a teacher into a student on M images per class (or fine-tune --init)",
        "Few-shot knowledge distillation with attention transfer, as the authors' FewShotKnowledgeTransfer "
        "code: "
        "loss (1-α)·CE + 2·α·T²·KL + β·Σ attention (α 0.9, T 4, β 1000 per layer; digits 250), SGD 0.1, "
        "momentum 0.9, wd 5e-4, lr /5 after 30, 60 and 80 percent of the run, batch 128, on M images per "
        "class "
        "chosen per seed. --epochs is the base recipe's epoch count, which the authors scale with M "
        "(--print-schedule shows the epochs that will run). With --init PATH a zero-shot student is "
        "fine-tuned "
        "with the same KD+AT run (--finetune-epochs to shorten it). The no-teacher baseline is `zskt train "
        "--images-per-class M`. See docs/kd_at.md.",
        required=("teacher", "images_per_class"),
        aliases={"images_per_class": ("-M",)},
        command=schedule_command,
        check=check_files,
        reads=("train", "test"),
        cost=supervised_seconds,
    ),
    "deepinversion": Method(
        DeepInversionConfig,
        run_deepinversion,
        data_free("deepinversion", "DeepInversion"),
        "DeepInversion/ADI: invert the teacher's BN statistics into images, distil on the bank of them",
        "DeepInversion with the adaptive competition term (Yin et al. 2020) as the zju-vipa benchmark runs "
        "it: per "
        "round, a batch of images optimised from noise (Adam 0.1, 1000 steps) to match the teacher's "
        "batch-norm "
        "statistics (x10), be classified as random classes and make teacher and student disagree (JS), with "
        "a "
        "TV prior; the best batch joins the image bank; 400 student steps (T = 20 KL, SGD 0.1) on the bank. "
        "Only the test split is read. See docs/data_free.md.",
        aliases={"iterations": ("-N",)},
    ),
    "cmi": Method(
        CMIConfig,
        run_cmi,
        data_free("cmi", "CMI"),
        "CMI: contrastive model inversion (a generator re-initialised per batch, contrastive head, memory "
        "bank)",
        "Contrastive model inversion (Fang et al. 2021) as its authors' benchmark script runs it: per round "
        "a "
        "generator, re-initialised, is optimised with its latent codes for 200 steps on BN statistics, "
        "one-hot, "
        "agreement-masked adversarial and a contrastive loss over a memory bank of earlier images' features; "
        "the best batch joins the image bank; 400 student steps (T = 20 KL, SGD 0.1) on the bank. See "
        "docs/data_free.md.",
        aliases={"iterations": ("-N",)},
    ),
    "fast": Method(
        FastConfig,
        run_fast,
        data_free("fast", "Fast"),
        "Fast: a meta-learned generator initialisation, a few synthesis steps per batch (Fast-10 by default)",
        "Fast data-free distillation (Fang et al. 2022, 'fast_meta') as its authors' scripts run it: per "
        "round a "
        "copy of the meta generator and fresh latent codes take g_steps (10) Adam steps on BN statistics, "
        "one-hot "
        "and agreement-masked adversarial terms; the meta generator takes a first-order MAML (or Reptile) "
        "step; "
        "the best batch joins the image bank; 400 student steps (T = 20 KL, SGD 0.2, cosine) on the bank "
        "after "
        "20 warm-up rounds. See docs/data_free.md.",
        aliases={"iterations": ("-N",)},
    ),
    "nayer": Method(
        NayerConfig,
        run_nayer,
        data_free("nayer", "NAYER"),
        "NAYER: label-text embeddings through a noisy layer re-drawn per batch, a few generator steps each",
        "NAYER (Tran et al. 2024) as its authors' scripts run it: the generator's input is each class's "
        "label-text embedding (--label-embeddings, precomputed; without it fixed random class codes, not the "
        "paper's) through a noisy Linear re-drawn before every batch; per round 2 batches (10 in the 20 "
        "warm-up rounds) of 30 Adam steps (4e-3) on BN statistics (x10, momentum 0.9), one-hot (x0.5) and "
        "agreement-masked adversarial (x1.33) terms, a fresh generator every 10 rounds; the best batches "
        "join the image bank; 400 student steps (T = 20 KL, SGD 0.2, cosine) on the bank. See "
        "docs/data_free.md.",
        aliases={"iterations": ("-N",)},
        check=check_embeddings,
    ),
    "dafl": Method(
        DAFLConfig,
        run_dafl,
        data_free("dafl", "DAFL"),
        "DAFL: a generator the teacher finds confident, active and class-balanced; the student distils on it",
        "DAFL (Chen et al. 2019) as the zju-vipa DataFree benchmark runs it: per round, 1 generator step on "
        "oh·CE(t, argmax t) + act·(−mean|f_T|) + balance·Σ p̄ log p̄ (1, 0.1, 20), then 5 student steps of "
        "KL(T ‖ S) on fresh generator batches; generator Adam 1e-3 (betas 0.5, 0.999), student SGD 0.1, "
        "momentum "
        "0.9, wd 1e-4, cosine over 200 epochs of 400 student steps, batch 256 (digits: the method's preset). "
        "Only "
        "the test split is read. Writes model.pt, pseudo/*.png, metrics.jsonl and result.json (final "
        "test_accuracy, best_test_accuracy). See docs/data_free.md.",
    ),
    "dfad": Method(
        DFADConfig,
        run_dfad,
        (
            *data_free("dfad", "DFAD"),
            # The benchmark's own ZSKT (CMI scripts/zskt_cifar10.sh, `--method zskt`): the same generative
            # loop with the KL as the discrepancy (adv 1, no BN/one-hot/activation terms, 5 student steps,
            # batch 256, SGD 0.1); not the paper's recipe (Adam, attention, 10 student steps): `zero-shot`.
            Series(
                "zero-shot-benchmark",
                PAIR % "zero-shot-benchmark",
                "ZSKT (the benchmark's recipe)",
                {"discrepancy": "kl"},
            ),
        ),
        "DFAD: generator and student play min-max on the L1 distance of the logits",
        "DFAD (Fang et al. 2019) as the zju-vipa DataFree benchmark runs it: per round, 1 generator step "
        "maximising mean|S(x) − T(x)|, then 5 student steps minimising it on fresh generator batches; "
        "generator "
        "Adam 1e-3 (betas 0.5, 0.999), student SGD 0.1, momentum 0.9, wd 1e-4, cosine over 200 epochs of 400 "
        "student steps, batch 256 (digits: the method's preset). Only the test split is read. See "
        "docs/data_free.md.",
    ),
    "dfq": Method(
        DFQConfig,
        run_dfq,
        data_free("dfq", "DFQ"),
        "DFQ: adversarial generator with the teacher's BN statistics, one-hot and class-balance priors",
        "DFQ (Choi et al. 2020) as the zju-vipa DataFree benchmark runs it: per round, 1 generator step on "
        "bn·Σ BN-statistics + oh·CE(t, argmax t) − adv·KL(T ‖ S) + balance·Σ p̄ log p̄ (1, 1, 1, 20), then 10 "
        "student steps of KL(T ‖ S) on fresh generator batches; generator Adam 1e-3 (betas 0.5, 0.999), "
        "student "
        "SGD 0.1, momentum 0.9, wd 1e-4, cosine over 200 epochs of 400 student steps, batch 256 (digits: the "
        "method's preset). Only the test split is read. See docs/data_free.md.",
    ),
}


def check_inputs(method: Method, cfg: Any) -> None:
    """Before the run folder is made: the data files the run reads, the teacher file (loaded and checked
    against the data set: a wrong network is one line now, not a half-made run folder later), and the method's
    own checks. Each failure is a one-line ZsktError."""
    from zskt.data import check_files, get_info
    from zskt.methods.common import load_teacher

    teacher = getattr(cfg, "teacher", None)
    if teacher:  # the teacher first: a wrong file is reported before any data is read or downloaded
        if not Path(teacher).is_file():
            raise ZsktError(
                f"--teacher {teacher} not found; expected a model file (e.g. a run folder's model.pt)"
            )
        load_teacher(cfg, get_info(cfg.dataset))
    student = getattr(cfg, "student", None)
    if isinstance(student, str) and ":" in student:  # an import or timm: fail now, not in a half-made run
        from zskt.models import resolve_network

        info = get_info(cfg.dataset)
        resolve_network(
            student,
            role="--student",
            num_classes=info.num_classes,
            in_channels=info.in_channels,
            trust=getattr(cfg, "trust_checkpoint", False),
        )
    check_files(
        cfg.dataset,
        getattr(cfg, "data_dir", None),
        splits=method.reads,
        download=getattr(cfg, "download", False),
    )
    if method.check is not None:
        method.check(cfg)


def all_series() -> tuple[Series, ...]:
    """Every run-id series of every registered method, in registry order."""
    return tuple(s for method in METHODS.values() for s in method.series)


def data_free_series() -> tuple[Series, ...]:
    """The series of runs that learn from a teacher without its data (a teacher in the id, no M)."""
    return tuple(s for s in all_series() if "{teacher}" in s.pattern and "{m}" not in s.pattern)


def series_label(name: str) -> str:
    """The report label of a run-id series (e.g. "kd-at" -> "KD+AT"); the name itself when unknown."""
    return next((s.label for s in all_series() if s.name == name), name)


def series(name: str) -> Series:
    for s in all_series():
        if s.name == name:
            return s
    raise KeyError(f"no run-id series {name!r}")


def method_of_series(name: str) -> str:
    """The command that makes runs of a series (e.g. "finetune" -> "kd-at")."""
    return next(m for m, method in METHODS.items() if any(s.name == name for s in method.series))


def parse_run_id(run_id: str) -> dict:
    """`zskt.runids.parse_run_id` with the registered methods' series."""
    from zskt.runids import parse_run_id as parse

    return parse(run_id, all_series())
