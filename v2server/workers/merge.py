"""Sums over workers: Triton's statistics (protobuf) and the Prometheus text of ``/metrics``.

Each worker counts only the requests it served, so what a client asks of any one of them (ModelStatistics,
``/metrics``) must be the sum over all of them, never one worker's share.

- Statistics: ``ModelStatistics`` entries of the same model name and version are added field by field
  (counts and nanoseconds), batch statistics by batch size, memory usage by (type, id), response statistics by
  key; ``last_inference`` is the latest of them.
- Metrics: the expositions are parsed with ``prometheus_client.parser``; every sample (counters, histogram
  buckets, sums and counts, gauges) is added to the sample of the same name and labels, except the device-wide
  GPU gauges (``nv_gpu_*``), which every worker reads off the same GPU: those take the largest reading.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import prometheus_client
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from v2server._proto import grpc_service_pb2 as pb

__all__ = ["sum_expositions", "sum_statistics"]

#: how entries of a repeated message field are matched, by message type
_IDENTITY: dict[str, tuple[str, ...]] = {
    "ModelStatistics": ("name", "version"),
    "InferBatchStatistics": ("batch_size",),
    "MemoryUsage": ("type", "id"),
}
#: fields that are the latest of the workers' values, not their sum
_LATEST = frozenset({"last_inference"})


def sum_statistics(responses: Iterable[pb.ModelStatisticsResponse]) -> pb.ModelStatisticsResponse:
    """One response whose entries are the sums of the responses' entries for the same model version (in the
    order first seen)."""
    total = pb.ModelStatisticsResponse()
    for response in responses:
        _add_repeated(total.model_stats, response.model_stats)
    return total


def _key(message: Message) -> tuple[object, ...]:
    return tuple(getattr(message, name) for name in _IDENTITY[message.DESCRIPTOR.name])


def _add_repeated(into: object, items: Iterable[Message]) -> None:
    """Add each of ``items`` to the entry of ``into`` (a repeated message field) that has its identity."""
    index = {_key(entry): entry for entry in into}  # type: ignore[attr-defined]
    for item in items:
        entry = index.get(_key(item))
        if entry is None:
            entry = index[_key(item)] = into.add()  # type: ignore[attr-defined]
            entry.CopyFrom(item)
        else:
            _add(entry, item)


def _add(into: Message, other: Message) -> None:
    """Add ``other`` to ``into`` (same type) field by field; identity fields stay as they are."""
    identity = _IDENTITY.get(into.DESCRIPTOR.name, ())
    for field in into.DESCRIPTOR.fields:
        name = field.name
        if name in identity:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            theirs, ours = getattr(other, name), getattr(into, name)
            for key in theirs:
                _add(ours[key], theirs[key])  # a missing key is created empty, then added to
        elif field.label == FieldDescriptor.LABEL_REPEATED:
            _add_repeated(getattr(into, name), getattr(other, name))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if other.HasField(name):
                _add(getattr(into, name), getattr(other, name))
        elif name in _LATEST:
            setattr(into, name, max(getattr(into, name), getattr(other, name)))
        elif field.cpp_type in _NUMBERS:
            setattr(into, name, getattr(into, name) + getattr(other, name))


_NUMBERS = frozenset({
    FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT32,
    FieldDescriptor.CPPTYPE_UINT64, FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT,
})

# -- Prometheus text ----------------------------------------------------------------------------------------

#: gauges every worker reads off the same device: the sum would count the device once per worker
_DEVICE_WIDE = "nv_gpu_"
_COUNTER_TYPE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) counter$", re.MULTILINE)
_HEADER = re.compile(rb"^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*)_total ", re.MULTILINE)


def sum_expositions(texts: Sequence[str], extra: Iterable[Metric] = ()) -> bytes:
    """The text exposition of the workers' summed metrics (families in the order first seen), then ``extra``.

    The parser names every counter sample ``<name>_total``; Triton's counters are written without that suffix
    (``metrics.render``), so the names the workers wrote are kept and put back."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    bare: set[str] = set()
    for text in texts:
        bare.update(name for name in _COUNTER_TYPE.findall(text) if not name.endswith("_total"))
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            sums = values.setdefault(family.name, {})
            device_wide = family.type == "gauge" and family.name.startswith(_DEVICE_WIDE)
            for sample in family.samples:
                key = (sample.name, tuple(sample.labels.items()))
                if key not in sums:
                    sums[key] = sample.value
                elif device_wide:
                    sums[key] = max(sums[key], sample.value)
                elif sample.name.endswith("_created"):  # when a series began: the earliest
                    sums[key] = min(sums[key], sample.value)
                else:
                    sums[key] += sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            if family.type == "counter" and name in bare and sample_name == f"{name}_total":
                sample_name = name
            family.add_sample(sample_name, dict(labels), value)
    out = [*families.values(), *extra]
    body = prometheus_client.generate_latest(_Families(out))
    written = {m.name.encode() for m in out if m.type == "counter"
               and (m.name in bare or (m.samples and all(s.name == m.name for s in m.samples)))}
    return _HEADER.sub(lambda m: m.group(0) if m.group(2) not in written else b"# %s %s " % m.group(1, 2), body)


class _Families:
    """Metric families handed to ``generate_latest`` as one collector."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
