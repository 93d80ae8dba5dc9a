"""`zskt train`: a teacher, a scratch student, or the few-shot "no teacher" baseline (`--images-per-class M`)."""

from zskt.cli import run_folder_command
from zskt.methods.train import TrainConfig, train

COMMAND = run_folder_command(
    "train", "train a teacher or scratch student with cross-entropy (paper's SGD recipe)", TrainConfig, train,
    description="Train a Wide ResNet from scratch with the paper's recipe (SGD 0.1, momentum 0.9, wd 5e-4, "
    "lr /5 at 30/60/80%% of the run, batch 128). With --images-per-class M it is the few-shot 'no teacher' "
    "baseline on M images per class (SPEC §4), with the authors' epoch scaling.",
    aliases={"images_per_class": ("-M",)})
