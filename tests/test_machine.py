import platform
import subprocess

import pytest

from leukoscope import machine

X86_NO_VNNI = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n"
X86_VNNI = "model name\t: Intel Xeon\nflags\t\t: fpu avx2 avx512f avx512_vnni\n"
X86_AMX = "model name\t: Intel Xeon\nflags\t\t: avx2 avx512_vnni avx512_bf16 amx_bf16 amx_int8\n"
ARM_DOTPROD = "processor\t: 0\nFeatures\t: fp asimd asimddp\n"


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [(X86_NO_VNNI, False), (X86_VNNI, True), (ARM_DOTPROD, True), ("", None)],
)
def test_int8_dot_product_from_cpu_flags(
    monkeypatch: pytest.MonkeyPatch, cpuinfo: str, expected: bool | None
) -> None:
    monkeypatch.setattr(machine, "_cpuinfo", lambda: cpuinfo)
    assert machine.has_int8_dot_product() is expected
    assert machine.describe_machine()["int8_dot_product"] is expected


def test_cpu_model_names_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "_cpuinfo", lambda: X86_VNNI)
    assert machine.cpu_model() == "Intel Xeon"


def test_the_instruction_sets_inference_speed_depends_on_are_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(machine, "_cpuinfo", lambda: X86_VNNI)
    flags = machine.describe_machine()["cpu_flags"]
    assert flags["avx512_vnni"] and flags["avx2"] and not flags["amx_int8"]
    monkeypatch.setattr(machine, "_cpuinfo", lambda: "")
    assert "cpu_flags" not in machine.describe_machine()


def test_cpu_cores_are_the_ones_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert machine.cpu_cores() == 3
    assert machine.describe_machine()["cpu_cores"] == 3


@pytest.mark.parametrize(
    ("cpuinfo", "expected"), [(X86_AMX, True), (X86_VNNI, False), (ARM_DOTPROD, False), ("", False)]
)
def test_bf16_matrix_units_are_amx_only(
    monkeypatch: pytest.MonkeyPatch, cpuinfo: str, expected: bool
) -> None:
    monkeypatch.setattr(machine, "_cpuinfo", lambda: cpuinfo)
    assert machine.has_bf16_matrix_units() is expected


def test_describing_the_machine_starts_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # platform.platform() asks `uname -p` once per process; a fork beside OpenVINO's threads
    # crashed a benchmark. Forget its cached answers so that a fork would happen here.
    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError("describe_machine started a process")

    monkeypatch.setattr(platform, "_uname_cache", None)
    monkeypatch.setattr(platform, "_platform_cache", {})
    monkeypatch.setattr(subprocess, "Popen", no_process)
    monkeypatch.setattr(subprocess, "check_output", no_process)
    described = machine.describe_machine()
    assert described["platform"].startswith(f"{platform.system()}-{platform.release()}-")
