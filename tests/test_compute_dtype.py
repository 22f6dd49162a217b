"""`model.dtype = "auto"`: bf16 compute only where the hardware has bf16 arithmetic, float32 elsewhere."""

import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import smollm2_1shot_cpu, tiny  # noqa: E402
from rlvr_jax.experiment import model as model_lib  # noqa: E402
from rlvr_jax.experiment.validation import ConfigError, validate  # noqa: E402

# Abridged /proc/cpuinfo of three hosts: AVX2 only, Sapphire Rapids (AVX-512 BF16 + AMX), Graviton 3 (Arm BF16).
AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize("cpuinfo, expected", [(AVX2, False), (AMX, True), (ARM, True), ("", False),
                                               ("flags\t: avx512f avx512bw\n", False)])
def test_cpu_has_bf16_reads_the_instruction_flags(cpuinfo, expected):
    assert model_lib.cpu_has_bf16(cpuinfo) is expected


@pytest.mark.parametrize("backend, cpuinfo, expected", [
    ("cpu", AVX2, "float32"), ("cpu", AMX, "bfloat16"), ("cpu", ARM, "bfloat16"),
    ("gpu", AVX2, "bfloat16"), ("tpu", AVX2, "bfloat16"),
])
def test_auto_resolves_by_backend_and_cpu(backend, cpuinfo, expected):
    assert model_lib.resolve_dtype("auto", backend=backend, cpuinfo=cpuinfo) == expected


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_explicit_dtypes_are_kept(name):
    assert model_lib.resolve_dtype(name, backend="cpu", cpuinfo=AMX) == name
    assert model_lib.resolve_dtype(name, backend="gpu", cpuinfo=AVX2) == name


def test_model_config_carries_the_resolved_dtype():
    c = tiny.get_config()
    c.model.dtype = "auto"
    cfg = model_lib.model_config(c, need_weights=False)
    assert cfg.dtype == model_lib.resolve_dtype("auto")
    assert cfg.dtype in ("float32", "bfloat16")


def test_auto_is_a_compute_dtype_only():
    c = tiny.get_config()
    c.model.param_dtype = "auto"  # master weights must be named: AdamW at 1e-6 vanishes in bf16
    with pytest.raises(ConfigError, match="model.param_dtype"):
        validate(c, need_weights=False)


def test_the_demo_computes_in_auto():
    c = smollm2_1shot_cpu.get_config()
    assert (c.model.dtype, c.model.ref_dtype, c.model.param_dtype) == ("auto", "auto", "float32")
