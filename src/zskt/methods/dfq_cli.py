"""`zskt dfq`: the data-free method DFQ from a teacher file into a fresh student (docs/data_free.md)."""

from zskt.cli import run_folder_command
from zskt.methods import dfq

COMMAND = run_folder_command(
    "dfq", "DFQ data-free distillation from a teacher file into a student (the DataFree benchmark's recipe)",
    dfq.DFQConfig, dfq.run_dfq,
    description=dfq.__doc__.split("\n\n")[0] + " Only the test split is read (for evaluation). Writes model.pt "
    "(the student), pseudo/*.png, metrics.jsonl and result.json (final test_accuracy, best_test_accuracy, "
    "seconds_per_iteration). See docs/data_free.md.",
    required=("teacher",))
