"""`zskt dafl`: the data-free method DAFL from a teacher file into a fresh student (docs/data_free.md)."""

from zskt.cli import run_folder_command
from zskt.methods import dafl

COMMAND = run_folder_command(
    "dafl", "DAFL data-free distillation from a teacher file into a student (the DataFree benchmark's recipe)",
    dafl.DAFLConfig, dafl.run_dafl,
    description=dafl.__doc__.split("\n\n")[0] + " Only the test split is read (for evaluation). Writes model.pt "
    "(the student), pseudo/*.png, metrics.jsonl and result.json (final test_accuracy, best_test_accuracy, "
    "seconds_per_iteration). See docs/data_free.md.",
    required=("teacher",))
