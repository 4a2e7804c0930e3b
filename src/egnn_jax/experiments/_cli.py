"""The command line every experiment shares: ``python -m egnn_jax.experiments.<name>``.

Common flags: ``--quick --workdir --resume --overwrite --seed --train-seed --models
--data-dir --evaluate FILE.npz --table --no-progress --devices N``, and for many hosts
``--distributed`` or ``--coordinator HOST:PORT --num-processes P --process-id I``; an
experiment adds its own through `Experiment.add_arguments`.

Exit codes: 0 success; 1 an error the message explains (a run already in the workdir, a
fingerprint mismatch, a bad ``--evaluate`` file, divergence, ...), printed as one line
without a traceback; 2 a usage error (unknown flag, invalid value); 130 interrupted (every
run's state is saved: continue with ``--resume``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ._checkpoint import CheckpointMismatchError, FingerprintMismatchError, RunExistsError
from ._concurrency import interrupt_on_signals
from ._experiment import Experiment
from ._framework import evaluate_file, train_and_evaluate
from ._loop import TrainingDiverged
from ._workdir import read_metrics

__all__ = ["cli_main", "entry_points"]

# Errors whose message says all a user needs: one line on stderr, exit code 1.
EXPECTED_ERRORS = (
    RunExistsError,
    FingerprintMismatchError,
    CheckpointMismatchError,
    TrainingDiverged,
    FileNotFoundError,
    ValueError,
)


def build_parser(experiment: Experiment) -> argparse.ArgumentParser:
    names = ",".join(experiment.model_names)
    parser = argparse.ArgumentParser(
        prog=f"python -m egnn_jax.experiments.{experiment.name}",
        description=experiment.description,
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run (< 1 min on CPU)")
    parser.add_argument(
        "--workdir",
        type=Path,
        help=f"outputs, best parameters and checkpoints (default {experiment.default_workdir})",
    )
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume",
        action="store_true",
        help="continue the runs already in the workdir (finished runs are only reloaded)",
    )
    existing.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the runs already in the workdir for these models (and any made with "
        "other data or settings), then train",
    )
    parser.add_argument("--seed", type=int, help="data seed (and training seed)")
    parser.add_argument("--train-seed", type=int, help="training seed on the same data")
    parser.add_argument("--models", help=f"comma-separated subset of {names}")
    parser.add_argument("--data-dir", type=Path, help="simulation cache (default WORKDIR/data)")
    parser.add_argument(
        "--evaluate",
        type=Path,
        metavar="FILE.npz",
        help="print JSON of each saved model's score on FILE and exit",
    )
    parser.add_argument(
        "--table", action="store_true", help="print the result table of WORKDIR and exit"
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bars (or, without a terminal, the per-validation log lines)",
    )
    parser.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help="train data-parallel over N devices (batch split, parameters replicated; "
        "the batch size must be a multiple of N); default: one device",
    )
    cluster = parser.add_argument_group(
        "many hosts",
        "one process per host (or per GPU) joins JAX's distributed runtime before anything "
        "runs; --devices then counts the devices of every process",
    )
    cluster.add_argument(
        "--distributed",
        action="store_true",
        help="jax.distributed.initialize() with the cluster's own settings (SLURM, ...)",
    )
    cluster.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    cluster.add_argument("--num-processes", type=int, metavar="P", help="processes in all")
    cluster.add_argument("--process-id", type=int, metavar="I", help="this process, 0 ... P-1")
    experiment.add_arguments(parser)
    return parser


def _start_distributed(args, parser: argparse.ArgumentParser) -> None:
    """Join JAX's distributed runtime when asked (before any JAX computation)."""
    explicit = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed and all(a is None for a in explicit):
        return
    if not args.distributed and any(a is None for a in explicit):
        parser.error("--coordinator, --num-processes and --process-id go together")
    start_distributed(*explicit)


def start_distributed(coordinator=None, num_processes=None, process_id=None) -> None:
    """`jax.distributed.initialize` (arguments None: detected from the cluster, e.g. SLURM).

    On CPUs, cross-process collectives need an implementation: gloo, which jaxlib ships
    (the setting concerns the CPU backend only, so it is harmless on GPU hosts).
    """
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def _config(experiment: Experiment, args, parser: argparse.ArgumentParser):
    config = experiment.initial_config(args)
    try:
        overrides = {
            "seed": args.seed,
            "train_seed": args.train_seed,
            "models": None if args.models is None else tuple(args.models.split(",")),
        } | experiment.config_overrides(args)
        config = dataclasses.replace(
            config, **{k: v for k, v in overrides.items() if v is not None}
        )
        unknown = [m for m in config.models if m not in experiment.model_names]
        if unknown:
            raise ValueError(f"unknown models {unknown}; choose from {experiment.model_names}")
    except ValueError as e:
        parser.error(str(e))  # exits with code 2
    return config


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def cli_main(experiment: Experiment, argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the experiment (or ``--evaluate``, ``--table``); the exit code."""
    parser = build_parser(experiment)
    args = parser.parse_args(argv)
    _start_distributed(args, parser)
    if args.workdir is None:
        args.workdir = experiment.default_workdir_for(args)
    interrupt_on_signals()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The library's own INFO lines (resumes; evaluations when no progress bar is shown).
    logging.getLogger("egnn_jax").setLevel(logging.INFO)
    try:
        if args.evaluate is not None:
            scores = evaluate_file(experiment, args.workdir, args.evaluate)
            print(json.dumps(scores, indent=2, sort_keys=True))
            return 0
        if args.table:
            metrics = read_metrics(Path(args.workdir))
            if metrics is None:
                raise FileNotFoundError(f"{Path(args.workdir) / 'metrics.json'} not found")
            print(experiment.format_table(metrics))
            return 0
        config = _config(experiment, args, parser)
        code = experiment.command(config, args)
        if code is not None:
            return code
        metrics = train_and_evaluate(
            experiment,
            config,
            args.workdir,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=False if args.no_progress else None,
            data_dir=args.data_dir,
            devices=args.devices,
        )
    except KeyboardInterrupt:
        print("interrupted: training state saved; continue with --resume", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    print(experiment.format_table(metrics))
    wall = metrics["wall_seconds"]
    print(
        f"\nwall s: data {wall['data']:.1f}, train {wall['train_all_networks']:.1f}, "
        f"evaluate {wall['evaluate']:.1f}, plot {wall['plot']:.1f}, total {wall['total']:.1f}"
        f" | {metrics['device']['description']}\nwrote {Path(args.workdir) / 'metrics.json'}"
    )
    return 0


def entry_points(experiment: Experiment):
    """``(train_and_evaluate, evaluate_file, main)`` of an experiment module: the framework's
    functions with the experiment bound, so ``module.train_and_evaluate(config, workdir)``."""
    return (
        functools.partial(train_and_evaluate, experiment),
        functools.partial(evaluate_file, experiment),
        functools.partial(cli_main, experiment),
    )
