"""``bench.breakdown``'s ladder (its arithmetic and labels), its two rung servers answering real requests on
loopback, and ``bench.profile``'s collapsed-stack aggregation.

Nothing here judges a timing.
"""

from __future__ import annotations

import http.client
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import orjson
import pytest

from bench.breakdown import LABELS, RUNGS, ladder, markdown, proto_answer, v2_answer
from bench.loadgen_grpc import METHOD
from bench.measure import Point
from bench.processes import free_port, started, wait_tcp
from bench.profile import collapsed
from bench.scenarios import SCENARIOS
from v2server._proto import grpc_service_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
SIMPLE = SCENARIOS["simple"]


# -- the ladder ----------------------------------------------------------------------------------------------


def test_each_step_is_the_difference_to_the_rung_below_labelled_by_what_it_adds() -> None:
    rungs = [("grpc-echo", 50.0), ("grpc-proto", 72.5), ("v2server", 260.0)]
    steps = ladder(rungs, core_us=150.0, forward_us=9.25)
    assert [s.rung for s in steps] == ["grpc-echo", "grpc-proto", "v2server"]
    assert [s.cpu_us for s in steps] == [50.0, 72.5, 260.0]
    assert [s.delta_us for s in steps] == [50.0, 22.5, 187.5]  # the first rung: all of it
    assert steps[0].label == "transport (echo)"
    assert steps[1].label == "protobuf/JSON codec (what any V2 server pays)"
    assert steps[2].label == (
        "v2server's core and handler (of which in-process core: 150 us, model forward: 9.2 us)"
    )
    assert sum(s.delta_us for s in steps if s.delta_us is not None) == pytest.approx(260.0)


def test_a_missing_rung_leaves_its_own_and_the_next_difference_unknown() -> None:
    steps = ladder([("tornado-echo", 40.0), ("tornado-v2", None), ("v2server", 300.0)], None, None)
    assert [s.delta_us for s in steps] == [40.0, None, None]
    assert steps[2].label.endswith("(of which in-process core: n/a us, model forward: n/a us)")
    with pytest.raises(ValueError):
        ladder([("grpc-echo", 1.0)], None, None)


def test_every_protocol_has_a_rung_per_label() -> None:
    assert all(len(rungs) == len(LABELS) and rungs[-1] == "v2server" for rungs in RUNGS.values())


def test_the_table_shows_each_rung_and_what_it_adds() -> None:
    steps = ladder([("grpc-echo", 50.0), ("grpc-proto", 72.5), ("v2server", 1260.0)], 150.0, 9.25)
    points = {s.rung: Point(s.rung, "grpc", "simple", 16, rate=1000.0 + i, cpu_us=s.cpu_us or 0.0)
              for i, s in enumerate(steps)}
    points["grpc-proto"].note = "errors during the run: [{'UNAVAILABLE': 1}]"
    text = markdown("simple", "grpc", 16, steps, points, {"core_us": 150.0, "protobuf_us": 12.0}, 9.25)
    rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith("| 1 | grpc-echo | 50.0 | 1,000 | 50.0 | transport (echo) |")
    assert rows[1].startswith("| 2 | grpc-proto | 72.5 | 1,001 | +22.5 | protobuf/JSON codec")
    assert rows[2].startswith("| 3 | v2server | 1,260 | 1,002 | +1,188 | v2server's core and handler")
    assert "core 150 us per call; protobuf alone, as grpc-proto does it: 12.0 us" in text
    assert "- grpc-proto: errors during the run" in text


# -- the rung servers ----------------------------------------------------------------------------------------


