"""What a Ray run's report says when its workers could not all embed alike."""

from __future__ import annotations

from mmindex.distributed.ray_engine import mode_notes
from mmindex.distributed.worker import ModelInfo


def info(embed_mode: str, cpu_kind: str) -> ModelInfo:
    return ModelInfo("toy-clip", 64, f"toy-clip in {embed_mode}", embed_mode=embed_mode, cpu_kind=cpu_kind)


def test_workers_that_agree_on_their_own_kind_need_no_note() -> None:
    assert mode_notes([info("bf16 weights on cpu", "amx"), info("bf16 weights on cpu", "amx")], "amx") == []
    assert mode_notes([info("fp32 on cpu", "avx2")] * 2, "avx2") == []


def test_a_worker_that_emulates_the_drivers_bf16_is_named() -> None:
    notes = mode_notes([info("bf16 weights on cpu", "amx"), info("bf16 weights on cpu", "avx2")], "amx")
    assert len(notes) == 1 and "workers on avx2 CPUs embedded in the driver's mode (amx: bf16)" in notes[0]


def test_workers_on_different_devices_are_reported() -> None:
    notes = mode_notes([info("fp16 weights on cuda", "avx2"), info("fp32 on cpu", "avx2")], "avx2")
    assert notes == [
        "the workers embedded in different modes (fp16 weights on cuda, fp32 on cpu): some ran on another "
        "device; pass --device and --precision to make them agree"
    ]
