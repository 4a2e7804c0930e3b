"""What the N-body experiments that map one frame to a later one share: the ``--evaluate``
file format and ``--export``."""

from __future__ import annotations

from pathlib import Path

from ._experiment import EvaluationFileError, Experiment, load_npz

EVALUATION_KEYS = ("x0", "v0", "q", "xT")


class FrameTask(Experiment):
    """An experiment predicting the positions ``xT`` of a later frame from ``x0, v0`` and the
    charges ``q``. ``--evaluate FILE.npz`` reads those four arrays (``x0, v0, xT [S, M, d]``,
    ``q [S, M]``); ``--export SPLIT FILE.npz`` writes a split of the data in that format.

    A subclass defines `featurise(x0, v0, q, xT) -> batch` and `export_split(config, split,
    path, data_dir) -> path`.
    """

    data_keys = ("x0", "v0", "charges", "target")
    history_unit = "epoch"

    def featurise(self, x0, v0, q, xT) -> dict:
        raise NotImplementedError

    def export_split(self, config, split: str, path, data_dir) -> Path:
        raise NotImplementedError

    def add_arguments(self, parser):
        parser.add_argument(
            "--export",
            nargs=2,
            metavar=("SPLIT", "FILE.npz"),
            help="write SPLIT (train, valid, test) of the data in the --evaluate format and exit",
        )

    def command(self, config, args):
        if args.export is None:
            return None
        split, path = args.export
        data_dir = args.workdir / "data" if args.data_dir is None else args.data_dir
        print(f"wrote {self.export_split(config, split, path, data_dir)}")
        return 0

    def read_evaluation_file(self, config, path):
        f = load_npz(path, EVALUATION_KEYS)
        try:
            if f["xT"].shape != f["x0"].shape:
                raise ValueError(f"xT must have the shape of x0 {f['x0'].shape}")
            return self.featurise(f["x0"], f["v0"], f["q"], f["xT"])
        except ValueError as e:
            raise EvaluationFileError(f"{path}: {e}") from e
