"""The REST gateway: Tornado handlers that turn V2 / Triton HTTP requests into the core's protobuf messages.

``json_codec`` (``/v2``) and ``simple_codec`` (``/v1``, ``/predict``) are the JSON<->protobuf code, both built on
the content-type codecs of ``content_types`` and the numeric rules of ``tensors``; ``messages`` holds parameters
and the other messages.
"""

__all__: list[str] = []
