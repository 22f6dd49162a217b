"""Metric loggers, registered by name (`trainer.loggers`): jsonl, tensorboard, wandb.

Every logger takes the same three calls: `log(step, row)` for a step's metrics or eval scores (a
flat dict of JSON-able values), `log_samples(step, rows)` for a few (prompt, response, reward)
rows, and `close()`. `MetricsWriter` (writers.py) fans each call out to the configured loggers.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import secrets
import sys
from typing import Any, Callable, Iterable, Sequence

DEFAULT_LOGGERS = ("jsonl", "tensorboard")


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a logger may record about the run besides metrics.

    Attributes:
      name: run name (the wandb run name).
      config: the resolved run config as a JSON-able dict (the wandb run config).
      project: wandb project.
      entity: wandb entity (team or user); empty = the account's default.
    """

    name: str = "run"
    config: dict | None = None
    project: str = "rlvr_jax"
    entity: str = ""


class JsonlLogger:
    """`metrics.jsonl` (one object per step / eval) and `samples.jsonl` (one sample a line)."""

    def __init__(self, workdir: pathlib.Path, run: RunInfo):
        del run
        self._metrics = open(workdir / "metrics.jsonl", "a", buffering=1)
        self._samples = open(workdir / "samples.jsonl", "a", buffering=1)

    def log(self, step: int, row: dict[str, Any]) -> None:
        self._metrics.write(json.dumps({"step": step, **row}) + "\n")

    def log_samples(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        for row in rows:
            self._samples.write(json.dumps({"step": step, **row}, ensure_ascii=False) + "\n")

    def flush(self) -> None:
        self._metrics.flush()
        self._samples.flush()

    def close(self) -> None:
        self._metrics.close()
        self._samples.close()


def _summary_writer_class():
    """tensorboardX's `SummaryWriter`, imported without torch unless the process already has it.

    tensorboardX imports torch whenever it is installed (only to accept torch tensors as values); in the
    trainer that added ~180 MB of resident memory and ~2 s of start-up for nothing (it logs floats).
    A `None` entry in `sys.modules` makes that optional import fail, for the duration of this import only.
    """
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class TensorBoardLogger:
    """Scalar metrics as TensorBoard events under `<workdir>/tensorboard` (samples are not written)."""

    def __init__(self, workdir: pathlib.Path, run: RunInfo):
        del run
        self._tb = _summary_writer_class()(str(workdir / "tensorboard"))

    def log(self, step: int, row: dict[str, Any]) -> None:
        for key, value in _scalars(row).items():
            self._tb.add_scalar(key, value, step)

    def log_samples(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        del step, rows

    def flush(self) -> None:
        self._tb.flush()

    def close(self) -> None:
        self._tb.close()


WANDB_MISSING = ("trainer.loggers includes 'wandb' but the wandb package is not installed; "
                 "install the extra with `pip install -e \".[wandb]\"` (or `pip install wandb`), or drop "
                 "'wandb' from trainer.loggers")


class WandbLogger:
    """Weights & Biases: the resolved config as the run config, scalars per step, sample tables.

    The run id is kept in `<workdir>/wandb_run_id`, so a resumed run in the same workdir appends to
    the same wandb run. `WANDB_MODE=offline` (or `disabled`) and the other WANDB_* variables are
    honoured by wandb itself; offline runs are written under `<workdir>/wandb` for `wandb sync`.
    """

    def __init__(self, workdir: pathlib.Path, run: RunInfo):
        wandb = import_wandb()
        id_file = workdir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(8)
        id_file.write_text(run_id)
        self._wandb = wandb
        self._run = wandb.init(project=run.project, entity=run.entity or None, name=run.name, id=run_id,
                               resume="allow", dir=str(workdir), config=run.config or {})
        self._columns: list[str] | None = None

    def log(self, step: int, row: dict[str, Any]) -> None:
        self._run.log(_scalars(row), step=step)

    def log_samples(self, step: int, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        # One fixed column set per run (wandb tables of one key must share columns).
        self._columns = self._columns or ["step"] + list(rows[0])
        data = [[step] + [_cell(row.get(c)) for c in self._columns[1:]] for row in rows]
        self._run.log({"samples": self._wandb.Table(columns=self._columns, data=data)}, step=step)

    def flush(self) -> None:
        pass  # wandb streams in its own process.

    def close(self) -> None:
        self._run.finish()


def import_wandb():
    """The wandb module, or ImportError with the install command when it is absent."""
    try:
        import wandb
    except ImportError as e:
        raise ImportError(WANDB_MISSING) from e
    return wandb


LOGGERS: dict[str, Callable[[pathlib.Path, RunInfo], Any]] = {
    "jsonl": JsonlLogger,
    "tensorboard": TensorBoardLogger,
    "wandb": WandbLogger,
}

# Packages a logger needs beyond the core install: checked at start-up, before the model loads.
_REQUIREMENTS = {"wandb": import_wandb}


def check_loggers(names: Iterable[str]) -> tuple[str, ...]:
    """Validates a `trainer.loggers` list; returns it as a tuple.

    Raises:
      ValueError: an unknown or repeated name.
      ImportError: a logger's package is not installed (the message says how to install it).
    """
    names = tuple(names)
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise ValueError(f"trainer.loggers: unknown logger(s) {unknown}; known: {sorted(LOGGERS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"trainer.loggers: {list(names)} names a logger twice")
    for name in names:
        if name in _REQUIREMENTS:
            _REQUIREMENTS[name]()
    return names


def make_loggers(names: Iterable[str], workdir, run: RunInfo | None = None) -> list:
    """Builds the named loggers writing into `workdir` (created)."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    return [LOGGERS[name](workdir, run or RunInfo()) for name in check_loggers(names)]


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a row (booleans and text are not plotted)."""
    return {k: v for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _cell(value: Any) -> Any:
    return value if isinstance(value, (int, float, str)) or value is None else json.dumps(value)
