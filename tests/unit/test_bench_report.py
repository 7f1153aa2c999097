"""``bench.report``: CPU x echo, the Targets block (MET / MISSED / info) and the batching figures, computed on
hand-made points; and rebuilding the table from a results.json written before CPU accounting."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from google.protobuf import json_format

from bench import report
from bench.measure import Point
from bench.models import HEAVY_WIDTHS, build_repository
from v2server.repository.config import complete_config, read_raw_config


def _p(server: str, protocol: str, scenario: str, concurrency: int, rate: float, cpu_us: float = 0.0,
       series: str = "") -> Point:
    return Point(server, protocol, scenario, concurrency, rate=rate, p50_us=1000.0, p99_us=2000.0,
                 cpu_us=cpu_us, series=series)


POINTS = [
    # simple: grpc 600/500 = 1.2 (<= 1.3), rest-binary 700/500 = 1.4 (> 1.3), rest-json 750/500 = 1.5 (<= 1.6)
    _p("v2server", "grpc", "simple", 16, 1000, 600), _p("grpc-echo", "grpc", "simple", 16, 2000, 500),
    _p("v2server", "rest-binary", "simple", 16, 1000, 700), _p("tornado-echo", "rest-binary", "simple", 16, 2000, 500),
    _p("v2server", "rest-json", "simple", 16, 1000, 750), _p("tornado-echo", "rest-json", "simple", 16, 2000, 500),
    # identity-1mib: grpc 1100/1000 = 1.1 (<= 1.15); rest-json has no target
    _p("v2server", "grpc", "identity-1mib", 16, 200, 1100), _p("grpc-echo", "grpc", "identity-1mib", 16, 300, 1000),
    _p("v2server", "rest-json", "identity-1mib", 16, 20, 40000),
    _p("tornado-echo", "rest-json", "identity-1mib", 16, 200, 4000),
    # mlp-b1 in the grid: a ratio, no target
    _p("v2server", "grpc", "mlp-b1", 16, 900, 800), _p("grpc-echo", "grpc", "mlp-b1", 16, 2000, 400),
    # a v2server point whose echo has no CPU figure (as in old results): no CPU x echo
    _p("v2server", "grpc", "mlp-b8", 16, 900, 800), _p("grpc-echo", "grpc", "mlp-b8", 16, 2000, 0),
    # the batching pairs (their own series): heavy gains 3.5x over gRPC, 2.5x over REST binary
    _p("v2server", "grpc", "heavy-b1", 64, 300, 3000, "pair"),
    _p("v2server", "grpc", "heavy-b1-batching", 64, 1050, 900, "pair"),
    _p("v2server", "rest-binary", "heavy-b1", 64, 400, 3000, "pair"),
    _p("v2server", "rest-binary", "heavy-b1-batching", 64, 1000, 900, "pair"),
    # mlp at concurrency 1: the batcher adds 20 us over gRPC, 50 us over REST binary
    _p("v2server", "grpc", "mlp-b1", 1, 1000, 400, "pair"), _p("v2server", "grpc", "mlp-b1-batching", 1, 950, 420, "pair"),
    _p("v2server", "rest-binary", "mlp-b1", 1, 1000, 400, "pair"),
    _p("v2server", "rest-binary", "mlp-b1-batching", 1, 900, 450, "pair"),
]


def _found() -> dict[tuple[str, str, str, int], report.Target]:
    return {(t.kind, t.scenario, t.protocol, t.concurrency): t for t in report.targets(POINTS)}


def test_cpu_x_echo_against_the_targets() -> None:
    found = _found()
    expected = {
        ("simple", "grpc"): (1.2, "MET"), ("simple", "rest-binary"): (1.4, "MISSED"),
        ("simple", "rest-json"): (1.5, "MET"), ("identity-1mib", "grpc"): (1.1, "MET"),
        ("identity-1mib", "rest-json"): (10.0, "info"), ("mlp-b1", "grpc"): (2.0, "info"),
    }
    for (scenario, protocol), (value, verdict) in expected.items():
        target = found[("cpu_x_echo", scenario, protocol, 16)]
        assert target.value == pytest.approx(value) and target.verdict == verdict, target
    assert found[("cpu_x_echo", "simple", "rest-json", 16)].target == 1.6
    assert found[("cpu_x_echo", "identity-1mib", "rest-json", 16)].target is None
    assert "forward" in found[("cpu_x_echo", "mlp-b1", "grpc", 16)].why
    assert ("cpu_x_echo", "mlp-b8", "grpc", 16) not in found  # the echo has no CPU figure
    assert not any(t.kind == "cpu_x_echo" and t.series for t in found.values())  # pairs have no echo


def test_batching_gain_and_the_batchers_own_cpu() -> None:
    found = _found()
    heavy_grpc = found[("batching_gain", "heavy-b1-batching", "grpc", 64)]
    assert heavy_grpc.value == pytest.approx(3.5) and heavy_grpc.target == 3.0 and heavy_grpc.verdict == "MET"
    heavy_rest = found[("batching_gain", "heavy-b1-batching", "rest-binary", 64)]
    assert heavy_rest.value == pytest.approx(2.5) and heavy_rest.verdict == "MISSED"
    mlp_gain = found[("batching_gain", "mlp-b1-batching", "grpc", 1)]
    assert mlp_gain.value == pytest.approx(0.95) and mlp_gain.verdict == "info"
    grpc_cost = found[("batcher_cpu_us", "mlp-b1-batching", "grpc", 1)]
    assert grpc_cost.value == pytest.approx(20.0) and grpc_cost.target == 30.0 and grpc_cost.verdict == "MET"
    rest_cost = found[("batcher_cpu_us", "mlp-b1-batching", "rest-binary", 1)]
    assert rest_cost.value == pytest.approx(50.0) and rest_cost.verdict == "MISSED"


def test_the_table_shows_the_cpu_columns_and_the_targets_block() -> None:
    text = report.table(POINTS, [], {"heavy-b1": 0.002, "heavy-b64": 0.016})
    header = text.splitlines()[0]
    assert "| CPU us/inf |" in header and "| CPU x echo |" in header
    assert "| simple | grpc | 16 | v2server | 1,000 | 1.00 | 2.00 | 600 |" in text
    assert "| simple | grpc | 16 | grpc-echo | 2,000 | 1.00 | 2.00 | 500 |" in text
    assert "| 1.20 |" in text  # v2server's CPU x echo cell
    assert "| heavy-b1 (pair) | grpc | 64 | v2server |" in text
    targets = text.split("Targets", 1)[1]
    assert "- simple grpc c=16: 1.20 (target <= 1.3) MET" in targets
    assert "- simple rest-binary c=16: 1.40 (target <= 1.3) MISSED" in targets
    assert "- heavy-b1-batching (pair) grpc c=64: 3.50x (target >= 3.0x) MET" in targets
    assert "- mlp-b1-batching (pair) grpc c=1: 20.0 us (target <= 30.0 us) MET" in targets
    assert "heavy_mlp: batch 1 2.00 ms, batch 64 16.00 ms (250 us a row, 8.0x less than at batch 1)" in text


def test_results_written_before_cpu_accounting_rebuild_with_dashes(tmp_path: Path) -> None:
    old_point = {"server": "v2server", "protocol": "grpc", "scenario": "simple", "concurrency": 16, "rate": 1947.0,
                 "p50_us": 8170.0, "p99_us": 10280.0, "rss_bytes": 260 << 20, "note": "",
                 "runs": [{"requests": 5841, "rate": 1947.0, "p50_us": 8170.0, "p99_us": 10280.0, "errors": {}}]}
    echo = {**old_point, "server": "grpc-echo", "rate": 3245.0, "rss_bytes": 55 << 20}
    results = tmp_path / "results.json"
    results.write_bytes(orjson.dumps({
        "date": "2026-11-23T00:00:00+00:00", "machine": {"cpu": "AMD EPYC"},
        "settings": {"servers": "v2server,grpc-echo"}, "forward_seconds": {"simple": 1e-5},
        "points": [old_point, echo], "ratios": [],
    }))
    assert report.main([str(results)]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| simple | grpc | 16 | v2server | 1,947 | 8.17 | 10.28 | - | 260 |  |  | 60% |  |  |" in table
    assert "| simple | grpc | 16 | grpc-echo | 3,245 | 8.17 | 10.28 | - | 55 |" in table
    assert "Targets: nothing to judge" in table


def test_new_results_round_trip_with_their_cpu_figures(tmp_path: Path) -> None:
    meta = {"machine": {"cpu": "test"}, "settings": {"servers": "v2server,grpc-echo,tornado-echo"},
            "forward_seconds": {}}
    report.write_json(tmp_path / "results.json", POINTS, [], meta)
    data = orjson.loads((tmp_path / "results.json").read_bytes())
    assert data["points"][0]["cpu_us"] == 600
    assert {"kind": "cpu_x_echo", "scenario": "simple", "protocol": "grpc", "concurrency": 16, "series": "",
            "value": pytest.approx(1.2), "target": 1.3, "verdict": "MET", "why": ""} in data["targets"]
    assert any(r.get("series") == "pair" for r in data["ratios"])
    assert any(r.get("cpu_x_echo") == pytest.approx(1.2) for r in data["ratios"])
    assert report.main([str(tmp_path / "results.json")]) == 0
    assert "- simple grpc c=16: 1.20 (target <= 1.3) MET" in (tmp_path / "table.md").read_text()


def test_the_heavy_models_share_one_file_and_only_one_batches(tmp_path: Path) -> None:
    import torch

    repository = build_repository(tmp_path / "repo")
    plain, batched = repository / "heavy_mlp", repository / "heavy_mlp_batching"
    assert (plain / "1" / "model.pt").read_bytes() == (batched / "1" / "model.pt").read_bytes()
    configs = {}
    for model in (plain, batched):
        config = complete_config(read_raw_config(model), model.name, model)
        configs[model.name] = json_format.MessageToDict(config)
        assert config.max_batch_size == 64
        assert list(config.input[0].dims) == [HEAVY_WIDTHS[0]] and list(config.output[0].dims) == [HEAVY_WIDTHS[-1]]
    assert "dynamicBatching" not in configs["heavy_mlp"]
    assert configs["heavy_mlp_batching"]["dynamicBatching"]["preferredBatchSize"] == [16, 32, 64]
    module = torch.jit.load(str(plain / "1" / "model.pt"))
    with torch.inference_mode():
        assert module(torch.zeros(3, HEAVY_WIDTHS[0])).shape == (3, HEAVY_WIDTHS[-1])
