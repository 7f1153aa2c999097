"""MLServer 1.7's codecs against v2server over REST: encode with MLServer, send, decode our answer with MLServer.

Usage: ``python mlserver_codecs.py HOST:PORT`` (the REST address). Standalone: only this venv's packages
(mlserver, numpy, pandas) and the stdlib. Each case encodes a request the way an MLServer user does
(``mlserver.codecs``, ``mlserver.types``), posts its ``model_dump_json()`` as MLServer's own types write it,
and decodes the answer with the matching MLServer decoder. It prints one JSON object, case -> what was sent
and what came back decoded (bytes as hex, datetimes as ISO text); the assertions live in test_mlserver.py.
"""

from __future__ import annotations

import datetime
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from mlserver.codecs import Base64Codec, CodecError, DatetimeCodec, NumpyCodec, PandasCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse, Parameters, RequestInput, RequestOutput

WORDS = ["hello", "grüße", "", "日本語"]
BLOBS = [bytes(range(128)), "grüße".encode(), b""]  # UTF-8: simple_identity's forward takes List[str]
NOT_UTF8 = [b"\x00\xff\xfe"]
STAMPS = [
    datetime.datetime(2024, 1, 2, 3, 4, 5, 123456),
    datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
    datetime.datetime(2024, 2, 29),
]
OBJECTS = [{"a": 1, "b": [1, "é"]}, [1, 2], "x", 3.5, True, {"nested": {"deep": [None]}}]


