"""The REST gateway: Tornado handlers that turn V2 / Triton HTTP requests into the core's protobuf messages.

``json_codec`` is the only JSON<->protobuf code; ``content_types`` holds the MLServer content-type codecs it
uses for JSON tensor data.
"""

__all__: list[str] = []
