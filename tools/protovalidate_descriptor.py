"""Write buf/validate/validate.proto (and its imports) as a FileDescriptorSet.

The protovalidate wheel ships no ``validate.proto`` source, only the serialized
descriptor embedded in its generated module. protoc can compile our protos
against that descriptor (``--descriptor_set_in``) and generate
``buf/validate/validate_pb2.py`` from it, so the rules our protos use are exactly
the ones the installed validator enforces.

Usage: python tools/protovalidate_descriptor.py OUTPUT.binpb
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import protovalidate
from google.protobuf import (
    descriptor_pb2,
    duration_pb2,
    field_mask_pb2,
    timestamp_pb2,
)

_GENERATED_MODULE = ("_gen", "buf", "validate", "validate_pb.py")


def _embedded_validate_descriptor() -> bytes:
    """Return the serialized FileDescriptorProto passed to ``file_desc(...)``."""
    source_path = Path(protovalidate.__file__).parent.joinpath(*_GENERATED_MODULE)
    tree = ast.parse(source_path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "file_desc"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, bytes)
        ):
            return node.args[0].value
    raise SystemExit(f"no embedded descriptor found in {source_path}")


def build_descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """Validate.proto preceded by the well-known files it imports."""
    descriptor_set = descriptor_pb2.FileDescriptorSet()
    for module in (descriptor_pb2, duration_pb2, field_mask_pb2, timestamp_pb2):
        module.DESCRIPTOR.CopyToProto(descriptor_set.file.add())
    validate_file = descriptor_set.file.add()
    validate_file.ParseFromString(_embedded_validate_descriptor())
    return descriptor_set


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    output = Path(sys.argv[1])
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(build_descriptor_set().SerializeToString(deterministic=True))


if __name__ == "__main__":
    main()
