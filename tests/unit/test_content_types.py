"""MLServer content-type codecs: JSON data <-> element values, one registered class per content type."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
import torch

from v2server._proto import grpc_service_pb2 as pb
from v2server.datatypes import DATATYPES
from v2server.errors import InvalidRequest
from v2server.rest_api import content_types
from v2server.rest_api.content_types import (
    Codec,
    NumpyCodec,
    SimpleCodec,
    check_columns,
    codec_names,
    get_codec,
)


def _objects(*items: bytes) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = list(items)
    return array


def _bf16_bits(values: list[float]) -> list[int]:
    """The bfloat16 bit patterns torch rounds float32 values to (round to nearest even)."""
    as_bf16 = torch.tensor(values, dtype=torch.float32).to(torch.bfloat16)
    return as_bf16.view(torch.int16).numpy().view(np.uint16).tolist()


# --- registry ----------------------------------------------------------------------------------------------


def test_the_mlserver_content_types_are_registered() -> None:
    assert codec_names() == ["base64", "datetime", "json", "np", "pd", "pd_json", "str"]
    assert all(get_codec(name, "input 'A'").name == name for name in codec_names())


def test_an_unknown_content_type_names_itself_the_place_and_the_known_ones() -> None:
    with pytest.raises(InvalidRequest) as caught:
        get_codec("xyz", "input 'A'")
    assert caught.value.message == (
        "unknown content_type 'xyz' on input 'A'; known: base64, datetime, json, np, pd, pd_json, str"
    )


def test_adding_a_content_type_is_adding_a_class(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(content_types, "_CODECS", dict(content_types._CODECS))

    class Shout(Codec):
        name = "shout"
        bytes_only = True

        def decode(self, data: list[Any], datatype: str, input_name: str) -> list[bytes]:
            return [item.upper().encode() for item in data]

        def encode(self, values: np.ndarray, datatype: str, output_name: str) -> list[Any]:
            return [item.decode() for item in values]

    assert "shout" in codec_names()
    assert get_codec("shout", "input 'A'").decode(["hi"], "BYTES", "A") == [b"HI"]


@pytest.mark.parametrize(
    ("name", "bytes_only", "request_only"),
    [
        ("np", False, False),
        ("pd", False, True),
        ("str", True, False),
        ("base64", True, False),
        ("datetime", True, False),
        ("json", True, False),
    ],
)
def test_where_each_codec_applies(name: str, bytes_only: bool, request_only: bool) -> None:
    codec = get_codec(name, "the request")
    assert codec.supports("BYTES")
    assert codec.supports("FP32") is not bytes_only
    assert codec.request_only is request_only


# --- np: the plain V2 mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("BOOL", [True, False], np.array([True, False])),
        ("UINT8", [0, 255], np.array([0, 255], dtype=np.uint8)),
        ("INT8", [-128, 127], np.array([-128, 127], dtype=np.int8)),
        ("INT64", [-(2**63), 2**63 - 1], np.array([-(2**63), 2**63 - 1], dtype=np.int64)),
        ("UINT64", [2**64 - 1, 5], np.array([2**64 - 1, 5], dtype=np.uint64)),
        ("FP32", [1, 2.5], np.array([1.0, 2.5], dtype=np.float32)),
        ("FP16", [[0.1, 65504]], np.array([0.1, 65504], dtype=np.float16)),
        ("FP64", [[1e300], [-2]], np.array([1e300, -2.0])),
    ],
)
def test_np_decodes_numbers_with_numpy(datatype: str, data: list[Any], expected: np.ndarray) -> None:
    values = get_codec("np", "input 'A'").decode(data, datatype, "A")
    assert isinstance(values, np.ndarray)
    assert values.dtype == expected.dtype
    assert values.tobytes() == expected.tobytes()


def test_np_decodes_bf16_to_round_to_nearest_even_bits() -> None:
    # 1 + 2**-8 is a tie (rounds down to even), 1 + 3 * 2**-8 a tie that rounds up, 1.00390625 + eps rounds up
    numbers = [1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1.0039063, -2.5, 3.140625, 1e-40, 3.3e38]
    values = get_codec("np", "input 'A'").decode(numbers, "BF16", "A")
    assert isinstance(values, np.ndarray)
    assert values.dtype == np.uint16
    assert values.tolist() == _bf16_bits(numbers)


@pytest.mark.parametrize(
    ("datatype", "data", "message"),
    [
        ("INT32", [1, "2"], "input 'A': data must be integers for INT32, got string \"2\""),
        ("INT32", [1, 1.5], "input 'A': data must be integers for INT32, got number 1.5"),
        ("INT32", [1, True], "input 'A': data must be integers for INT32, got boolean true"),
        ("INT32", [1.0, 3.5], "input 'A': data must be integers for INT32, got number 3.5"),
        ("INT32", [1.0, True], "input 'A': data must be integers for INT32, got boolean true"),
        ("INT8", [1.0, 300.0], "input 'A': value 300 is out of range for INT8"),
        ("UINT8", [-1.0], "input 'A': value -1 is out of range for UINT8"),
        ("INT8", [1, -129.0], "input 'A': value -129 is out of range for INT8"),
        ("INT64", [2.0**53 + 2], "input 'A': data must be integers for INT64, got number 9007199254740994.0"),
        (
            "UINT64",
            [1, 2.0**64],
            "input 'A': data must be integers for UINT64, got number 1.8446744073709552e+19",
        ),
        ("INT32", [float("nan")], "input 'A': data must be integers for INT32, got number nan"),
        ("INT32", [1, float("-inf")], "input 'A': data must be integers for INT32, got number -inf"),
        ("FP32", [False], "input 'A': data must be numbers for FP32, got boolean false"),
        ("FP32", [None], "input 'A': data must be numbers for FP32, got null null"),
        ("BOOL", [True, 1], "input 'A': data must be booleans for BOOL, got integer 1"),
        ("BYTES", ["a", 1], "input 'A': data must be strings for BYTES, got integer 1"),
        ("INT8", [300], "input 'A': value 300 is out of range for INT8"),
        ("UINT8", [-1], "input 'A': value -1 is out of range for UINT8"),
        ("INT64", [2**63], "input 'A': value 9223372036854775808 is out of range for INT64"),
        ("UINT64", [-1], "input 'A': value -1 is out of range for UINT64"),
        ("UINT64", [2**64], "input 'A': value 18446744073709551616 is out of range for UINT64"),
        ("FP16", [65520.0], "input 'A': a value is out of range for FP16"),
        ("FP32", [1e39], "input 'A': a value is out of range for FP32"),
        ("BF16", [3.4e38], "input 'A': a value is out of range for BF16"),
        ("FP32", [[1, 2], [3]], "input 'A': nested data must be a rectangular array"),
        ("FP32", [[[1, 2]], [3]], "input 'A': nested data must be a rectangular array"),
        ("FP32", {"a": 1}, "input 'A': data must be a JSON array"),
    ],
)
def test_np_refuses_what_numpy_would_coerce(datatype: str, data: Any, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        get_codec("np", "input 'A'").decode(data, datatype, "A")
    assert caught.value.message == message


@pytest.mark.parametrize(
    ("datatype", "data", "expected"),
    [
        ("INT32", [0.0, 1.0, -0.0, -7.0], [0, 1, 0, -7]),  # open-inference-openapi's INT32
        ("INT8", [[127.0, -128.0], [1, 2.0]], [127, -128, 1, 2]),  # nested, ints and floats mixed
        ("UINT8", [255.0, 0.0], [255, 0]),
        ("INT64", [2**62 + 1, 2.0**53, -(2.0**53)], [2**62 + 1, 2**53, -(2**53)]),  # the int stays exact
        ("UINT64", [2**64 - 1, 3.0], [2**64 - 1, 3]),  # an int beyond int64 beside a float
    ],
)
def test_np_takes_integral_floats_for_integer_datatypes(
    datatype: str, data: list[Any], expected: list[int]
) -> None:
    values = get_codec("np", "input 'A'").decode(data, datatype, "A")
    assert isinstance(values, np.ndarray)
    assert values.dtype == DATATYPES[datatype].numpy
    assert values.tolist() == expected


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        ([2.0], None),
        ([2.5], "input 'A': data must be integers for INT32, got number 2.5"),
        ([3e9], "input 'A': value 3000000000 is out of range for INT32"),
        ([True], "input 'A': data must be integers for INT32, got boolean true"),
    ],
)
@pytest.mark.parametrize("head", [0.0, 1], ids=["floats", "ints-then-floats"])
def test_integral_floats_in_a_large_array_are_checked_piece_by_piece(
    head: float, tail: list[Any], message: str | None
) -> None:
    count = 3 * content_types.CHUNK_ELEMENTS + 5  # several bounded pieces, the last one short
    data = [head] * (count - 1) + tail
    codec = get_codec("np", "input 'A'")
    if message is None:
        values = codec.decode(data, "INT32", "A")
        assert isinstance(values, np.ndarray) and values.dtype == np.int32
        assert values[:-1].tolist() == [int(head)] * (count - 1) and values[-1] == 2
        return
    with pytest.raises(InvalidRequest) as caught:
        codec.decode(data, "INT32", "A")
    assert caught.value.message == message


def test_all_int_data_never_looks_for_floats(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any) -> None:
        raise AssertionError("the integral-float check ran for all-int data")

    monkeypatch.setattr(content_types, "_integral_floats", fail)
    values = get_codec("np", "input 'A'").decode([1, 2, 3], "INT32", "A")
    assert isinstance(values, np.ndarray) and values.tolist() == [1, 2, 3]


def test_np_decode_pieces_takes_integral_floats() -> None:
    pieces = [[1.0, 2], [3.0]]
    assert NumpyCodec().decode_pieces(iter(pieces), 3, "INT16", "A").tolist() == [1, 2, 3]
    with pytest.raises(InvalidRequest) as caught:
        NumpyCodec().decode_pieces(iter([[1.0], [3.5]]), 2, "INT16", "A")
    assert caught.value.message == "input 'A': data must be integers for INT16, got number 3.5"


def test_np_flattens_nested_data_in_row_major_order() -> None:
    values = get_codec("np", "input 'A'").decode([[[1, 2], [3, 4]], [[5, 6], [7, 8]]], "INT16", "A")
    assert isinstance(values, np.ndarray)
    assert values.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]


def test_np_encodes_bf16_bits_as_float32_values() -> None:
    bits = np.array(_bf16_bits([1.5, -0.25, 3.140625]), dtype=np.uint16)
    encoded = get_codec("np", "output 'O'").encode(bits, "BF16", "O")
    assert isinstance(encoded, np.ndarray)
    assert encoded.dtype == np.float32
    assert encoded.tolist() == [1.5, -0.25, 3.140625]


def test_np_encodes_bytes_as_utf8_strings_and_refuses_other_bytes() -> None:
    codec = get_codec("np", "output 'O'")
    assert codec.encode(_objects("é".encode(), b""), "BYTES", "O") == ["é", ""]
    with pytest.raises(
        InvalidRequest, match=r"output 'O': BYTES data is not valid UTF-8 .* parameters\.binary_data = true"
    ):
        codec.encode(_objects(b"\xff"), "BYTES", "O")


def test_np_decode_nested_keeps_the_nesting_as_the_shape() -> None:
    codec = NumpyCodec()
    assert codec.decode_nested([[1, 2, 3], [4, 5, 6]], "INT8", "A").shape == (2, 3)
    assert codec.decode_nested([[[]], [[]]], "FP32", "A").shape == (2, 1, 0)
    text = codec.decode_nested([["a"], ["b"]], "BYTES", "A")
    assert text.shape == (2, 1) and text.tolist() == [[b"a"], [b"b"]]


# --- the simple styles' mapping ----------------------------------------------------------------------------


def test_simple_is_np_but_takes_any_json_value_as_a_bytes_element() -> None:
    codec = SimpleCodec()
    assert codec.name == "" and "" not in codec_names()  # no content_type selects it
    values = codec.decode_nested([["é", {"value": 10}], [3, True]], "BYTES", "d")
    assert values.tolist() == [["é".encode(), b'{"value":10}'], [b"3", b"true"]]
    with pytest.raises(InvalidRequest) as caught:
        codec.decode_nested(["a", None], "BYTES", "d")
    assert caught.value.message == "input 'd': data must be strings or JSON values for BYTES, got null null"


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        ("INT8", [300]),
        ("INT32", [True]),
        ("FP16", [65520.0]),
        ("BF16", [3.4e38]),
        ("BOOL", [1]),
        ("FP32", ["1"]),
        ("INT32", [1.5]),
        ("INT8", [300.0]),
        ("INT64", [2.0**60]),
    ],
)
def test_simple_refuses_numbers_exactly_as_np_does(datatype: str, data: list[Any]) -> None:
    messages = []
    for codec in (get_codec("np", "input 'A'"), SimpleCodec()):
        with pytest.raises(InvalidRequest) as caught:
            codec.decode(data, datatype, "A")
        messages.append(caught.value.message)
    assert messages[0] == messages[1]


def test_simple_takes_integral_floats_as_np_does() -> None:
    values = SimpleCodec().decode_nested([[1.0, 2.0], [-0.0, 4]], "INT32", "x")
    assert values.shape == (2, 2) and values.dtype == np.int32
    assert values.tolist() == [[1, 2], [0, 4]]


# --- str, base64, datetime, json ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["str", "base64", "datetime", "json", "pd_json"])
def test_bytes_codecs_refuse_other_datatypes(name: str) -> None:
    codec = get_codec(name, "input 'A'")
    with pytest.raises(InvalidRequest) as caught:
        codec.decode([1.0], "FP32", "A")
    assert caught.value.message == f"input 'A': content_type '{name}' needs datatype BYTES, got FP32"
    with pytest.raises(InvalidRequest, match=f"output 'O': content_type '{name}' needs datatype BYTES"):
        codec.encode(np.zeros(1, dtype=np.float32), "FP32", "O")


def test_str_round_trip() -> None:
    codec = get_codec("str", "input 'A'")
    assert codec.decode([["héllo", "日本"]], "BYTES", "A") == ["héllo".encode(), "日本".encode()]
    assert codec.encode(_objects("日本".encode()), "BYTES", "O") == ["日本"]
    with pytest.raises(InvalidRequest, match=r"input 'A': data must be strings for BYTES, got integer 1"):
        codec.decode([1], "BYTES", "A")


def test_base64_round_trip_carries_any_bytes() -> None:
    codec = get_codec("base64", "input 'A'")
    blob = bytes(range(256))
    encoded = base64.b64encode(blob).decode()
    assert codec.decode([encoded, ""], "BYTES", "A") == [blob, b""]
    assert codec.encode(_objects(blob, b"\xff"), "BYTES", "O") == [encoded, "/w=="]


@pytest.mark.parametrize("bad", ["not base64!", "YWJ", "éé==", 12])
def test_base64_refuses_what_is_not_base64(bad: Any) -> None:
    with pytest.raises(InvalidRequest, match=r"^input 'A': .*(not valid base64|base64 strings)"):
        get_codec("base64", "input 'A'").decode(["YWJj", bad], "BYTES", "A")


def test_datetime_keeps_valid_iso_text_and_refuses_the_rest() -> None:
    codec = get_codec("datetime", "input 'A'")
    stamps = ["2024-01-02", "2024-01-02T03:04:05", "2024-01-02T03:04:05.123456+02:00"]
    assert codec.decode(stamps, "BYTES", "A") == [stamp.encode() for stamp in stamps]
    assert codec.encode(_objects(b"2024-01-02"), "BYTES", "O") == ["2024-01-02"]
    with pytest.raises(InvalidRequest) as caught:
        codec.decode(["2024-13-45"], "BYTES", "A")
    assert caught.value.message == "input 'A': \"2024-13-45\" is not an ISO 8601 datetime"


def test_json_holds_one_json_value_per_element() -> None:
    codec = get_codec("json", "input 'A'")
    data = [{"a": [1, 2]}, [1, "x"], "s", 3.5, None]
    decoded = codec.decode(data, "BYTES", "A")
    assert decoded == [b'{"a":[1,2]}', b'[1,"x"]', b'"s"', b"3.5", b"null"]
    assert codec.encode(_objects(*decoded), "BYTES", "O") == data
    with pytest.raises(InvalidRequest, match=r"^output 'O': an element is not valid JSON"):
        codec.encode(_objects(b"{oops"), "BYTES", "O")


def test_pd_json_holds_one_json_text_per_element() -> None:
    # what MLServer's PandasCodec writes for a column of dicts, lists and a missing value (json.dumps each)
    data = ['{"a":[1,2]}', '[1,"x"]', '"s"', "3.5", "null", '{"é": "日本"}']
    codec = get_codec("pd_json", "input 'A'")
    decoded = codec.decode(data, "BYTES", "A")
    assert decoded == [item.encode() for item in data]  # kept as sent
    assert codec.encode(_objects(*decoded), "BYTES", "O") == data


def test_pd_json_and_json_give_the_model_the_same_text() -> None:
    values = [{"a": [1, 2]}, [1, "x"], None]
    as_json = get_codec("json", "input 'A'").decode(values, "BYTES", "A")
    as_texts = [item.decode() for item in as_json]
    assert get_codec("pd_json", "input 'A'").decode(as_texts, "BYTES", "A") == as_json


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (['{"a":1}', "{oops"], "input 'A': \"{oops\" is not a JSON text"),
        (["1 2"], "input 'A': \"1 2\" is not a JSON text"),
        (["NaN"], "input 'A': \"NaN\" is not a JSON text"),
        ([{"a": 1}], "input 'A': data must be JSON texts (strings), got object {\"a\":1}"),
        (["1", None], "input 'A': data must be JSON texts (strings), got null null"),
    ],
)
def test_pd_json_refuses_what_is_not_json_text(data: list[Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        get_codec("pd_json", "input 'A'").decode(data, "BYTES", "A")
    assert caught.value.message == message


def test_pd_json_refuses_an_output_element_that_is_not_json_text() -> None:
    codec = get_codec("pd_json", "output 'O'")
    with pytest.raises(InvalidRequest) as caught:
        codec.encode(_objects(b"[1]", b"plain text"), "BYTES", "O")
    assert caught.value.message == "output 'O': element 1 (\"plain text\") is not a JSON text"
    with pytest.raises(InvalidRequest, match=r"^output 'O': BYTES data is not valid UTF-8"):
        codec.encode(_objects(b"\xff"), "BYTES", "O")


# --- pd: inputs are columns --------------------------------------------------------------------------------


def _columns(*shapes: list[int]) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name=f"C{i}", datatype="FP32", shape=shape)
            for i, shape in enumerate(shapes)
        ]
    )


def test_pd_columns_sharing_their_row_count_pass() -> None:
    check_columns(_columns([3], [3, 2], [3, 1]))


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (
            ([3], [2]),
            "content_type 'pd': input 'C1' has 2 rows but input 'C0' has 3; every column needs the same shape[0]",
        ),
        (([3], []), "input 'C1': content_type 'pd' makes inputs columns, which need a first dimension"),
    ],
)
def test_pd_columns_must_share_their_row_count(shapes: tuple[list[int], ...], message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_columns(_columns(*shapes))
    assert caught.value.message.startswith(message)
