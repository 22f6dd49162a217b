"""Orbax checkpoints of the whole run: train state (params, optimizer, step, RNG) plus host state.

The host state (data position, python-side counters) is a small JSON document saved next to the
arrays, so a restarted run resumes exactly where it stopped.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves every `save_every` steps (keeping the newest `keep`), restores the latest.

    Args:
      directory: where step folders are written (created).
      save_every: steps between periodic saves; `save(..., force=True)` ignores it.
      keep: how many checkpoints to keep (oldest removed first); 0 keeps every one (to evaluate
        each checkpoint of a run afterwards, as the paper does every 20 steps).
      async_save: write in a background thread while training continues.
      write_gb: GB of arrays encoded and written at once (Orbax's `save_concurrent_gb`); each array in
        flight costs its size again in host memory, so the bound is what a save adds to the process
        (unbounded, a save of SmolLM2-135M's 1.5 GB state added 1.2 GB). It must exceed the largest array
        (`write_gb_for`). None: Orbax's default (96 GB).
    """

    def __init__(self, directory, *, save_every: int, keep: int = 3, async_save: bool = True,
                 write_gb: float | None = None):
        self.directory = pathlib.Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.save_every = int(save_every)
        if keep < 0:
            raise ValueError(f"keep must be >= 0 (0 keeps every checkpoint), got {keep}")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep or None, enable_async_checkpointing=async_save, create=True
        )
        handlers = None
        if write_gb is not None:
            if not write_gb > 0:
                raise ValueError(f"write_gb must be > 0 (or None), got {write_gb}")
            handlers = {"state": ocp.StandardCheckpointHandler(save_concurrent_gb=write_gb),
                        "host": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.save_every > 0 and step % self.save_every == 0

    def save(self, step: int, state: Any, host_state: dict, *, force: bool = False) -> bool:
        """Saves `state` (a pytree of arrays) and `host_state` (JSON-able) at `step`."""
        if not force and not self.should_save(step):
            return False
        if step in self._manager.all_steps():
            return False
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), host=ocp.args.JsonSave(host_state)
        )
        return bool(self._manager.save(step, args=args, force=True))

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """Restores `(state, host_state, step)`; `abstract_state` gives shapes, dtypes and shardings.

        Args:
          abstract_state: pytree of `jax.ShapeDtypeStruct` (with `.sharding`) or arrays like the state.
          step: which step; the latest when omitted.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), host=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["host"]), step

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def write_gb_for(tree: Any, write_gb: float) -> float:
    """`write_gb`, raised to 1.5x the largest array of `tree` when below it (Orbax refuses an array larger
    than its in-flight bound)."""
    largest = max((x.nbytes for x in jax.tree.leaves(tree) if hasattr(x, "nbytes")), default=0)
    return max(float(write_gb), 1.5 * largest / 1e9)


def restore_params(directory, abstract_params: Any, shardings: Any, step: int | None = None) -> tuple[Any, int]:
    """Reads only the policy params of a trainer checkpoint: no optimizer state, no critic.

    The trainer saves a `TrainState`, or `{"actor": TrainState, "critic": ...}` for PPO; both work.
    `partial_restore` skips the optimizer moments (twice the params' size, and laid out by the
    training run's optimizer settings) and the critic.

    Args:
      directory: the run's `checkpoints/` folder (`Checkpointer.directory`).
      abstract_params: pytree of `jax.ShapeDtypeStruct` (e.g. `jax.eval_shape` of `init_params`).
      shardings: matching pytree of `jax.sharding.Sharding` the params are placed with.
      step: which step; the latest when omitted.

    Returns:
      `(params, step)`.
    """
    directory = pathlib.Path(directory)
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True),
                                    item_handlers={"state": ocp.PyTreeCheckpointHandler()})
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise FileNotFoundError(f"no checkpoint step {step} in {directory} (have {list(manager.all_steps())})")
    restore_args = jax.tree.map(
        lambda x, s: ocp.ArrayRestoreArgs(sharding=s, global_shape=x.shape, dtype=x.dtype),
        abstract_params, shardings)
    nest = (lambda t: {"actor": t}) if "actor" in manager.item_metadata(step)["state"] else (lambda t: t)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=nest({"params": abstract_params}), restore_args=nest({"params": restore_args}),
        partial_restore=True)))["state"]
    manager.close()
    params = restored["actor"]["params"] if "actor" in restored else restored["params"]
    return params, int(step)
