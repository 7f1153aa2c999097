"""MLServer 1.7 as a client: its codecs round-trip through every content type we claim, and ``mlserver infer``.

``clients/mlserver_codecs.py`` encodes requests with ``mlserver.codecs`` (np, str, base64, datetime, pd with
str / numeric / pd_json columns, and our json written with MLServer's types), posts them to the real server
and decodes the answers with MLServer's decoders; ``clients/mlserver_infer.py`` runs MLServer's batch command
over a file of requests. Both run in ``.venv-interop/mlserver`` and report what they saw; the checks are here.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.interop.conftest import InteropServer, RunClient

WORDS = ["hello", "grüße", "", "日本語"]
OBJECTS = [{"a": 1, "b": [1, "é"]}, [1, 2], "x", 3.5, True, {"nested": {"deep": [None]}}]


@pytest.fixture(scope="module")
def codecs(interop_server: InteropServer, run_client: RunClient) -> dict[str, Any]:
    """Every codec case, run once against the session's server."""
    seen: dict[str, Any] = run_client("mlserver", "mlserver_codecs.py", interop_server.http_address)
    return seen


@pytest.fixture(scope="module")
def batch(interop_server: InteropServer, run_client: RunClient) -> dict[str, Any]:
    """``mlserver infer`` in each mode over the same input file."""
    seen: dict[str, Any] = run_client(
        "mlserver", "mlserver_infer.py", interop_server.http_address, timeout=400
    )
    return seen


def _ok(case: dict[str, Any]) -> Any:
    """The decoded values of a case that must have worked, failing with what the server or decoder said."""
    assert case["status"] == 200, case.get("error")
    assert "decode_error" not in case, case["decode_error"]
    return case["decoded"]


def test_np_round_trip(codecs: dict[str, Any]) -> None:
    decoded = _ok(codecs["np"])
    for name in ("OUTPUT0", "OUTPUT1"):
        assert decoded[name]["dtype"] == "int32" and decoded[name]["shape"] == [2, 16]
        assert decoded[name]["values"] == codecs["np"]["expected"][name]


def test_np_int8_round_trip(codecs: dict[str, Any]) -> None:
    decoded = _ok(codecs["np_int8"])
    assert decoded == {"dtype": "int8", "values": codecs["np_int8"]["expected"]}


def test_str_round_trip(codecs: dict[str, Any]) -> None:
    assert _ok(codecs["str"]) == WORDS
    assert codecs["str"]["output_parameters"]["OUTPUT0"] == {"content_type": "str"}


def test_base64_round_trip(codecs: dict[str, Any]) -> None:
    assert _ok(codecs["base64"]) == codecs["base64"]["sent"]
    assert codecs["base64"]["output_parameters"]["OUTPUT0"] == {"content_type": "base64"}


def test_base64_bytes_that_are_not_utf8_stop_at_a_list_of_str_model(codecs: dict[str, Any]) -> None:
    # the codec decodes them; simple_identity's forward(List[str]) cannot take them: a 400 that says so
    case = codecs["base64_not_utf8"]
    assert case["status"] == 400
    assert "input 'INPUT0': an element is not valid UTF-8, which TorchScript List[str] needs" in case["error"]


def test_datetime_round_trip(codecs: dict[str, Any]) -> None:
    decoded = _ok(codecs["datetime"])
    assert [iso for _, iso, _ in decoded] == codecs["datetime"]["sent"]
    assert all(kind == "datetime" and same for kind, _, same in decoded)  # equal datetime objects, tz kept
    assert codecs["datetime"]["output_parameters"]["OUTPUT0"] == {"content_type": "datetime"}


def test_pd_round_trip(codecs: dict[str, Any]) -> None:
    case = codecs["pd"]
    assert case["request_parameters"] == {"content_type": "pd"} and case["input_parameters"] == {
        "content_type": "str"
    }
    assert _ok(case) == WORDS


def test_pd_numeric_columns_reach_the_model_as_np_tensors_do(codecs: dict[str, Any]) -> None:
    case = codecs["pd_numeric"]
    assert case["input_datatypes"] == {"input_ids": ["INT64", [3, 1]], "attention_mask": ["INT64", [3, 1]]}
    assert _ok(case) == _ok(case["np"])
    assert case["decoded"]["shape"] == [3, 2] and case["decoded"]["dtype"] == "float32"


def test_pd_json_round_trip(codecs: dict[str, Any]) -> None:
    case = codecs["pd_json"]
    assert case["input_parameters"] == {"content_type": "pd_json"}  # what PandasCodec chose for the column
    assert case["sent_data"][0] == '{"a":1,"b":[1,"é"]}'  # each element one JSON text
    assert _ok(case) == OBJECTS
    assert case["output_parameters"]["OUTPUT0"] == {"content_type": "pd_json"}


def test_pd_json_output_not_asked_for_comes_back_as_its_json_texts(codecs: dict[str, Any]) -> None:
    # outputs carry a content type only when asked (or set by the model): PandasCodec then keeps the texts
    case = codecs["pd_json_unasked"]
    assert case["output_parameters"]["OUTPUT0"] == {}
    assert _ok(case) == codecs["pd_json"]["sent_data"]


def test_json_round_trip_and_read_back_as_pd_json(codecs: dict[str, Any]) -> None:
    case = codecs["json"]
    assert _ok(case) == OBJECTS
    assert case["output_parameters"]["OUTPUT0"] == {"content_type": "json"}
    assert _ok(case["as_pd_json"]) == OBJECTS  # json in, pd_json out, decoded by PandasCodec


def _outputs(line: dict[str, Any]) -> dict[str, list[int]]:
    return {output["name"]: output["data"] for output in line["outputs"]}


@pytest.mark.parametrize("mode", ["single", "micro_batch", "binary"])
def test_mlserver_infer(batch: dict[str, Any], mode: str) -> None:
    run = batch[mode]
    assert run["returncode"] == 0, run["log_tail"]
    *answers, refused = run["lines"]
    assert [line["parameters"]["batch_index"] for line in run["lines"]] == list(range(7))
    for i, line in enumerate(answers):
        a = [value + 100 * i for value in range(16)]
        assert line["id"] == f"req-{i}" and line["model_name"] == "simple"
        assert _outputs(line) == {"OUTPUT0": [x + i for x in a], "OUTPUT1": [x - i for x in a]}
        assert all(output["shape"] == [1, 16] for output in line["outputs"])
    assert (
        refused["error"]["msg"]
        == "unexpected inference input 'NOPE' for model 'simple' (it takes ['INPUT0', 'INPUT1'])"
    )


def test_mlserver_infer_micro_batches_are_one_request_each(batch: dict[str, Any]) -> None:
    # MLServer merges two lines along the batch dimension ([2, 16]) and splits the answer back
    inference_ids = [line["parameters"].get("inference_id") for line in batch["micro_batch"]["lines"][:6]]
    assert inference_ids[0::2] == inference_ids[1::2] and len(set(inference_ids)) == 3
