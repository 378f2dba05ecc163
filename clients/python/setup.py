"""Build hsmlb-client: copy the repository's .proto into the package and compile it into hsmlb_client.v1.

Why the stubs get a descriptor pool of their own: protobuf keeps one default pool per process, and the
daemon's package (`hsmlb`) registers `hsmlb/v1/hsmlb.proto` there too; two builds of a changed proto
in one pool refuse to load ("duplicate file name"). With its own pool the client imports beside any
`hsmlb` version; a message of the daemon's stubs passed to the client is converted by its bytes.
"""

import hashlib
import os
import re
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "hsmlb_client"
PROTO_NAME = Path("hsmlb", "v1", "hsmlb.proto")
REPO_PROTO = ROOT.parent.parent / "proto" / PROTO_NAME  # present in a checkout of the repository
SHIPPED_PROTO = PACKAGE / "proto" / PROTO_NAME  # what the wheel ships (and an sdist builds from)
STUBS = ("hsmlb_pb2.py", "hsmlb_pb2.pyi", "hsmlb_pb2_grpc.py")


def _copy_proto() -> None:
    if REPO_PROTO.is_file():
        SHIPPED_PROTO.parent.mkdir(parents=True, exist_ok=True)
        if not SHIPPED_PROTO.is_file() or SHIPPED_PROTO.read_bytes() != REPO_PROTO.read_bytes():
            shutil.copyfile(REPO_PROTO, SHIPPED_PROTO)
    elif not SHIPPED_PROTO.is_file():
        raise RuntimeError(f"no {PROTO_NAME}: build from a checkout of the hsmlb repository or its sdist")


def compile_protos() -> None:
    import grpc_tools
    from grpc_tools import protoc

    _copy_proto()
    include = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as out:
        rc = protoc.main(["grpc_tools.protoc", f"-I{PACKAGE / 'proto'}", f"-I{include}", f"--python_out={out}",
                          f"--grpc_python_out={out}", f"--pyi_out={out}", str(SHIPPED_PROTO)])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {SHIPPED_PROTO}")
        for name in STUBS:
            text = (Path(out) / "hsmlb" / "v1" / name).read_text()
            text = re.sub(r"^from hsmlb\.v1 import", "from hsmlb_client.v1 import", text, flags=re.M)
            text = _own_pool(text)
            text = text.replace("'hsmlb.v1.hsmlb_pb2'", "'hsmlb_client.v1.hsmlb_pb2'")  # the classes' __module__
            target = PACKAGE / "v1" / name
            if not target.is_file() or target.read_text() != text:
                target.write_text(text)


def _own_pool(text: str) -> str:
    """The stubs' descriptors in a pool of their own, holding first the well-known types they import
    (google/protobuf/any.proto for Status.details): a fresh pool knows none of them."""
    imports = re.findall(r"^from google\.protobuf import \w+_pb2 as (\w+)$", text, flags=re.M)
    if "_descriptor_pool.Default().AddSerializedFile(" not in text:
        return text
    pool = "_POOL = _descriptor_pool.DescriptorPool()\n" + "".join(
        f"_POOL.AddSerializedFile({alias}.DESCRIPTOR.serialized_pb)\n" for alias in imports)
    text = text.replace("_descriptor_pool.Default().AddSerializedFile(", "_POOL.AddSerializedFile(")
    return text.replace("\nDESCRIPTOR = _POOL.", "\n" + pool + "\nDESCRIPTOR = _POOL.", 1)


def _requirements() -> list[str]:
    """The stubs check at import that grpcio and protobuf are at least the generator's versions."""
    try:
        grpc_version = version("grpcio-tools")
        proto_version = ".".join(version("protobuf").split(".")[:2])
    except PackageNotFoundError:  # metadata-only steps without the build requirements
        return ["grpcio>=1.60", "protobuf>=4.25"]
    return [f"grpcio>={grpc_version}", f"protobuf>={proto_version}"]


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        compile_protos()
        super().run()


class SdistWithProto(sdist):
    def run(self) -> None:
        _copy_proto()
        super().run()


# Build debris (egg-info, build/) outside the checkout, one directory per checkout, as the daemon's setup.py does.
OUT = Path(os.environ.get("HSMLB_BUILD_DIR") or tempfile.gettempdir()) / \
    f"hsmlb-client-build-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"
OUT.mkdir(parents=True, exist_ok=True)
setup(cmdclass={"build_py": BuildPyWithProtos, "sdist": SdistWithProto}, install_requires=_requirements(),
      options={"egg_info": {"egg_base": str(OUT)}, "build": {"build_base": str(OUT / "build")}})
