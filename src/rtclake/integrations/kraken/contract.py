"""Kraken's gRPC contract (``kraken.proto`` beside this file), built at run time.

The descriptors of ``kraken.proto`` are written here in Python as a
``FileDescriptorProto`` and loaded into a descriptor pool of rtclake's own, so there is
no generated code to keep in step and no protoc at run time; a test compiles
``kraken.proto`` with ``grpc_tools.protoc`` and checks that the two are the same. The
private pool keeps these classes apart from a user's own generated ``kraken_pb2`` (a
broker may import Kraken's), which registers the same names in protobuf's default pool.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "kraken"
PROTO = "kraken.proto"

# Services and methods, as gRPC names them on the wire: /PACKAGE.SERVICE/METHOD
SERVICE = f"{PACKAGE}.KrakenService"
PROCESS = "ProcessKrakenRequest"
OLD_SERVICE = f"{PACKAGE}.KrakenMessage"
SEND = "Send"

_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_BYTES = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
_INT32 = descriptor_pb2.FieldDescriptorProto.TYPE_INT32
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL

# message -> its fields in number order (1, 2, ...), in the order of kraken.proto
_MESSAGES: dict[str, tuple[tuple[str, int], ...]] = {
    "KrakenRequest": (
        ("collector_name", _STRING), ("content_type", _STRING), ("metadata", _STRING),
        ("payload", _BYTES),
    ),
    "KrakenResponse": (
        ("collector_name", _STRING), ("content_type", _STRING), ("metadata", _STRING),
        ("payload", _BYTES),
    ),
    "KrakenMessageRequest": (("kind", _STRING), ("provider", _STRING), ("payload", _STRING)),
    "KrakenMessageResponse": (("status", _INT32),),
}  # fmt: skip
# service -> (method, request, response)
_SERVICES: dict[str, tuple[str, str, str]] = {
    "KrakenService": (PROCESS, "KrakenRequest", "KrakenResponse"),
    "KrakenMessage": (SEND, "KrakenMessageRequest", "KrakenMessageResponse"),
}


def _json_name(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(part.capitalize() for part in rest)


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """``kraken.proto`` as protoc describes it (``--descriptor_set_out``)."""
    file = descriptor_pb2.FileDescriptorProto(name=PROTO, package=PACKAGE, syntax="proto3")
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        for number, (field, kind) in enumerate(fields, 1):
            message.field.add(
                name=field, number=number, label=_OPTIONAL, type=kind, json_name=_json_name(field)
            )
    for name, (method, request, response) in _SERVICES.items():
        file.service.add(name=name).method.add(
            name=method, input_type=f".{PACKAGE}.{request}", output_type=f".{PACKAGE}.{response}"
        )
    return file


def _classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_descriptor())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in _MESSAGES
    }


_CLASSES = _classes()
# The message classes (protobuf classes: fields are attributes, as in generated code).
KrakenRequest: Any = _CLASSES["KrakenRequest"]
KrakenResponse: Any = _CLASSES["KrakenResponse"]
KrakenMessageRequest: Any = _CLASSES["KrakenMessageRequest"]
KrakenMessageResponse: Any = _CLASSES["KrakenMessageResponse"]