def post(base: str, model: str, request: InferenceRequest) -> tuple[int, bytes]:
    """POST ``request`` as MLServer's types serialise it; the status and the body, errors included."""
    http = urllib.request.Request(
        f"{base}/v2/models/{model}/infer",
        data=request.model_dump_json().encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(http, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def exchange(
    base: str, model: str, request: InferenceRequest, decode: Callable[[InferenceResponse], Any]
) -> dict:
    """Send ``request``; on 200 decode the answer with MLServer (``decode``), else keep the error body."""
    status, body = post(base, model, request)
    seen: dict[str, Any] = {"status": status}
    if status != 200:
        seen["error"] = body.decode(errors="replace")
        return seen
    response = InferenceResponse.model_validate_json(body)
    seen["output_parameters"] = {
        output.name: output.parameters.model_dump(exclude_none=True) if output.parameters else {}
        for output in response.outputs
    }
    try:
        seen["decoded"] = decode(response)
    except (CodecError, ValueError, TypeError, KeyError, AttributeError, StopIteration) as error:
        # an MLServer decoder that cannot read our answer is an observation, not a crash
        seen["decode_error"] = f"{type(error).__name__}: {error}"
    return seen


def asked(*names_and_types: tuple[str, str]) -> list[RequestOutput]:
    """Outputs requested with a ``content_type``."""
    return [
        RequestOutput(name=name, parameters=Parameters(content_type=kind)) for name, kind in names_and_types
    ]


def output(response: InferenceResponse, name: str) -> Any:
    return next(item for item in response.outputs if item.name == name)


def case_np(base: str) -> dict:
    """NumpyCodec both ways on ``simple`` (INT32 add/sub): a [2, 16] batch, negative values included."""
    a = np.arange(-8, 24, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, dtype=np.int32)
    request = InferenceRequest(
        inputs=[NumpyCodec.encode_input("INPUT0", a), NumpyCodec.encode_input("INPUT1", b)]
    )

    def decode(response: InferenceResponse) -> dict:
        arrays = {name: NumpyCodec.decode_output(output(response, name)) for name in ("OUTPUT0", "OUTPUT1")}
        return {
            name: {"dtype": str(x.dtype), "shape": list(x.shape), "values": x.tolist()}
            for name, x in arrays.items()
        }

    seen = exchange(base, "simple", request, decode)
    seen["expected"] = {"OUTPUT0": (a + b).tolist(), "OUTPUT1": (a - b).tolist()}
    return seen


def case_np_int8(base: str) -> dict:
    """NumpyCodec with INT8 at both ends of its range on ``simple_int8``."""
    a = np.array([[-128, -1, 0, 1, 127] + [5] * 11], dtype=np.int8)
    zero = np.zeros_like(a)
    request = InferenceRequest(
        inputs=[NumpyCodec.encode_input("INPUT0", a), NumpyCodec.encode_input("INPUT1", zero)]
    )

    def decode(response: InferenceResponse) -> dict:
        x = NumpyCodec.decode_output(output(response, "OUTPUT0"))
        return {"dtype": str(x.dtype), "values": x.tolist()}

    seen = exchange(base, "simple_int8", request, decode)
    seen["expected"] = a.tolist()
    return seen


def case_str(base: str) -> dict:
    """StringCodec on ``simple_identity`` (BYTES echo), the output asked for as ``str``."""
    request = InferenceRequest(
        inputs=[StringCodec.encode_input("INPUT0", WORDS)], outputs=asked(("OUTPUT0", "str"))
    )
    seen = exchange(
        base, "simple_identity", request, lambda r: StringCodec.decode_output(output(r, "OUTPUT0"))
    )
    seen["sent"] = WORDS
    return seen


def _blobs(response: InferenceResponse) -> list[str]:
    """Base64Codec.decode_output of OUTPUT0, as hex."""
    return [blob.hex() for blob in Base64Codec.decode_output(output(response, "OUTPUT0"))]


def case_base64(base: str) -> dict:
    """Base64Codec: bytes that are not UTF-8 go in as base64 and come back as base64."""
    request = InferenceRequest(
        inputs=[Base64Codec.encode_input("INPUT0", BLOBS)], outputs=asked(("OUTPUT0", "base64"))
    )
    seen = exchange(base, "simple_identity", request, _blobs)
    seen["sent"] = [blob.hex() for blob in BLOBS]
    return seen


def case_base64_not_utf8(base: str) -> dict:
    """Base64Codec with bytes that are not UTF-8: the codec takes them, a List[str] model cannot."""
    request = InferenceRequest(
        inputs=[Base64Codec.encode_input("INPUT0", NOT_UTF8)], outputs=asked(("OUTPUT0", "base64"))
    )
    return exchange(base, "simple_identity", request, _blobs)


def case_datetime(base: str) -> dict:
    """DatetimeCodec: ISO 8601 in, ``datetime`` objects back (naive and aware)."""
    request = InferenceRequest(
        inputs=[DatetimeCodec.encode_input("INPUT0", STAMPS)], outputs=asked(("OUTPUT0", "datetime"))
    )

    def decode(response: InferenceResponse) -> list:
        stamps = DatetimeCodec.decode_output(output(response, "OUTPUT0"))
        return [
            [type(stamp).__name__, stamp.isoformat(), stamp == sent] for stamp, sent in zip(stamps, STAMPS)
        ]

    seen = exchange(base, "simple_identity", request, decode)
    seen["sent"] = [stamp.isoformat() for stamp in STAMPS]
    return seen


def _frame_column(response: InferenceResponse, name: str) -> list:
    """PandasCodec.decode_response's column ``name`` as JSON-ready values."""
    frame = PandasCodec.decode_response(response)
    return [item.decode() if isinstance(item, bytes) else item for item in frame[name].tolist()]


def case_pd(base: str) -> dict:
    """PandasCodec, request level: a string column (``str`` per input) and PandasCodec.decode_response."""
    request = PandasCodec.encode_request(pd.DataFrame({"INPUT0": WORDS}))
    seen = exchange(base, "simple_identity", request, lambda r: _frame_column(r, "OUTPUT0"))
    seen["sent"] = WORDS
    seen["request_parameters"] = request.parameters.model_dump(exclude_none=True)
    seen["input_parameters"] = request.inputs[0].parameters.model_dump(exclude_none=True)
    return seen


def case_pd_numeric(base: str) -> dict:
    """PandasCodec with INT64 columns (``sentiment``'s input_ids and attention_mask, shape [N, 1]): the
    logits must equal those of the same tensors sent with NumpyCodec."""
    ids, mask = [101, 2023, 102], [1, 1, 1]
    frame_request = PandasCodec.encode_request(pd.DataFrame({"input_ids": ids, "attention_mask": mask}))
    np_request = InferenceRequest(
        inputs=[
            NumpyCodec.encode_input("input_ids", np.array(ids, dtype=np.int64).reshape(3, 1)),
            NumpyCodec.encode_input("attention_mask", np.array(mask, dtype=np.int64).reshape(3, 1)),
        ]
    )

    def logits(response: InferenceResponse) -> dict:
        x = NumpyCodec.decode_output(output(response, "logits"))
        return {"dtype": str(x.dtype), "shape": list(x.shape), "values": x.tolist()}

    seen = exchange(base, "sentiment", frame_request, logits)
    seen["np"] = exchange(base, "sentiment", np_request, logits)
    seen["input_datatypes"] = {item.name: [item.datatype, item.shape] for item in frame_request.inputs}
    return seen


def case_pd_json(base: str) -> dict:
    """PandasCodec on an object column that is not all strings: ``pd_json`` inputs, the output asked for as
    ``pd_json`` so that PandasCodec.decode_response turns each element back into its object."""
    request = PandasCodec.encode_request(pd.DataFrame({"INPUT0": OBJECTS}))
    request.outputs = asked(("OUTPUT0", "pd_json"))
    seen = exchange(base, "simple_identity", request, lambda r: _frame_column(r, "OUTPUT0"))
    seen["sent"] = OBJECTS
    seen["input_parameters"] = request.inputs[0].parameters.model_dump(exclude_none=True)
    seen["sent_data"] = [item.decode() for item in request.inputs[0].data.root]  # use_bytes: UTF-8 JSON texts
    return seen


def case_pd_json_unasked(base: str) -> dict:
    """The same ``pd_json`` request without asking for an output content type: what decode_response gives."""
    request = PandasCodec.encode_request(pd.DataFrame({"INPUT0": OBJECTS}))
    return exchange(base, "simple_identity", request, lambda r: _frame_column(r, "OUTPUT0"))


def case_json(base: str) -> dict:
    """Our ``json`` content type (one JSON value per element) written with MLServer's types; the answer read
    once as ``json`` (the values themselves) and once as ``pd_json`` through PandasCodec.decode_response."""
    tensor = RequestInput(
        name="INPUT0",
        datatype="BYTES",
        shape=[len(OBJECTS), 1],
        data=OBJECTS,
        parameters=Parameters(content_type="json"),
    )
    as_json = InferenceRequest(inputs=[tensor], outputs=asked(("OUTPUT0", "json")))
    seen = exchange(base, "simple_identity", as_json, lambda r: list(output(r, "OUTPUT0").data.root))
    as_pd_json = InferenceRequest(inputs=[tensor], outputs=asked(("OUTPUT0", "pd_json")))
    seen["as_pd_json"] = exchange(base, "simple_identity", as_pd_json, lambda r: _frame_column(r, "OUTPUT0"))
    seen["sent"] = OBJECTS
    return seen


CASES: dict[str, Callable[[str], dict]] = {
    "np": case_np,
    "np_int8": case_np_int8,
    "str": case_str,
    "base64": case_base64,
    "base64_not_utf8": case_base64_not_utf8,
    "datetime": case_datetime,
    "pd": case_pd,
    "pd_numeric": case_pd_numeric,
    "pd_json": case_pd_json,
    "pd_json_unasked": case_pd_json_unasked,
    "json": case_json,
}


def main(address: str) -> None:
    base = f"http://{address}"
    print(json.dumps({name: case(base) for name, case in CASES.items()}))


if __name__ == "__main__":
    main(sys.argv[1])
