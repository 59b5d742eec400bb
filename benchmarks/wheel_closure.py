"""Check that a folder of wheels installs offline on top of a known set of packages.

    python benchmarks/wheel_closure.py WHEEL_DIR --python 3.12 --have numpy scipy ...

Every requirement (``Requires-Dist``, its environment marker evaluated for CPython
``--python`` on x86-64 Linux, no extras) of every wheel in WHEEL_DIR must be one of the
wheels or one of ``--have`` (the packages the target machine already holds). Exits 1 with
the list of what is neither: such a requirement would stop ``pip install --no-index`` on a
machine without network (the GPU machine of ``gpu_check.sh``, in its paid minutes).
Versions are not compared: the target's versions are unknown here, which is why
``gpu_check.sh --prepare`` also carries small packages whose recent versions are needed.
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # a bare python3: pip's own copy
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def marker_env(python: str) -> dict[str, str]:
    return {
        "python_version": ".".join(python.split(".")[:2]),
        "python_full_version": python if python.count(".") == 2 else python + ".0",
        "extra": "",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": "x86_64",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }


def requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8")
    return [
        Requirement(line.split(":", 1)[1].strip())
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def unmet(wheel_dir: Path, python: str, have: list[str]) -> list[str]:
    """'<wheel> needs <requirement>' for each requirement neither carried nor on the target."""
    carried = {norm(w.name.split("-")[0]): w for w in sorted(wheel_dir.glob("*.whl"))}
    known = set(carried) | {norm(h) for h in have}
    env = marker_env(python)
    out = []
    for name, wheel in carried.items():
        for r in requirements(wheel):
            applies = r.marker is None or r.marker.evaluate(env)
            if applies and norm(r.name) not in known:
                out.append(f"{name} needs {r}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wheel_dir", type=Path)
    ap.add_argument("--python", default="3.12", help="the target's CPython version")
    ap.add_argument("--have", nargs="*", default=[], help="packages the target already holds")
    a = ap.parse_args(argv)
    missing = unmet(a.wheel_dir, a.python, a.have)
    n = len(list(a.wheel_dir.glob("*.whl")))
    if missing:
        print(f"{a.wheel_dir}: not carried and not on the target:", file=sys.stderr)
        for m in missing:
            print(f"  {m}", file=sys.stderr)
        return 1
    print(f"{a.wheel_dir}: {n} wheels; every requirement is carried or on the target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
