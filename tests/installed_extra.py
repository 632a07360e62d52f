"""What a documented ``pip install -e ".[EXTRA]"`` gives, checked offline (tests/test_cli.py runs this in place
of the install, which needs a package index): every requirement of the project with that extra is installed, at
a version its specifier allows.

usage: python installed_extra.py [EXTRA ...]      (no EXTRA: the runtime requirements only)
"""

import sys
from importlib import metadata

from packaging.requirements import Requirement

if __name__ == "__main__":
    extras = set(sys.argv[1:])
    bad, n = [], 0
    for text in metadata.requires("evotune") or []:
        req = Requirement(text)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
            continue
        n += 1
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            bad.append(f"{req.name}: not installed")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            bad.append(f"{req.name} {have} outside {req.specifier}")
    if bad:
        print("Error: " + "; ".join(bad))
        sys.exit(1)
    print(f"evotune[{','.join(sorted(extras))}]: {n} requirements installed and within their ranges")
