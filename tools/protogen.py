"""Regenerate the typed Python protobuf/gRPC package in ``gen/`` from ``proto/``.

Usage::

    python -m tools.protogen            # regenerate gen/
    python -m tools.protogen --check    # exit 1 if gen/ is stale (CI freshness check)
    python -m tools.protogen --image build/proto-image.binpb
                                        # write the descriptor-set image ``buf lint`` reads
    python -m tools.protogen --lint     # the same image, then node_modules/.bin/buf lint on it

``buf/validate/validate.proto`` is not shipped as a ``.proto`` file anywhere in the
environment. The installed ``protovalidate`` package embeds its serialized
``FileDescriptorProto`` as a bytes literal passed to ``file_desc(...)`` in
``protovalidate/_gen/buf/validate/validate_pb.py``. We read that literal with ``ast``
(no import of the module needed), wrap it in a ``FileDescriptorSet`` and hand it to
protoc via ``--descriptor_set_in``. Its ``google/protobuf/*`` imports resolve from the
``-I`` include path (grpc_tools ships those ``.proto`` files), so there is exactly one
definition of each file and no conflict.
"""

from __future__ import annotations

import argparse
import ast
import filecmp
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
GEN_DIR = ROOT / "gen"
VALIDATE_PROTO = "buf/validate/validate.proto"


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.submodule_search_locations is None:
        raise SystemExit(f"protogen: cannot locate package {module!r}; is the venv active?")
    return Path(next(iter(spec.submodule_search_locations)))


def validate_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """Return buf/validate/validate.proto's FileDescriptorProto embedded in protovalidate."""
    source = _package_dir("protovalidate") / "_gen" / "buf" / "validate" / "validate_pb.py"
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "file_desc"
            and node.args
        ):
            raw = ast.literal_eval(node.args[0])
            if isinstance(raw, bytes):
                fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
                if fdp.name == VALIDATE_PROTO:
                    return fdp
    raise SystemExit(f"protogen: no file_desc(b'...') for {VALIDATE_PROTO} in {source}")


def _include_dirs() -> list[Path]:
    grpc_tools_proto = _package_dir("grpc_tools") / "_proto"
    spec = importlib.util.find_spec("google.type.date_pb2")
    if spec is None or spec.origin is None:
        raise SystemExit("protogen: googleapis-common-protos (google/type/date.proto) not found")
    googleapis_root = Path(spec.origin).parent.parent.parent
    return [PROTO_DIR, grpc_tools_proto, googleapis_root]


def _proto_files() -> list[str]:
    return sorted(p.relative_to(PROTO_DIR).as_posix() for p in PROTO_DIR.rglob("*.proto"))


def _protoc(args: list[str], workdir: Path) -> None:
    fds = descriptor_pb2.FileDescriptorSet(file=[validate_descriptor()])
    set_path = workdir / "buf_validate.binpb"
    set_path.write_bytes(fds.SerializeToString(deterministic=True))
    bindir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        *(f"-I{d}" for d in _include_dirs()),
        f"--descriptor_set_in={set_path}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        *args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"protogen: protoc failed (exit {proc.returncode})")


def generate(out: Path) -> None:
    """Generate the full gen/ tree into ``out`` (which must be empty)."""
    with tempfile.TemporaryDirectory() as tmp:
        o = str(out)
        files = _proto_files()
        # Our protos: messages and their typed stubs.
        _protoc([f"--python_out={o}", f"--mypy_out={o}", *files], Path(tmp))
        # gRPC service modules and their stubs, only for files that declare services.
        services = [f for f in files if f.endswith("_service.proto")]
        if services:
            _protoc([f"--grpc_python_out={o}", f"--mypy_grpc_out={o}", *services], Path(tmp))
        # buf/validate/validate_pb2.py: our _pb2 modules import it to register the
        # (buf.validate.*) option extensions in the default descriptor pool.
        _protoc([f"--python_out={o}", f"--mypy_out={o}", VALIDATE_PROTO], Path(tmp))
    for d in sorted({p.parent for p in out.rglob("*.py")}):
        while d != out:
            (d / "__init__.py").touch()
            (d / "py.typed").touch()
            d = d.parent


def write_image(path: Path) -> None:
    """Write a FileDescriptorSet (with imports and source info) for ``buf lint``."""
    path = path if path.is_absolute() else Path.cwd() / path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        _protoc(
            [
                "--include_imports",
                "--include_source_info",
                f"--descriptor_set_out={path}",
                *_proto_files(),
            ],
            Path(tmp),
        )


def lint() -> int:
    """Run ``buf lint`` (from the @bufbuild/buf npm package) on a fresh image."""
    buf = ROOT / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        raise SystemExit("protogen: node_modules/.bin/buf not found; run `npm ci` first")
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "image.binpb"
        write_image(image)
        rc = subprocess.run([str(buf), "lint", str(image)], cwd=ROOT, check=False).returncode
    print("protogen: buf lint " + ("passed" if rc == 0 else f"FAILED (exit {rc})"))
    return rc


def _tree(root: Path) -> set[str]:
    if not root.exists():
        return set()
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not any(_is_cache(part) for part in p.relative_to(root).parts)
    }


def _is_cache(name: str) -> bool:
    """Caches (``__pycache__``, ``.mypy_cache``, ...) are neither checked nor deleted."""
    return name == "__pycache__" or name.startswith(".")


def diff(expected: Path, actual: Path) -> list[str]:
    want, have = _tree(expected), _tree(actual)
    problems = [f"missing: gen/{f}" for f in sorted(want - have)]
    problems += [f"extra:   gen/{f}" for f in sorted(have - want)]
    problems += [
        f"stale:   gen/{f}"
        for f in sorted(want & have)
        if not filecmp.cmp(expected / f, actual / f, shallow=False)
    ]
    return problems


def sync(src: Path, dst: Path) -> list[str]:
    """Make ``dst`` byte-identical to ``src``; return what changed."""
    changes = diff(src, dst)
    want = _tree(src)
    for f in _tree(dst) - want:
        (dst / f).unlink()
    for f in sorted(want):
        target = dst / f
        if not target.exists() or not filecmp.cmp(src / f, target, shallow=False):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / f, target)
    for d in sorted((p for p in dst.rglob("*") if p.is_dir()), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.protogen", description=(__doc__ or "").split("\n")[0]
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if gen/ is not fresh")
    mode.add_argument(
        "--image", type=Path, metavar="PATH", help="write a descriptor-set image for buf lint"
    )
    mode.add_argument(
        "--lint", action="store_true", help="build the image and run buf lint on it (offline)"
    )
    ns = parser.parse_args(argv)

    if ns.lint:
        return lint()

    if ns.image is not None:
        write_image(ns.image)
        print(f"protogen: wrote image {ns.image}")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "gen"
        fresh.mkdir()
        generate(fresh)
        if ns.check:
            problems = diff(fresh, GEN_DIR)
            if problems:
                print("protogen: gen/ is stale; run `python -m tools.protogen`:", file=sys.stderr)
                for p in problems:
                    print(f"  {p}", file=sys.stderr)
                return 1
            print(f"protogen: gen/ is fresh ({len(_tree(fresh))} files)")
            return 0
        GEN_DIR.mkdir(exist_ok=True)
        changes = sync(fresh, GEN_DIR)
        print(f"protogen: gen/ regenerated ({len(changes)} file(s) changed)")
        for c in changes:
            print(f"  {c}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
