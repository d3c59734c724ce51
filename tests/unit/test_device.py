"""`dtype = "auto"`: the precision chosen from the hardware, and the CPU flags it reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ml_playground.cpu_probe import CACHE_FILE, bf16_speedup, decode_bf16_speedup
from ml_playground.device import (
    auto_dtype,
    auto_sampling_dtype,
    read_cpu_flags,
    resolve_precision,
    resolve_sampling_precision,
)

# Flags as /proc/cpuinfo lists them, trimmed: a Sapphire Rapids Xeon and an AMD EPYC (Zen 4).
XEON_AMX = frozenset(["avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"])
EPYC_AVX512_BF16 = frozenset(["avx2", "avx512f", "avx512_bf16", "avx512_vnni"])


def test_a_cpu_with_amx_trains_in_bfloat16() -> None:
    dtype, why = auto_dtype("cpu", cpu_flags=XEON_AMX, cuda_bf16=False)

    assert dtype == "bfloat16"
    assert "AMX" in why


@pytest.mark.parametrize(("speedup", "expected"), [(1.4, "bfloat16"), (0.38, "float32")])
def test_a_cpu_with_avx512_bf16_but_no_amx_follows_what_was_measured(
    speedup: float, expected: str
) -> None:
    # AMD EPYC measured ~1.4x faster in bfloat16 here; another avx512_bf16 CPU without AMX 2.6x
    # slower: the flags alone cannot tell.
    dtype, why = auto_dtype(
        "cpu",
        cpu_flags=EPYC_AVX512_BF16,
        cuda_bf16=False,
        cpu_bf16_speedup=lambda: (speedup, "cached in /c/cpu-precision.json"),
    )

    assert dtype == expected
    assert f"measured {speedup:.2f}x the speed of float32" in why
    assert "cached in /c/cpu-precision.json" in why


def test_a_cpu_without_bfloat16_instructions_stays_in_float32_without_measuring() -> None:
    def never() -> tuple[float, str]:
        raise AssertionError("nothing to measure without bfloat16 instructions")

    dtype, why = auto_dtype("cpu", cpu_flags={"avx2"}, cuda_bf16=False, cpu_bf16_speedup=never)

    assert dtype == "float32"
    assert "no bfloat16 instructions" in why


def test_the_measurement_is_cached_per_machine_and_a_damaged_cache_is_measured_again(
    tmp_path: Path,
) -> None:
    first = bf16_speedup(EPYC_AVX512_BF16, tmp_path)
    again = bf16_speedup(EPYC_AVX512_BF16, tmp_path)
    other_machine = bf16_speedup(XEON_AMX, tmp_path)

    assert (first.cached, again.cached, other_machine.cached) == (False, True, False)
    assert again.speedup == first.speedup > 0
    assert len(json.loads((tmp_path / CACHE_FILE).read_text(encoding="utf-8"))) == 2
    (tmp_path / CACHE_FILE).write_text("{not json", encoding="utf-8")
    assert not bf16_speedup(EPYC_AVX512_BF16, tmp_path).cached


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

    if has_amx:
        assert precision.dtype == torch.bfloat16
    elif flags is None or "avx512_bf16" not in flags:
        assert precision.dtype == torch.float32
    else:
        assert "measured" in precision.reason
    assert precision.reason.startswith("auto: ")


def test_an_explicit_dtype_says_it_was_set_in_the_config() -> None:
    precision = resolve_precision("cpu", "bfloat16")

    assert precision.dtype_name == "bfloat16"
    assert precision.reason == "set in runtime.dtype"


# --- the precision sampling decodes in ----------------------------------------------------


@pytest.mark.parametrize("flags", [XEON_AMX, EPYC_AVX512_BF16])
@pytest.mark.parametrize(("speedup", "expected"), [(1.6, "bfloat16"), (0.7, "float32")])
def test_sampling_on_a_cpu_with_bfloat16_decodes_in_what_measured_faster_amx_or_not(
    flags: frozenset[str], speedup: float, expected: str
) -> None:
    # An AMX Xeon decoded the shakespeare model in bfloat16 at 0.7x float32's rate, though
    # it trains in bfloat16 faster: AMX alone does not decide sampling.
    dtype, why = auto_sampling_dtype(flags, lambda: (speedup, "cached in /c/cpu-precision.json"))

    assert dtype == expected
    assert f"measured {speedup:.2f}x the decoding speed of float32" in why


def test_sampling_on_a_cpu_without_bfloat16_stays_in_float32_without_measuring() -> None:
    def never() -> tuple[float, str]:
        raise AssertionError("nothing to measure without bfloat16 instructions")

    assert auto_sampling_dtype({"avx2"}, never)[0] == "float32"
    assert auto_sampling_dtype(None, never)[0] == "float32"


def test_the_decoding_measurement_is_cached_beside_the_training_one(tmp_path: Path) -> None:
    trained = bf16_speedup(EPYC_AVX512_BF16, tmp_path)
    first = decode_bf16_speedup(EPYC_AVX512_BF16, tmp_path)
    again = decode_bf16_speedup(EPYC_AVX512_BF16, tmp_path)

    assert (trained.cached, first.cached, again.cached) == (False, False, True)
    assert again.speedup == first.speedup > 0
    assert len(json.loads((tmp_path / CACHE_FILE).read_text(encoding="utf-8"))) == 2


def test_an_explicit_sampling_dtype_is_kept_as_set() -> None:
    precision = resolve_sampling_precision("cpu", "bfloat16")

    assert precision.dtype == torch.bfloat16
    assert precision.reason == "set in runtime.dtype"


def test_auto_sampling_on_this_cpu_resolves_to_a_measured_or_safe_dtype() -> None:
    precision = resolve_sampling_precision("cpu", "auto")

    assert precision.dtype in (torch.float32, torch.bfloat16)
    assert precision.reason.startswith("auto: ")
