"""The paper's six benchmarks ship as package data: a built wheel carries them, an installed copy reads
them with no data_dir, a data_dir still overrides, and launch/eval.py --benchmarks=paper runs from any cwd."""

import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from rlvr_jax.data.datasets import DatasetError
from rlvr_jax.evaluation import PAPER_BENCHMARKS, load_benchmark
from rlvr_jax.evaluation.benchmarks import PACKAGED_DATA_DIR

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_EVAL = REPO.parent / "shared" / "data" / "eval"  # the suite as published, when the checkout has it
ROWS = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "minerva_math": 272, "olympiadbench": 675}


def test_packaged_sets_are_the_published_files():
    for name in PAPER_BENCHMARKS:
        ours = PACKAGED_DATA_DIR / name / "test.jsonl"
        assert len(ours.read_text().splitlines()) == ROWS[name], name
        sha = hashlib.sha256(ours.read_bytes()).hexdigest()
        assert sha in (PACKAGED_DATA_DIR / "README.md").read_text(), f"{name}: checksum not recorded"
        if SHARED_EVAL.is_dir():
            assert ours.read_bytes() == (SHARED_EVAL / name / "test.jsonl").read_bytes(), name


def test_no_data_dir_reads_the_package_and_a_data_dir_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing relative to the working directory is read
    for name in PAPER_BENCHMARKS:
        for data_dir in (None, ""):
            examples = load_benchmark(name, data_dir=data_dir)
            assert len(examples) == ROWS[name] and all(e.answer for e in examples)
    (tmp_path / "suite" / "aime24").mkdir(parents=True)
    (tmp_path / "suite" / "aime24" / "test.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    (only,) = load_benchmark("aime24", data_dir=tmp_path / "suite")
    assert (only.question, only.answer) == ("1+1?", "2")
    with pytest.raises(DatasetError, match="math500"):  # no fallback to the package copy
        load_benchmark("math500", data_dir=tmp_path / "suite")


def test_fresh_install_carries_the_sets(tmp_path):
    """Builds a wheel from setup.py (package_data), installs it alone and reads every set from it."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "setup.py", src)
    shutil.copytree(REPO / "rlvr_jax", src / "rlvr_jax", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    proc = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
                                 str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("rlvr_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"rlvr_jax/evaluation/data/{n}/test.jsonl" for n in PAPER_BENCHMARKS} <= names
    assert {"rlvr_jax/evaluation/data/README.md", "rlvr_jax/evaluation/data/LICENSE"} <= names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what `pip install` puts into site-packages
    run = tmp_path / "cwd"
    run.mkdir()
    code = ("import rlvr_jax, json; from rlvr_jax.evaluation import PAPER_BENCHMARKS, load_benchmark; "
            "print(json.dumps([rlvr_jax.__file__, {n: len(load_benchmark(n)) for n in PAPER_BENCHMARKS}]))")
    env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], cwd=run, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, rows = json.loads(proc.stdout.splitlines()[-1])
    assert pathlib.Path(where).is_relative_to(site) and rows == ROWS


@pytest.mark.slow  # a launch/ subprocess on the tiny model
def test_eval_cli_paper_from_another_directory(tmp_path):
    """`launch/eval.py --config=configs/tiny.py --benchmarks=paper`, run from an unrelated cwd."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    env.pop("RLVR_JAX_EVAL_DIR", None)
    cmd = [sys.executable, str(REPO / "launch/eval.py"), "--config=" + str(REPO / "configs/tiny.py"),
           "--benchmarks=paper", "--config.eval.limit=1", "--config.eval.max_new_tokens=4",
           "--config.trainer.progress=False"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((tmp_path / "runs" / "tiny" / "eval" / "summary.json").read_text())
    assert list(summary["benchmarks"]) == list(PAPER_BENCHMARKS)
    assert all(b["num_problems"] == 1 for b in summary["benchmarks"].values())