@pytest.fixture(params=["grpc-proto", "tornado-v2"])
def rung(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.breakdown", "serve", request.param, "--port", str(port)]
    with started(argv, tmp_path / "server.log", cwd=ROOT) as process:
        wait_tcp(port, process, 60)
        yield request.param, port


def _raw_inputs() -> list[np.ndarray]:
    return [tensor.array for tensor in SIMPLE.inputs]


def test_a_rung_server_answers_its_inputs_as_outputs(rung: tuple[str, int]) -> None:
    name, port = rung
    inputs = _raw_inputs()
    if name == "grpc-proto":
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            raw = channel.unary_unary(METHOD)(SIMPLE.body("grpc"), timeout=60)
        response = pb.ModelInferResponse.FromString(raw)
        assert response.model_name == "simple"
        assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
            ("OUTPUT0", "INT32", [1, 16]), ("OUTPUT1", "INT32", [1, 16])
        ]
        assert list(response.raw_output_contents) == [array.tobytes() for array in inputs]
        return
    for protocol in ("rest-binary", "rest-json"):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", SIMPLE.path, SIMPLE.body(protocol), SIMPLE.headers(protocol))
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status == 200, body
        length = response.getheader("Inference-Header-Content-Length")
        assert (length is not None) == (protocol == "rest-binary")
        header = orjson.loads(body[: int(length)] if length else body)
        assert header["model_name"] == "simple"
        assert [(o["name"], o["datatype"], o["shape"]) for o in header["outputs"]] == [
            ("OUTPUT0", "INT32", [1, 16]), ("OUTPUT1", "INT32", [1, 16])
        ]
        if length:
            assert [o["parameters"]["binary_data_size"] for o in header["outputs"]] == [64, 64]
            assert body[int(length):] == b"".join(array.tobytes() for array in inputs)
        else:
            assert [o["data"] for o in header["outputs"]] == [array.ravel().tolist() for array in inputs]


def test_the_codecs_keep_datatype_shape_and_values_in_process() -> None:
    request = pb.ModelInferRequest.FromString(SCENARIOS["identity-1mib"].body("grpc"))
    response = proto_answer(request)
    assert response.outputs[0].name == "OUTPUT0" and list(response.outputs[0].shape) == [1 << 18]
    assert response.raw_output_contents[0] == request.raw_input_contents[0]
    tensor = {"name": "X", "datatype": "FP32", "shape": [2, 2], "data": [1, 2.5, 3, 4]}
    body = orjson.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}})
    answer, length = v2_answer("m", body, None)  # every output in binary when asked for all
    assert length is not None
    assert orjson.loads(answer[:length])["outputs"][0]["parameters"] == {"binary_data_size": 16}
    assert np.frombuffer(answer[length:], np.float32).tolist() == [1, 2.5, 3, 4]


# -- bench.profile: collapsed stacks -------------------------------------------------------------------------


def test_collapsed_stacks_add_up_self_and_inclusive_samples() -> None:
    lines = [
        "main (a.py:1);loop (a.py:5);handler (b.py:3) 6\n",
        "main (a.py:1);loop (a.py:5);handler (b.py:3);encode (c.py:9) 3\n",
        "main (a.py:1);loop (a.py:5) 1\n",
        "main (a.py:1);walk (d.py:2);walk (d.py:2);walk (d.py:2) 2\n",  # recursion counts once per stack
        "not a stack line\n",
        "\n",
    ]
    result = collapsed(lines)
    assert result.total == 12
    assert result.own == {"handler (b.py:3)": 6, "encode (c.py:9)": 3, "loop (a.py:5)": 1, "walk (d.py:2)": 2}
    assert result.inclusive["main (a.py:1)"] == 12
    assert result.inclusive["loop (a.py:5)"] == 10
    assert result.inclusive["handler (b.py:3)"] == 9
    assert result.inclusive["walk (d.py:2)"] == 2
    text = result.table(2)
    assert "50.0 %        6  handler (b.py:3)" in text
    assert "the 1 on every sample left out, from main (a.py:1) to main (a.py:1)" in text  # the trunk
    assert "83.3 %       10  loop (a.py:5)" in text and "100.0 %" not in text
