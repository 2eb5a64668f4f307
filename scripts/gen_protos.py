"""Regenerate lib/allmende/v1 from proto/allmende/v1 (python, grpc and .pyi stubs).

Run `python scripts/gen_protos.py`; `--check` exits 1 when the committed code is stale.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
OUT_ROOT = ROOT / "lib"
PACKAGE_DIR = Path("allmende") / "v1"

INIT = '''"""Generated from proto/allmende/v1 by scripts/gen_protos.py; do not edit by hand."""
'''


def generate(out_root: Path) -> None:
    """Run protoc (grpcio-tools) into out_root; raises SystemExit when protoc fails."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency, only needed to regenerate

    protos = sorted(
        str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto")
    )
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out_root / PACKAGE_DIR / "__init__.py").write_text(INIT)


def stale_files(fresh_root: Path) -> list[str]:
    """Names of files that differ between a fresh generation and the committed one."""
    fresh = {p.relative_to(fresh_root) for p in (fresh_root / PACKAGE_DIR).glob("*.py*")}
    committed = {p.relative_to(OUT_ROOT) for p in (OUT_ROOT / PACKAGE_DIR).glob("*.py*")}
    differ = [str(p) for p in sorted(fresh ^ committed)]
    for rel in sorted(fresh & committed):
        if not filecmp.cmp(fresh_root / rel, OUT_ROOT / rel, shallow=False):
            differ.append(str(rel))
    return differ


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        differ = stale_files(Path(tmp))
        if args.check:
            for name in differ:
                print(f"stale: lib/{name}")
            return 1 if differ else 0
        shutil.rmtree(OUT_ROOT / PACKAGE_DIR, ignore_errors=True)
        shutil.copytree(Path(tmp) / PACKAGE_DIR, OUT_ROOT / PACKAGE_DIR)
    print(
        f"generated {len(list((OUT_ROOT / PACKAGE_DIR).glob('*.py*')))} files in lib/{PACKAGE_DIR}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
