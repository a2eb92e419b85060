"""Print uv's requirement as uv.lock pins it, with its hashes, for `pip --require-hashes`.

uv installs everything else from uv.lock; this is how a fresh venv gets that very uv first,
checked against the same lock (Python's standard library only: nothing is installed yet).
Usage: python .ci/uv_requirement.py uv.lock > requirement.txt
"""

import sys
import tomllib


def main(lock_path: str) -> None:
    with open(lock_path, "rb") as f:
        lock = tomllib.load(f)
    found = [p for p in lock.get("package", []) if p.get("name") == "uv"]
    if len(found) != 1:
        sys.exit(f"{lock_path} pins no single version of uv (run `make lock`)")
    uv = found[0]
    hashes = [w["hash"] for w in uv.get("wheels", [])]
    if not hashes:
        sys.exit(f"{lock_path} records no wheel of uv {uv['version']}")
    print(f"uv=={uv['version']} " + " ".join(f"--hash={h}" for h in hashes))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "uv.lock")
