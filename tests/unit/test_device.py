"""`dtype = "auto"`: the precision chosen from the hardware, and the CPU flags it reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ml_playground.device import auto_dtype, read_cpu_flags, resolve_precision

# Flags as /proc/cpuinfo lists them, trimmed: a Sapphire Rapids Xeon and an AMD EPYC (Zen 4).
XEON_AMX = frozenset(["avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"])
EPYC_AVX512_BF16 = frozenset(["avx2", "avx512f", "avx512_bf16", "avx512_vnni"])


def test_a_cpu_with_amx_trains_in_bfloat16() -> None:
    dtype, why = auto_dtype("cpu", cpu_flags=XEON_AMX, cuda_bf16=False)

    assert dtype == "bfloat16"
    assert "AMX" in why


def test_a_cpu_with_avx512_bf16_but_no_amx_stays_in_float32() -> None:
    dtype, why = auto_dtype("cpu", cpu_flags=EPYC_AVX512_BF16, cuda_bf16=False)

    assert dtype == "float32"
    assert why == "this CPU has no AMX matrix units, bfloat16 autocast would be slower"


def test_a_cpu_whose_flags_cannot_be_read_stays_in_float32() -> None:
    assert auto_dtype("cpu", cpu_flags=None, cuda_bf16=False)[0] == "float32"


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bfloat16"), (False, "float16")])
def test_a_gpu_uses_bfloat16_where_it_has_it_else_float16(bf16: bool, expected: str) -> None:
    assert auto_dtype("cuda", cpu_flags=XEON_AMX, cuda_bf16=bf16)[0] == expected


def test_apple_mps_stays_in_float32() -> None:
    assert auto_dtype("mps", cpu_flags=None, cuda_bf16=False)[0] == "float32"


def test_cpu_flags_are_read_from_the_flags_line_of_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n",
        encoding="utf-8",
    )

    assert read_cpu_flags(cpuinfo) == frozenset({"fpu", "avx2", "avx512_bf16"})


def test_an_unreadable_cpuinfo_means_unknown_flags(tmp_path: Path) -> None:
    assert read_cpu_flags(tmp_path / "missing") is None


def test_auto_on_this_cpu_follows_its_flags_and_says_why() -> None:
    flags = read_cpu_flags()
    has_amx = flags is not None and bool({"amx_bf16", "amx_tile"} & flags)

    precision = resolve_precision("cpu", "auto")

    assert precision.dtype == (torch.bfloat16 if has_amx else torch.float32)
    assert precision.reason.startswith("auto: ")


def test_an_explicit_dtype_says_it_was_set_in_the_config() -> None:
    precision = resolve_precision("cpu", "bfloat16")

    assert precision.dtype_name == "bfloat16"
    assert precision.reason == "set in runtime.dtype"
