"""The `zskt` command: one console script whose subcommands map to plain functions (STYLE §3, §4).

Every training command takes its config dataclass's fields as typed options, writes one run folder (`--out`),
and turns any user-fixable problem into a one-line `zskt: error: ...` with exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from zskt.config import add_config_arguments, config_from_args, option_name, replay_values, to_dict
from zskt.errors import PeerError, ZsktError, describe_os_error


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) that point at --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    main: Callable[[argparse.Namespace], int | None]
    description: str = ""


def run_folder_command(
    name: str,
    help: str,
    config_cls: type,
    run: Callable,
    *,
    description: str = "",
    required: tuple[str, ...] = (),
    aliases: dict | None = None,
    prepare: Callable | None = None,
    out_required: bool = True,
) -> Command:
    """A training command: config options + `--out/--resume/--overwrite/--quiet/--config/--tensorboard` (and
    `--allow-config-change`, `--trust-checkpoint`, `--threads`), run folder, result line. `out_required=False`
    leaves checking `--out` to the caller (a command that can also just print). The `required` config fields
    are checked after parsing (`command_config`), so that `--config RUN/config.json` can supply them. The run
    folder's lock is released however the run ends; a run that fails before its first checkpoint puts back
    the run an `--overwrite` set aside."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        run_opts = parser.add_argument_group("run folder")
        run_opts.add_argument(
            "--out",
            required=out_required,
            metavar="DIR",
            help="run folder: config.json, metrics.jsonl, model.pt, result.json (written last)",
        )
        run_opts.add_argument(
            "--resume",
            action="store_true",
            help="continue the unfinished run in --out from its last checkpoint",
        )
        run_opts.add_argument(
            "--overwrite", action="store_true", help="replace a finished or unfinished run in --out"
        )
        run_opts.add_argument(
            "--quiet", action="store_true", help="print nothing but errors and the result line"
        )
        run_opts.add_argument(
            "--config",
            metavar="FILE",
            default=None,
            help="replay a run: take every config field from its config.json (or run "
            "folder); options given here override them",
        )
        run_opts.add_argument(
            "--tensorboard",
            action="store_true",
            help="also write TensorBoard event files to OUT/tensorboard (needs the "
            "tensorboard extra: pip install 'zskt[tensorboard]')",
        )
        run_opts.add_argument(
            "--allow-config-change",
            type=_names,
            default=(),
            metavar="NAME,...",
            help="with --resume: continue from the checkpoint with these options changed "
            "(e.g. lr after a divergence); the change is recorded in config.json",
        )
        if "trust_checkpoint" not in {f.name for f in dataclasses.fields(config_cls)}:  # else a config field
            run_opts.add_argument(
                "--trust-checkpoint",
                action="store_true",
                help="read checkpoint files that need a full unpickle (which can run any "
                "code); only for files whose origin you trust",
            )
        add_threads_argument(run_opts)
        add_config_arguments(parser, config_cls, required_later=required, aliases=aliases)

    def main(args: argparse.Namespace) -> int:
        from zskt.distributed import RunContext
        from zskt.models.checkpoints import trusting_checkpoints
        from zskt.runlog import RunLog
        from zskt.runtime import environment, resolve_device, resolve_precision

        set_threads(args.threads)
        if args.allow_config_change and not args.resume:
            raise ZsktError("--allow-config-change applies to --resume only; add --resume or drop it")
        cfg = command_config(name, config_cls, args, required)
        if prepare is not None:
            prepare(cfg)
        if getattr(cfg, "sync_bn", False) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from zskt.distributed import check_sync_batchnorm

            check_sync_batchnorm(True, resolve_device(cfg.device))  # every rank, before any collective
        with RunContext(cfg.device) as ctx:
            device = ctx.device or resolve_device(cfg.device)
            # Under torchrun only rank 0 checks and writes the run folder; its verdict reaches every rank, so
            # a refused --out stops all ranks at once with rank 0's message.
            log, error = None, None
            try:
                log = RunLog(
                    args.out,
                    command=name,
                    config=to_dict(cfg),
                    environment=environment(device),
                    resume=args.resume,
                    overwrite=args.overwrite,
                    quiet=args.quiet,
                    enabled=ctx.is_main,
                    tensorboard=args.tensorboard,
                    allow_change=args.allow_config_change,
                )
                precision = getattr(cfg, "precision", None)
                log.record_runtime(
                    device=device,
                    precision=resolve_precision(precision, device).name
                    if isinstance(precision, str)
                    else None,
                )
            except ZsktError as e:
                error = str(e)
            except OSError as e:  # e.g. an --out that cannot be created: one line, on every rank
                error = describe_os_error(e)
            if error and log is not None:
                log.close(failed=True)
            if ctx.distributed:
                from zskt.distributed import broadcast_object

                error = broadcast_object(error)
                if error and not ctx.is_main:
                    raise PeerError(error)
            if error:
                raise ZsktError(error)
            try:
                with trusting_checkpoints(bool(getattr(args, "trust_checkpoint", False))):
                    result = run(cfg, log)
            except BaseException:
                log.close(failed=True)
                if log.restored:  # cli.main adds this to its one line
                    args._restored = str(log.out)
                raise
            log.close()
        if ctx.is_main:
            shown = ", ".join(
                f"{k} {result[k]:.2f}" + ("%" if "accuracy" in k else "")
                for k in ("test_accuracy", "mte")
                if isinstance(result.get(k), float)
            )
            print(f"{name}: {shown or 'done'} -> {args.out}/result.json", flush=True)
        return 0

    return Command(name, help, add_arguments, main, description or help)


