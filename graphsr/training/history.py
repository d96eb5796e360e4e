"""Training history: one CSV row per optimiser step (validation losses on the steps that have one), mirrored to
TensorBoard when it is installed (``pip install graphsr[tensorboard]``), and plotted by ``graphsr plot-history``.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

HISTORY = "history.csv"
COLUMNS = ("step", "epoch", "seconds", "lr", "train_loss", "val_loss", "events_per_s")
TENSORBOARD_TAGS = {"train_loss": "loss/train", "val_loss": "loss/validation", "lr": "learning_rate",
                    "events_per_s": "events_per_second"}

logger = logging.getLogger(__name__)


class History:
    """Appends rows to ``out_dir/history.csv`` (and TensorBoard scalars under ``out_dir/tensorboard``).

    Args:
        out_dir: the run directory.
        resume_step: continuing a run from a checkpoint of this step: rows of later steps (written by a run killed
            after that checkpoint) are dropped, so every step appears once. None starts a new history.
        tensorboard: also write TensorBoard event files when ``torch.utils.tensorboard`` can be imported.
    """

    def __init__(self, out_dir: str | Path, resume_step: int | None = None, tensorboard: bool = True):
        self.path = Path(out_dir) / HISTORY
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = read_history(self.path) if resume_step is not None and self.path.exists() else []
        rows = [row for row in rows if row["step"] <= (resume_step or 0)]
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, COLUMNS)
            writer.writeheader()
            writer.writerows({k: _cell(row[k]) for k in COLUMNS} for row in rows)
        self._file = open(self.path, "a", newline="")
        self._csv = csv.DictWriter(self._file, COLUMNS)
        self._tensorboard = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard itself is missing
                logger.debug("tensorboard is not installed: history.csv only")
            else:
                self._tensorboard = SummaryWriter(str(self.path.parent / "tensorboard"), purge_step=resume_step)

    def log(self, step: int, **values: float | None) -> None:
        """One row: ``values`` among :data:`COLUMNS` (the others stay empty)."""
        unknown = set(values) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown history columns {sorted(unknown)}; known: {COLUMNS}")
        self._csv.writerow({"step": step, **{k: _cell(v) for k, v in values.items()}})
        self._file.flush()  # a killed run keeps its history up to its last step
        if self._tensorboard is not None:
            for name, value in values.items():
                if name in TENSORBOARD_TAGS and value is not None:
                    self._tensorboard.add_scalar(TENSORBOARD_TAGS[name], value, step)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cell(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def read_history(path: str | Path) -> list[dict]:
    """Rows of a ``history.csv`` (a file or its run directory): numbers, None where a column is empty."""
    path = Path(path)
    path = path / HISTORY if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"no training history at {path} (written by `graphsr train`)")
    with open(path, newline="") as handle:
        return [{k: (None if v == "" else int(v) if k in ("step", "epoch") else float(v)) for k, v in row.items()}
                for row in csv.DictReader(handle)]
