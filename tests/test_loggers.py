"""Metric loggers: the registry, wandb in offline mode (read back from its run file), missing-package errors."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from rlvr_jax.training.loggers import RunInfo, check_loggers
from rlvr_jax.training.writers import MetricsWriter

REPO = pathlib.Path(__file__).resolve().parents[1]


def _records(path: pathlib.Path):
    """The protobuf records of one `.wandb` file (wandb's LevelDB-style log).

    Layout: a 7-byte file header, then 32 KiB blocks of records `crc32c(4) length(2, little-endian)
    type(1) payload`; type 1 is a whole record, 2/3/4 its first/middle/last fragment.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = path.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block tail too short for a header is zero padding
            pos += left
            continue
        n, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if pos + 7 + n > len(data):  # a record still being written
            return
        buf += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def read_wandb_runs(workdir: pathlib.Path, runs: int = 1, timeout_s: float = 60.0) -> dict:
    """Run ids, names, config and history rows of the offline runs under `workdir/wandb`.

    wandb's service process may still be writing after `finish()` returns: waits until `runs` files
    each end with their exit record.
    """
    deadline = time.time() + timeout_s
    while True:
        paths = sorted(workdir.glob("wandb/offline-run-*/run-*.wandb"))
        records = [list(_records(p)) for p in paths]
        done = [any(r.WhichOneof("record_type") == "exit" for r in rs) for rs in records]
        if (len(paths) >= runs and all(done)) or time.time() > deadline:
            break
        time.sleep(0.5)
    assert len(paths) == runs and all(done), f"{len(paths)} wandb run files, finished: {done}"
    out = {"ids": set(), "names": set(), "config": {}, "history": []}
    for rs in records:
        for r in rs:
            kind = r.WhichOneof("record_type")
            if kind == "run":
                out["ids"].add(r.run.run_id)
                out["names"].add(r.run.display_name)
                out["config"].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
            elif kind == "config":
                out["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
            elif kind == "history":
                row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
                out["history"].append(row)
    return out


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for key in ("WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_PROJECT"):
        monkeypatch.delenv(key, raising=False)


def test_wandb_offline_records_config_metrics_evals_and_samples(tmp_path, offline):
    config = {"name": "demo", "trainer": {"total_steps": 2, "loggers": ["jsonl", "wandb"]}, "actor": {"lr": 1e-6}}
    run = RunInfo(name="demo", config=config, project="rlvr_jax_test")
    writer = MetricsWriter(tmp_path, loggers=("jsonl", "wandb"), run=run)
    writer.write(0, {"eval/math500/accuracy": 0.25})
    writer.write(1, {"reward/mean": 0.5, "actor/entropy": 1.25, "perf/ok": True})
    writer.write_samples(1, [{"prompt": "1+1?", "response": "\\boxed{2}", "reward": 1.0},
                             {"prompt": "1+1?", "response": "3", "reward": 0.0}])
    writer.close()
    got = read_wandb_runs(tmp_path)
    assert got["names"] == {"demo"}
    assert {k: got["config"][k] for k in config} == config
    by_step = {row["_step"]: row for row in got["history"]}
    assert by_step[0]["eval/math500/accuracy"] == 0.25
    assert (by_step[1]["reward/mean"], by_step[1]["actor/entropy"]) == (0.5, 1.25)
    assert "perf/ok" not in by_step[1]  # booleans are not plotted
    assert by_step[1]["samples/_type"] == "table-file" and by_step[1]["samples/nrows"] == 2
    (table_file,) = tmp_path.glob("wandb/offline-run-*/files/" + by_step[1]["samples/path"])
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["step", "prompt", "response", "reward"]
    assert table["data"] == [[1, "1+1?", "\\boxed{2}", 1.0], [1, "1+1?", "3", 0.0]]
    # jsonl is written alongside.
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_wandb_resumed_run_keeps_its_id(tmp_path, offline):
    for step in (1, 2):  # two processes' lifetimes in one workdir
        writer = MetricsWriter(tmp_path, loggers=("wandb",), run=RunInfo(name="r"))
        writer.write(step, {"reward/mean": float(step)})
        writer.close()
    got = read_wandb_runs(tmp_path, runs=2)
    assert got["ids"] == {(tmp_path / "wandb_run_id").read_text()}
    assert sorted(r["_step"] for r in got["history"] if "reward/mean" in r) == [1, 2]
    assert not (tmp_path / "metrics.jsonl").exists()  # only the loggers asked for


def test_missing_wandb_and_unknown_logger_are_clear(monkeypatch):
    sys.path.insert(0, str(REPO))
    from configs import tiny
    from rlvr_jax.experiment import validation as config_check

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install -e "\.\[wandb\]"'):
        check_loggers(["jsonl", "wandb"])
    config = tiny.get_config()
    config.trainer.loggers = ("jsonl", "wandb")
    with pytest.raises(config_check.ConfigError, match="trainer.loggers includes 'wandb'"):
        config_check.validate(config)
    with pytest.raises(ValueError, match=r"unknown logger\(s\) \['mlflow'\]"):
        check_loggers(["mlflow"])
    with pytest.raises(ValueError, match="twice"):
        check_loggers(["jsonl", "jsonl"])
    assert check_loggers(["jsonl", "tensorboard"]) == ("jsonl", "tensorboard")


@pytest.mark.slow  # a launch/ subprocess on the tiny model
def test_train_cli_logs_to_wandb_offline(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
               WANDB_MODE="offline", WANDB_SILENT="true")
    cmd = [sys.executable, str(REPO / "launch/train.py"), "--config=" + str(REPO / "configs/tiny.py"),
           f"--workdir={tmp_path}", "--config.trainer.total_steps=2", "--config.trainer.save_every=0",
           "--config.trainer.progress=False", "--config.trainer.loggers=('jsonl','wandb')"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = read_wandb_runs(tmp_path)
    resolved = json.loads((tmp_path / "config.json").read_text())
    assert got["config"]["trainer"] == resolved["trainer"] and got["config"]["trainer"]["total_steps"] == 2
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = {r["_step"]: r for r in got["history"]}
    for row in rows:
        assert logged[row["step"]]["reward/mean"] == row["reward/mean"]
    assert logged[1]["samples/_type"] == "table-file"
    assert not (tmp_path / "tensorboard").exists()


def test_summary_tables_have_one_column_per_value():
    from rlvr_jax.training.report import summary_text

    def widths(text):
        return {line.count("|") for line in text.splitlines() if line.startswith("|")}

    no_eval = summary_text([{"step": 1, "reward/mean": 0.25, "response/length_mean": 60.0}])
    assert widths(no_eval) == {4} and "| 1 | 0.250 | 60 |" in no_eval
    rows = [{"step": 0, "eval/add2d/accuracy": 0.1},
            {"step": 1, "reward/mean": 0.5, "response/length_mean": 20.0, "eval/add2d/accuracy": 0.3}]
    table = summary_text(rows).split("\n\n")[1]  # after the held-out before/after table
    assert widths(table) == {5} and "| 1 | 0.500 | 20 | 30.0% |" in table


def test_tensorboard_logger_writes_scalars_without_importing_torch(tmp_path):
    """tensorboardX imports torch when it can; the logger keeps it out (memory), and torch stays importable."""
    script = f"""
import importlib.util, pathlib, struct, sys
from rlvr_jax.training.loggers import RunInfo, make_loggers
(tb,) = make_loggers(["tensorboard"], pathlib.Path({str(tmp_path)!r}), RunInfo())
tb.log(3, {{"train/reward": 0.25, "note": "text is skipped"}})
tb.close()
assert "torch" not in sys.modules, "tensorboardX brought torch in"
if importlib.util.find_spec("torch") is not None:
    import torch  # the import was blocked for tensorboardX only
from tensorboardX.proto import event_pb2
(path,) = pathlib.Path({str(tmp_path)!r}, "tensorboard").glob("events.out.tfevents.*")
data, pos, found = path.read_bytes(), 0, []
while pos < len(data):  # TFRecord: length (8), its crc (4), payload, payload crc (4)
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
    found += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    pos += 16 + n
print(found)
assert found == [(3, "train/reward", 0.25)], found
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