def command_config(name: str, config_cls: type, args: argparse.Namespace, required: tuple[str, ...] = ()):
    """The config of a run-folder command: `--config FILE`'s fields if given, then the options on the command
    line over them; a `required` field that neither gives is a one-line error."""
    base = replay_values(args.config, name) if getattr(args, "config", None) else {}
    missing = [
        option_name(f) for f in required if getattr(args, f, None) is None and base.get(f) in (None, "")
    ]
    if missing:
        raise ZsktError(
            f"{', '.join(missing)} required (or --config RUN/config.json to replay a run's options)"
        )
    return config_from_args(config_cls, args, base=base)


def _names(text: str) -> tuple[str, ...]:
    """`lr,student_lr` -> the config field names (dashes as underscores)."""
    return tuple(n.strip().replace("-", "_") for n in text.split(",") if n.strip())


def add_threads_argument(parser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for PyTorch (default: one per core, fixed for the run, "
        "recorded in environment.json; the thread count can change a CPU run's rounding)",
    )


def set_threads(threads: int | None) -> None:
    """Apply `--threads`: a fixed count, whatever the machine's load (docs/decisions.md)."""
    if threads is None:
        return
    if threads < 1:
        raise ZsktError(f"--threads {threads}: expected a positive number of threads")
    import torch

    torch.set_num_threads(threads)


# The subcommands that are not training methods: name -> module that defines `COMMAND`. The training methods'
# subcommands are built from the method registry (zskt.methods.registry.METHODS) and listed after `demo`.
COMMANDS = {
    "demo": "zskt.commands.demo",
    "belief": "zskt.evaluate.belief_cli",
    "reproduce": "zskt.commands.reproduce",
    "report": "zskt.reports.cli",
    "plot": "zskt.reports.plot_cli",
    "list": "zskt.listing",
    "download": "zskt.data.cli",
}


def method_command(name: str, method) -> Command:
    """The subcommand of a registered method: its config's options in a run-folder command."""
    from zskt.methods.registry import check_inputs

    build = method.command or run_folder_command
    return build(
        name,
        method.help,
        method.config,
        method.run,
        description=method.description,
        required=method.required,
        aliases=dict(method.aliases),
        prepare=lambda cfg: check_inputs(method, cfg),
    )


def load_commands() -> dict[str, Command]:
    from zskt.methods.registry import METHODS

    commands = {}
    for name, module in COMMANDS.items():
        commands[name] = importlib.import_module(module).COMMAND
        if name == "demo":
            commands.update({m: method_command(m, method) for m, method in METHODS.items()})
    return commands


def build_parser(commands: dict[str, Command]) -> Parser:
    import zskt

    parser = Parser(
        prog="zskt",
        description="Zero-shot knowledge transfer via adversarial belief matching "
        "(Micaelli & Storkey, NeurIPS 2019): teachers, zero-shot and few-shot students, belief "
        "matching, and the paper's experiments. Start with `zskt demo`.",
    )
    parser.add_argument("--version", action="version", version=f"zskt {zskt.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in commands.values():
        p = sub.add_parser(command.name, help=command.help, description=command.description)
        command.add_arguments(p)
        p.set_defaults(_command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    commands = load_commands()
    parser = build_parser(commands)
    args = parser.parse_args(argv)
    if not getattr(args, "_command", None):
        parser.print_help()
        return 2
    try:
        return args._command.main(args) or 0
    except PeerError:
        return 2
    except (ZsktError, OSError, MemoryError) as e:
        # Expected failures, one line each: the user's mistake (ZsktError), the file system's refusal
        # (OSError: permission, not a folder, no space, read-only), host memory running out.
        if isinstance(e, ZsktError):
            message = str(e)
        elif isinstance(e, OSError):
            message = describe_os_error(e)
        else:
            message = "out of host memory; lower --batch-size or --eval-batch-size, or free memory, and rerun"
        restored = getattr(args, "_restored", None)
        if restored:
            message += f"; the run that --overwrite replaced in {restored} was put back intact"
        rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
        where = f" (rank {rank})" if rank not in (None, "0") else ""
        print(f"zskt {args.command}: error{where}: {message}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        restored = getattr(args, "_restored", None)
        if restored:
            hint = f"; the run that --overwrite replaced in {restored} was put back intact"
        else:
            hint = "; continue with the same command and --resume" if out else ""
        print(f"zskt {args.command}: interrupted{hint}", file=sys.stderr, flush=True)
        return 130


def entry() -> None:
    """The `zskt` executable and `python -m zskt`: keep freed host memory, `main`, then exit with its status.

    A torchrun rank (WORLD_SIZE > 1) leaves with os._exit once its output is flushed: by then every file is
    written and closed and the process group destroyed, but gloo's threads could still abort the interpreter's
    ordinary shutdown now and then ("terminate called without an active exception", SIGABRT, in about one
    two-rank run in 20-50 here, after a successful run), which torchrun reports as a failure of the whole job.
    """
    from zskt.runtime import keep_freed_host_memory

    # Fewer page faults in the training loops (runtime.py). Here, not in `main`: it changes the whole process,
    # which is the command's own, not the process of a program that calls `main`.
    keep_freed_host_memory()
    status = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    entry()
