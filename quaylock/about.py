"""What this installation is: quaylock's version, Python's, the schema its
code and its store are at, and every distribution installed beside it.

Admins read it from the admin API (/admin/v1/version) and `quaylock
doctor` checks it; anonymous clients learn none of it (no version in
headers or error bodies). The SBOM is the one `make sbom` wrote with a
CycloneDX generator; `sbom_drift` says where it no longer matches what is
installed.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from quaylock import __version__
from quaylock.supply.audit import installed, normalize


def sbom_path() -> Path:
    """Where `make sbom` writes the SBOM: inside the environment it describes."""
    return Path(sys.prefix) / "share" / "quaylock" / "sbom.cdx.json"


def sbom_drift(sbom: dict, present: dict[str, str]) -> list[str]:
    """How the SBOM differs from the distributions `present`: versions that
    changed, distributions installed since and ones removed since."""
    listed = {
        normalize(c["name"]): c.get("version", "")
        for c in sbom.get("components", [])
        if c.get("type") == "library" and "name" in c
    }
    differences = []
    for name in sorted(listed.keys() | present.keys()):
        if name == "quaylock":
            continue  # the SBOM's subject, not one of its components
        was, now = listed.get(name), present.get(name)
        if was is None:
            differences.append(f"{name} {now} is installed but not in the SBOM")
        elif now is None:
            differences.append(f"{name} {was} is in the SBOM but not installed")
        elif was != now:
            differences.append(f"{name} is {now}, the SBOM says {was}")
    return differences


def read_sbom() -> tuple[dict | None, str]:
    """The SBOM, or None with the reason it cannot be read."""
    path = sbom_path()
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"no SBOM at {path}: run `make sbom`"
    except (OSError, ValueError) as exc:
        return None, f"the SBOM at {path} cannot be read: {exc}"
    if not isinstance(document, dict) or document.get("bomFormat") != "CycloneDX":
        return None, f"the SBOM at {path} is not a CycloneDX document: run `make sbom`"
    return document, ""


def report(store_schema: int | None) -> dict:
    """The version report of the admin API."""
    from quaylock.metadata.schema import SCHEMA_VERSION  # noqa: PLC0415

    present = dict(sorted(installed().items()))
    sbom, why = read_sbom()
    return {
        "quaylock": __version__,
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "schema": {"code": SCHEMA_VERSION, "store": store_schema},
        "dependencies": present,
        "sbom": {
            "path": str(sbom_path()),
            "present": sbom is not None,
            "problem": why or None,
            "differences": sbom_drift(sbom, present) if sbom is not None else [],
        },
    }
