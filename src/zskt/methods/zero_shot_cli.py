"""`zskt zero-shot`: transfer a teacher into a fresh student with the paper's Algorithm 1, from no data."""

from zskt.cli import run_folder_command
from zskt.methods.zero_shot import ZeroShotConfig, run_zero_shot

COMMAND = run_folder_command(
    "zero-shot", "zero-shot transfer from a teacher file into a student (the paper's Algorithm 1)",
    ZeroShotConfig, run_zero_shot,
    description="Zero-shot knowledge transfer (Micaelli & Storkey 2019, Algorithm 1, as the authors' code runs "
    "it): per pseudo batch, 1 generator step maximising KL(teacher || student) on G(z), then 10 student steps "
    "minimising KL + beta x attention (beta 250; digits preset 0) on that pseudo batch; Adam (generator 1e-3, student 2e-3), cosine "
    "annealing, grad-norm clip 5, batch 128. Only the test split is read (for evaluation). Writes model.pt "
    "(the student), generator.pt, pseudo/*.png, metrics.jsonl and result.json (final test_accuracy, "
    "best_test_accuracy, seconds_per_iteration). See docs/zero_shot.md.",
    required=("teacher",), aliases={"iterations": ("-N",)})
