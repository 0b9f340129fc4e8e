"""A protoc plugin that runs protoc's built-in Java generator.

grpcio-tools' protoc (`python -m grpc_tools.protoc`, the project's one protoc) is built with the Python
generators only, so `--java_out` is not available in it. This plugin lets it generate Java all the same:
grpc_tools.protoc parses the protos and hands the plugin the parsed descriptors (CodeGeneratorRequest);
the plugin passes them, unchanged, to the Java generator of the protoc release of the same version
(the `com.google.protobuf:protoc` executable from Maven Central, pinned in mk/stubs.mk, path in
$MODELWIRE_PROTOC_JAVA) with `--descriptor_set_in`, and returns the Java files it wrote.

scripts/gen_stubs.sh installs it as `protoc-gen-java` and checks that both protoc versions match.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2


def generate(request: plugin_pb2.CodeGeneratorRequest, protoc: str) -> plugin_pb2.CodeGeneratorResponse:
    response = plugin_pb2.CodeGeneratorResponse()
    response.supported_features = (
        plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
        | plugin_pb2.CodeGeneratorResponse.FEATURE_SUPPORTS_EDITIONS
    )
    response.minimum_edition = descriptor_pb2.EDITION_PROTO2
    response.maximum_edition = descriptor_pb2.EDITION_2024
    descriptors = descriptor_pb2.FileDescriptorSet(file=request.proto_file)
    with tempfile.TemporaryDirectory(prefix="protoc-gen-java-") as tmp:
        descriptor_set = Path(tmp, "descriptors.pb")
        descriptor_set.write_bytes(descriptors.SerializeToString(deterministic=True))
        out = Path(tmp, "out")
        out.mkdir()
        java_out = f"{request.parameter}:{out}" if request.parameter else str(out)
        result = subprocess.run(
            [protoc, f"--descriptor_set_in={descriptor_set}", f"--java_out={java_out}", *request.file_to_generate],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            response.error = f"{protoc} --java_out failed ({result.returncode}): {result.stderr.strip()}"
            return response
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            response.file.add(name=path.relative_to(out).as_posix(), content=path.read_text(encoding="utf-8"))
    return response


def main() -> int:
    protoc = os.environ.get("MODELWIRE_PROTOC_JAVA")
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    if not protoc:
        response = plugin_pb2.CodeGeneratorResponse(error="MODELWIRE_PROTOC_JAVA is not set (run make stubs)")
    else:
        response = generate(request, protoc)
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main())
