"""`zskt belief`: transition curves and the mean transition error of a student against its teacher."""

from zskt.cli import run_folder_command
from zskt.evaluate.belief import BeliefConfig, run_belief

COMMAND = run_folder_command(
    "belief",
    "transition curves and mean transition error (MTE) of a student against a teacher",
    BeliefConfig,
    run_belief,
    description="Adversarial belief matching (paper §4.3, Algorithm 2): on N test images where "
    "both networks agree, step the student's input towards each other class with K plain gradient steps of "
    "size xi and record both networks' probability of that class before each step. Writes curves.npz, "
    "transition_curves.png (Figure 4's form) and result.json with mte (mean |p_teacher - p_student| over "
    "the first 100 steps, Table 2). Defaults are the authors': N 1000, 200 steps, xi 1, targets relative to "
    "the label, seed 0. See docs/belief.md.",
    required=("student", "teacher"),
    aliases={"images": ("-N",), "steps": ("-K",)},
)
