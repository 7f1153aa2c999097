"""``bench.gpu`` (``make bench-gpu``) without a GPU: the ResNet-50 it serves, the repository it writes, the
report it renders. The whole script's dry run (``python -m bench.gpu --dry-run``) starts servers and is not
run here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import gpu
from bench.resnet import resnet50
from v2server._proto import model_config_pb2 as mc
from v2server.repository.config import complete_config, read_raw_config

#: torchvision's resnet50 has exactly this many parameters; ours follows its layout
RESNET50_PARAMETERS = 25_557_032


def test_resnet50_has_resnet50s_size_and_maps_images_to_1000_logits() -> None:
    model = resnet50()
    assert sum(p.numel() for p in model.parameters()) == RESNET50_PARAMETERS
    scripted = torch.jit.script(model)
    with torch.inference_mode():
        logits = scripted(torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (2, 1000)
    assert torch.isfinite(logits).all()


def test_resnet50_weights_come_from_the_seed() -> None:
    first, again, other = resnet50(width=8), resnet50(width=8), resnet50(width=8, seed=1)
    assert torch.equal(first.fc.weight, again.fc.weight)
    assert not torch.equal(first.fc.weight, other.fc.weight)


@pytest.fixture(scope="module")
def gpu_repository(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, gpu.Plan, dict[str, Any]]:
    """The dry run's (narrow) models with the GPU run's KIND_GPU instance groups."""
    plan = dataclasses.replace(gpu.make_plan(dry_run=True), kind="KIND_GPU")
    repository = tmp_path_factory.mktemp("bench-gpu") / "repository"
    return repository, plan, gpu.build_repository(repository, plan)


def test_the_repository_holds_every_model_with_configs_v2server_accepts(
    gpu_repository: tuple[Path, gpu.Plan, dict[str, Any]],
) -> None:
    repository, _, built = gpu_repository
    assert sorted(p.name for p in repository.iterdir()) == sorted([*gpu.GPU_MODELS, "simple"])
    for model_dir in repository.iterdir():
        config = complete_config(read_raw_config(model_dir), model_dir.name, model_dir / "config.pbtxt")
        kinds = {group.kind for group in config.instance_group}
        kind = "KIND_CPU" if model_dir.name == "simple" else "KIND_GPU"
        assert kinds == {mc.ModelInstanceGroup.Kind.Value(kind)}, model_dir.name
        assert config.HasField("dynamic_batching") == (model_dir.name in ("mlp", *_batched())), model_dir.name
        assert (model_dir / "1" / "model.pt").is_file()
    assert built["kind"] == "KIND_GPU"


def _batched() -> list[str]:
    return [batched for _, batched in gpu.BATCHING_MODELS.values()]


@pytest.mark.parametrize("model", ["mlp_nobatch", "heavy_mlp", "resnet50_batching"])
def test_each_model_answers_its_configs_shapes(
    gpu_repository: tuple[Path, gpu.Plan, dict[str, Any]], model: str
) -> None:
    repository, plan, _ = gpu_repository
    config = read_raw_config(repository / model)
    (output,) = config.output
    example = torch.from_numpy(gpu._example(model, plan, batch=3))
    assert list(example.shape[1:]) == list(config.input[0].dims)
    with torch.inference_mode():
        answer = torch.jit.load(str(repository / model / "1" / "model.pt"))(example)
    assert list(answer.shape) == [3, *output.dims]


def test_the_gpu_plan_is_resnet50_and_the_wide_mlp() -> None:
    plan = gpu.make_plan(dry_run=False, cpus=16)
    assert (plan.kind, plan.image, plan.resnet_width) == ("KIND_GPU", 224, 64)
    assert plan.heavy_widths == (1024, 4096, 4096, 4096, 1024)
    assert plan.worker_counts == (1, 2, 4, 8)
    assert gpu.make_plan(dry_run=False, cpus=4).worker_counts == (1, 2)
    assert plan.warmup + plan.seconds < 10


def test_workers_flag_is_read_from_the_help() -> None:
    assert gpu.workers_flag("usage: v2server [--event-loop {auto,uvloop,asyncio}] [--workers N|auto]\n")
    assert gpu.workers_flag("  --workers N|auto      server processes\n")
    assert not gpu.workers_flag("usage: v2server [--model-repository DIR] [--worker-threads N]\n")


def test_stats_deltas_are_averages_per_request() -> None:
    before = {"success": (10, 10_000_000), "queue": (10, 0)}
    after = {"success": (20, 12_000_000), "queue": (20, 500_000), "fail": (0, 0)}
    assert gpu._stats_delta(before, after) == {"success_avg_us": 200.0, "queue_avg_us": 50.0}


def _results() -> dict[str, Any]:
    return {
        "date": "2026-01-02T03:04:05+00:00", "dry_run": False, "budget_seconds": 480,
        "elapsed_seconds": 301.5,
        "machine": {"gpu": "NVIDIA H200", "cpu": "Intel Xeon", "cores": 16, "torch": "2.13.0+cu128",
                    "cuda": "12.8"},
        "steps": {
            "server_time": {"status": "ok", "definition": "p50 - forward", "verdict": "MISSED", "rows": [
                {"model": "mlp", "bare_forward_us": 40.0, "bare_forward_with_copies_us": 70.0,
                 "client_p50_us": 120.0, "client_p99_us": 300.0, "server_time_us": 80.0,
                 "server_stats_minus_forward_us": 35.0, "verdict": "MET"},
                {"model": "heavy_mlp", "bare_forward_us": 90.0, "bare_forward_with_copies_us": 130.0,
                 "client_p50_us": 260.0, "client_p99_us": 400.0, "server_time_us": 170.0,
                 "server_stats_minus_forward_us": 60.0, "verdict": "MISSED"},
                {"model": "resnet50", "note": "error: RuntimeError: out of\nmemory | badly"},
            ], "floor": {"model": "simple (CPU)", "p50_us": 95.0}},
            "batching": {"status": "ok", "clients": 64, "rows": [
                {"model": "heavy_mlp", "without_rate": 4000.0, "with_rate": 12000.0, "gain": 3.0,
                 "without_p50_us": 16000.0, "with_p50_us": 5300.0},
                {"model": "resnet50", "note": "skipped: budget (12 s left)"},
            ]},
            "pinned_copy": {"status": "ok", "note": "in-process", "batches": {
                "1": {"pageable_gb_s": 5.0, "pinned_gb_s": 12.0, "staged_gb_s": 9.0},
                "32": {"pageable_gb_s": 10.0, "pinned_gb_s": 25.0, "staged_gb_s": 8.0},
            }},
            "gpu_memory": {"status": "ok", "samples": 40, "source": "pynvml", "peak_server_bytes": 3 * 2**30,
                           "peak_device_bytes": 4 * 2**30, "baseline_device_bytes": 2**29},
            "workers": {"status": "ok", "clients": 64, "verdict": "MET", "client_processes": 32,
                        "server_cpus": "0,1,2,3,4,5,6,7", "client_cpus": "8,9,10,11,12,13,14,15", "rows": [
                            {"workers": 1, "rate": 3000.0, "p50_us": 20000.0, "efficiency": 1.0},
                            {"workers": 2, "rate": 5700.0, "p50_us": 11000.0, "efficiency": 0.95},
                        ]},
            "metrics": {"status": "error", "error": "ConnectionRefusedError: [Errno 111]\nrefused"},
        },
    }


def test_the_report_renders_every_part_from_a_results_dict() -> None:
    text = gpu.render_markdown(_results())
    assert "NVIDIA H200" in text and "2026-01-02" in text and "Dry run" not in text
    summary = [line for line in text.splitlines() if line.startswith("| (")]
    assert [line[2:5] for line in summary] == ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)"]
    assert "mlp 80 us, heavy_mlp 170 us, resnet50 -" in summary[0]
    assert summary[0].endswith("| MISSED |")
    assert "heavy_mlp x3.00" in summary[1] and "resnet50 -" in summary[1]
    assert "batch 32: pageable 10.00, pinned 25.00, staged 8.00 GB/s" in summary[2]
    assert "server 3.00 GiB" in summary[3] and "pynvml" in summary[3]
    assert "2: 5,700/s (0.95)" in summary[4] and summary[4].endswith("| MET |")
    assert "error: ConnectionRefusedError" in summary[5]
    assert "| heavy_mlp | 90 us | 130 us | 260 us | 400 us | 170 us | 60 us | MISSED |" in text
    assert "| heavy_mlp | 4,000/s | 12,000/s | x3.00 | 16,000 us | 5,300 us |" in text
    assert "| 2 | 5,700/s | 11,000 us | 0.95 |" in text
    assert "- metrics: error: ConnectionRefusedError" in text
    # every table row stays one row of its table, whatever the errors said
    for table in text.split("\n\n"):
        rows = [line for line in table.splitlines() if line.startswith("|")]
        assert len({line.replace("\\|", "").count("|") for line in rows}) <= 1, table


def test_the_report_of_a_run_cut_short_says_what_is_missing() -> None:
    text = gpu.render_markdown({"dry_run": True, "steps": {
        "preflight": {"status": "ok"},
        "server_time": {"status": "skipped", "note": "budget: 3 s left, needs ~12 s"},
    }})
    assert "**Dry run**" in text
    assert "| (a) server time over the bare forward, 1 client | skipped: budget: 3 s left" in text
    assert "| (b) dynamic batching gain, 64 clients | not run |" in text
    assert "- server_time: skipped: budget" in text
