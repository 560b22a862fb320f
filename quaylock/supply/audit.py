"""Offline dependency audit: pinned or installed distributions against a local
folder of OSV advisories.

Registries often run air-gapped, so the audit never goes online. It reads the
folder it is given, either a snapshot of the PyPA advisory database
(`vulns/<package>/<id>.yaml`) or any tree of OSV `.yaml`/`.json` files, and
always says how old that data is: the newest `modified` timestamp in it. An old
snapshot knows nothing of what came after.

Matching follows the OSV schema (https://ossf.github.io/osv-schema/):

- an advisory affects a version listed in `affected[].versions`, or one inside
  an `ECOSYSTEM` range: from `introduced` up to `fixed` (excluded) or
  `last_affected` (included), in PEP 440 order;
- `GIT` ranges name commits, not releases, and are ignored;
- withdrawn advisories are ignored;
- package names are compared after PEP 503 normalisation.

    python -m quaylock.supply.audit --advisories PATH (--lock FILE | --installed)

Exit status: 0 when nothing is known, 1 when a finding exists, 2 on bad input.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml
from packaging.version import InvalidVersion, Version

# Every scalar loads as a string: the default loader would turn a version such
# as 1.10 into the float 1.1, and timestamps into datetimes.
_YamlLoader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)

ADVISORY_SUFFIXES = (".yaml", ".yml", ".json")
# The largest advisory file read (the PyPA snapshot's largest is 17 KB).
_MAX_FILE_BYTES = 4 * 1024 * 1024
ECOSYSTEM = "PyPI"
SUMMARY_WIDTH = 120


# Advisory data older than this is said to be old (not refused: an
# air-gapped site may sync monthly).
STALE_DAYS = 30


class AdvisoryError(ValueError):
    """The advisory folder is missing, or a file in it is not an OSV advisory."""


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it: lower case, every run of
    `-`, `_` and `.` one `-`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


# --- What an advisory says ------------------------------------------------


@dataclass(frozen=True)
class Range:
    """One ECOSYSTEM range: its events in PEP 440 order.

    A boundary of None is "before every release": an `introduced` of "0", or
    one that is not a PEP 440 version. An unreadable `fixed` or
    `last_affected` is left out, so the range stays open: doubt widens a range
    rather than hiding a vulnerability.
    """

    events: tuple[tuple[str, Version | None], ...]

    @classmethod
    def from_osv(cls, events: Iterable[dict]) -> Range:
        kept: list[tuple[str, Version | None]] = []
        for event in events:
            for kind, at in event.items():
                version = _version(str(at))
                if kind == "introduced":
                    kept.append((kind, None if str(at) == "0" else version))
                elif kind in ("fixed", "last_affected") and version is not None:
                    kept.append((kind, version))
        # Stable sort: None (the start) first; events at one version keep
        # their order in the file.
        kept.sort(key=lambda event: (event[1] is not None, event[1] or Version("0")))
        return cls(tuple(kept))

    def contains(self, version: Version) -> bool:
        affected = False
        for kind, at in self.events:
            if at is not None and at > version:
                break  # later events cannot change the answer
            if kind == "introduced":
                affected = True
            elif kind == "fixed":
                affected = False  # fixed at or before this version
            elif kind == "last_affected" and at is not None and at < version:
                affected = False
        return affected


@dataclass(frozen=True)
class Affected:
    """What one advisory says of one package."""

    package: str  # normalised
    versions: frozenset[Version | str]  # parsed; as written when not PEP 440
    ranges: tuple[Range, ...]
    fixed: tuple[str, ...]  # every `fixed` event of the ECOSYSTEM ranges

    def contains(self, version: str) -> bool:
        # Parsed, 1.5 and 1.5.0 are one version (they compare and hash equal).
        parsed = _version(version)
        if (parsed or version) in self.versions:
            return True
        # A version that is not PEP 440 has no order: only the list can name it.
        return parsed is not None and any(r.contains(parsed) for r in self.ranges)

    def fixed_after(self, version: str) -> tuple[str, ...]:
        """The releases that fix it above `version` (an older branch's fix is
        no way out); unreadable ones are kept, they are the advisory's word."""
        parsed = _version(version)
        later = []
        for fixed in self.fixed:
            at = _version(fixed)
            if at is None or parsed is None or at > parsed:
                later.append((at is None, at or Version("0"), fixed))
        return tuple(fixed for *_, fixed in sorted(set(later)))


@dataclass(frozen=True)
class Advisory:
    """One OSV advisory, reduced to what a finding reports."""

    id: str
    aliases: tuple[str, ...]
    summary: str
    severity: str | None  # a CVSS vector, when the advisory gives one
    affected: tuple[Affected, ...]  # PyPI entries only


def _first_sentence(details: str) -> str:
    text = " ".join(details.split())
    # A full stop before a capital or the end: "e.g. to insert" goes on.
    match = re.search(r"[.!?](?=\s+[A-Z(`\"']|$)", text)
    return text[: match.end()] if match else text


def _summary(osv: dict) -> str:
    text = " ".join(str(osv.get("summary") or "").split())
    text = text or _first_sentence(str(osv.get("details") or ""))
    if len(text) > SUMMARY_WIDTH:
        # Cut between words, so that what is left still reads.
        cut = text[: SUMMARY_WIDTH - 2]
        text = (cut.rsplit(" ", 1)[0] if " " in cut else cut[:-1]).rstrip() + "..."
    return text


def _severity(osv: dict) -> str | None:
    scores = list(osv.get("severity") or [])
    for affected in osv.get("affected") or []:
        scores.extend(affected.get("severity") or [])
    for score in scores:
        if str(score.get("type", "")).startswith("CVSS"):
            return str(score.get("score"))
    return None


def _affected(entry: dict) -> Affected | None:
    package = entry.get("package") or {}
    if package.get("ecosystem") != ECOSYSTEM or not package.get("name"):
        return None
    versions = {
        _version(str(listed)) or str(listed) for listed in entry.get("versions") or []
    }
    ranges, fixed = [], []
    for osv_range in entry.get("ranges") or []:
        if osv_range.get("type") != "ECOSYSTEM":
            continue
        events = osv_range.get("events") or []
        ranges.append(Range.from_osv(events))
        fixed.extend(str(e["fixed"]) for e in events if "fixed" in e)
    return Affected(
        package=normalize(str(package["name"])),
        versions=frozenset(versions),
        ranges=tuple(ranges),
        fixed=tuple(fixed),
    )


def parse_advisory(path: Path, osv: object) -> Advisory | None:
    """One OSV document as an Advisory; None when it is withdrawn.

    Raises:
        AdvisoryError: the document is not a mapping with an `id`.
    """
    if not isinstance(osv, dict) or not osv.get("id"):
        raise AdvisoryError(
            f"{path}: not an OSV advisory (expected a mapping with an 'id')"
        )
    if osv.get("withdrawn"):
        return None
    try:
        affected = [_affected(entry) for entry in osv.get("affected") or []]
        return Advisory(
            id=str(osv["id"]),
            aliases=tuple(str(alias) for alias in osv.get("aliases") or []),
            summary=_summary(osv),
            severity=_severity(osv),
            affected=tuple(entry for entry in affected if entry is not None),
        )
    except (AttributeError, TypeError, KeyError) as error:
        # A field of the wrong shape (a string where a mapping belongs):
        # refused like an unreadable file, never taken as "no finding".
        raise AdvisoryError(
            f"{path}: not an OSV advisory: a field has the wrong shape ({error})"
        ) from None


def _read(path: Path) -> object:
    """An advisory file, parsed. Hostile files are refused, not expanded:
    one over _MAX_FILE_BYTES, YAML with aliases (a few hundred bytes of
    them can stand for gigabytes), nesting too deep to parse."""
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_FILE_BYTES + 1)
    except OSError as error:
        raise AdvisoryError(f"{path}: cannot be read: {error}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise AdvisoryError(f"{path}: over {_MAX_FILE_BYTES} bytes, not an advisory")
    try:
        if path.suffix == ".json":
            return json.loads(data)
        if any(
            isinstance(e, yaml.AliasEvent) for e in yaml.parse(data, Loader=_YamlLoader)
        ):
            raise AdvisoryError(f"{path}: YAML aliases are not allowed in an advisory")
        return yaml.load(data, Loader=_YamlLoader)
    except (ValueError, yaml.YAMLError, RecursionError) as error:
        if isinstance(error, AdvisoryError):
            raise
        raise AdvisoryError(f"{path}: not readable as OSV: {error}") from None


# --- Where the files are --------------------------------------------------


def _is_pypa(folder: Path) -> bool:
    """The PyPA database's layout: vulns/<package>/<id>.yaml."""
    return (folder / "vulns").is_dir()


def _walk(folder: Path) -> Iterator[Path]:
    """Every advisory file under `folder`, in a stable order. Hidden files
    and folders (.git, .github, .id-allocator) hold no advisories."""
    for parent, folders, files in os.walk(folder):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(files):
            if name.endswith(ADVISORY_SUFFIXES) and not name.startswith("."):
                yield Path(parent, name)


def _all_files(folder: Path) -> Iterator[Path]:
    return _walk(folder / "vulns" if _is_pypa(folder) else folder)


def _files_for(folder: Path, packages: set[str]) -> Iterator[Path]:
    """The files that may concern `packages`. In the PyPA layout that is only
    their own folders; folder names are normalised too (one is `jw.util`)."""
    if not _is_pypa(folder):
        yield from _walk(folder)
        return
    with os.scandir(folder / "vulns") as entries:
        names = sorted(entry.name for entry in entries if entry.is_dir())
    for name in names:
        if normalize(name) in packages:
            yield from _walk(folder / "vulns" / name)


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise AdvisoryError(
            f"no advisory folder at {folder}: expected a folder of OSV "
            ".yaml/.json files, such as a snapshot of the PyPA advisory database"
        )


# --- How old the data is --------------------------------------------------

_MODIFIED = re.compile(rb"""^modified:\s*['"]?([0-9][^'"\s]*)""")


def _timestamp(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _modified(path: Path) -> datetime | None:
    # Parsing all 2,661 files of the PyPA snapshot takes seconds; the top-level
    # `modified:` line (column 0 in block YAML) is all the date needs.
    if path.suffix != ".json":
        with path.open("rb") as file:
            for line in file:
                if match := _MODIFIED.match(line):
                    return _timestamp(match.group(1).decode())
    # JSON, or YAML written another way: read it whole. A broken file only
    # leaves the date out here; loading it for an audit refuses it.
    try:
        osv = _read(path)
    except AdvisoryError:
        return None
    return _timestamp(str(osv.get("modified", ""))) if isinstance(osv, dict) else None


def data_date(folder: Path) -> datetime:
    """The newest `modified` timestamp among all advisory files in `folder`
    (not only those of the audited packages).

    Raises:
        AdvisoryError: `folder` is not a folder, or holds no dated advisory:
            an empty or half-synced mirror must not pass a lock as clean.
    """
    folder = Path(folder)
    _check_folder(folder)
    dates = [_modified(path) for path in _all_files(folder)]
    if not dates:
        raise AdvisoryError(
            f"no advisories in {folder}: expected OSV .yaml/.json files (an "
            "empty or unsynced mirror cannot show that anything is safe)"
        )
    newest = max((date for date in dates if date is not None), default=None)
    if newest is None:
        raise AdvisoryError(
            f"none of the {len(dates)} advisories in {folder} says when it was "
            "modified: the data's age cannot be told"
        )
    return newest


# --- The advisories an audit needs ----------------------------------------


@dataclass
class Advisories:
    """The advisories loaded for a set of packages, and how old the data is."""

    folder: Path
    layout: str  # "PyPA snapshot" or "OSV folder"
    newest: datetime
    packages: frozenset[str]  # normalised names loaded
    by_package: dict[str, list[tuple[Advisory, Affected]]]

    @classmethod
    def load(cls, folder: Path, names: Iterable[str]) -> Advisories:
        """The advisories that concern `names`, and the date of the data.

        Raises:
            AdvisoryError: `folder` is missing, or a file that concerns one
                of `names` is not OSV (a broken file must not pass as clean).
        """
        folder = Path(folder)
        _check_folder(folder)
        packages = frozenset(normalize(name) for name in names)
        by_package: dict[str, list[tuple[Advisory, Affected]]] = {}
        for path in _files_for(folder, set(packages)):
            advisory = parse_advisory(path, _read(path))
            for affected in advisory.affected if advisory else ():
                if affected.package in packages:
                    by_package.setdefault(affected.package, []).append(
                        (advisory, affected)
                    )
        return cls(
            folder=folder,
            layout="PyPA snapshot" if _is_pypa(folder) else "OSV folder",
            newest=data_date(folder),
            packages=packages,
            by_package=by_package,
        )

    def date_line(self) -> str:
        newest = self.newest.astimezone(UTC)
        line = (
            f"advisories: {self.folder} ({self.layout}, newest entry {newest.date()})"
        )
        age = (datetime.now(UTC) - newest).days
        if age > STALE_DAYS:
            line += f"; warning: {age} days old, so it knows of nothing newer"
        return line


# --- What is audited ------------------------------------------------------


def installed() -> dict[str, str]:
    """The distributions installed in the running Python, by normalised name.
    When one is installed twice, the first on sys.path wins, as for import."""
    found: dict[str, str] = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name and normalize(name) not in found:
            found[normalize(name)] = distribution.version
    return found


# name[extras]==version, then maybe an environment marker; nothing else.
_PIN = re.compile(
    r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[[^\]]*\])?"
    r"\s*==\s*(?P<version>[^\s;,=*<>!~]+)\s*(?:;.*)?"
)
# Options that bring in requirements this file does not pin itself
# (-r other.txt, -rother.txt, -e ./path, --editable=...).
_UNPINNED_OPTION = re.compile(r"-[re]|--requirement\b|--editable\b")


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, line) with comments dropped and `\\`
    continuations joined, as pip reads a requirements file."""
    start, parts = 0, []
    for number, line in enumerate(text.splitlines(), start=1):
        line = re.sub(r"(^|\s)#.*", "", line)
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1])
            continue
        parts.append(line)
        joined = " ".join(part.strip() for part in parts).strip()
        parts = []
        if joined:
            yield start, joined
    if parts and (joined := " ".join(p.strip() for p in parts).strip()):
        yield start, joined


def locked(path: Path) -> dict[str, str]:
    """The pins of a pip-compile lock file, by normalised name.

    Raises:
        ValueError: a requirement is not pinned with `==`, or a package is
            pinned twice to different versions; the message names the line.
    """
    path = Path(path)
    pins: dict[str, tuple[str, int]] = {}
    for number, line in _logical_lines(path.read_text(encoding="utf-8")):
        if line.startswith("-"):
            if _UNPINNED_OPTION.match(line):
                raise ValueError(
                    f"{path}:{number}: {line!r} is not a pin; a lock file lists "
                    "every requirement itself as name==version"
                )
            continue  # index URLs, constraints: they add no packages
        # Per-requirement options (--hash=...) follow the requirement.
        requirement = re.split(r"\s--", line, maxsplit=1)[0].strip()
        pin = _PIN.fullmatch(requirement)
        if pin is None:
            raise ValueError(
                f"{path}:{number}: {requirement!r} is not pinned with ==; "
                "a lock file pins each requirement to one version, "
                "e.g. name==1.2.3 (as pip-compile writes it)"
            )
        name, version = normalize(pin["name"]), pin["version"]
        if name in pins and pins[name][0] != version:
            raise ValueError(
                f"{path}:{number}: {name} is pinned to {version} here and to "
                f"{pins[name][0]} on line {pins[name][1]}; expected one pin"
            )
        pins[name] = (version, number)
    return {name: version for name, (version, _) in pins.items()}


# --- The audit ------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One advisory that affects one audited (package, version)."""

    package: str
    version: str
    advisory_id: str
    aliases: tuple[str, ...]  # CVE and GHSA ids
    fixed: tuple[str, ...]  # releases above `version` that fix it
    summary: str
    severity: str | None  # CVSS vector, when the advisory gives one

    def line(self) -> str:
        aliases = f" ({' '.join(self.aliases)})" if self.aliases else ""
        fixed = f"fixed in {', '.join(self.fixed)}" if self.fixed else "no fix known"
        return (
            f"{self.package} {self.version} {self.advisory_id}{aliases} "
            f"{fixed}: {self.summary}"
        )


def audit(packages: dict[str, str], advisories: Advisories) -> list[Finding]:
    """A finding for each (package, version) that a loaded advisory affects,
    sorted by package and advisory id.

    Raises:
        ValueError: a package was not among the names the advisories were
            loaded for (in the PyPA layout its folder was never read).
    """
    wanted = {normalize(name): version for name, version in packages.items()}
    unloaded = sorted(set(wanted) - advisories.packages)
    if unloaded:
        raise ValueError(
            f"advisories were not loaded for {', '.join(unloaded)}; "
            "pass every audited name to Advisories.load"
        )
    findings = {}
    for name, version in wanted.items():
        for advisory, affected in advisories.by_package.get(name, ()):
            if affected.contains(version):
                # One finding per advisory, even when it lists the package twice.
                findings.setdefault(
                    (name, advisory.id),
                    Finding(
                        package=name,
                        version=version,
                        advisory_id=advisory.id,
                        aliases=advisory.aliases,
                        fixed=affected.fixed_after(version),
                        summary=advisory.summary,
                        severity=advisory.severity,
                    ),
                )
    return [findings[key] for key in sorted(findings)]


def audit_installed(folder: Path) -> tuple[str, list[Finding]]:
    """The date line and the findings for the running Python's distributions;
    for `quaylock doctor --deps`.

    Raises:
        AdvisoryError: `folder` is missing, or an advisory in it is broken.
    """
    packages = installed()
    advisories = Advisories.load(folder, packages)
    return advisories.date_line(), audit(packages, advisories)


# --- Command line ---------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quaylock.supply.audit",
        description="Audit pinned or installed Python distributions against a "
        "local folder of OSV advisories, offline.",
    )
    parser.add_argument(
        "--advisories",
        type=Path,
        required=True,
        metavar="PATH",
        help="a PyPA advisory-database snapshot or a folder of OSV .yaml/.json",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--lock", type=Path, metavar="FILE", help="a pip-compile lock")
    source.add_argument(
        "--installed", action="store_true", help="this Python's distributions"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document")
    args = parser.parse_args(argv)

    try:
        if args.lock is not None:
            if not args.lock.is_file():
                raise ValueError(f"no lock file at {args.lock}")
            packages, audited = locked(args.lock), f"pinned in {args.lock}"
        else:
            packages, audited = installed(), f"installed in {sys.prefix}"
        advisories = Advisories.load(args.advisories, packages)
        findings = audit(packages, advisories)
    except (OSError, ValueError) as error:
        print(f"audit: {error}", file=sys.stderr)
        return 2

    if args.json:
        newest = advisories.newest
        report = {
            "advisories": str(advisories.folder),
            "layout": advisories.layout,
            "newest_entry": newest.astimezone(UTC).isoformat() if newest else None,
            "audited": audited,
            "packages": len(packages),
            "findings": [asdict(finding) for finding in findings],
        }
        print(json.dumps(report, indent=2))
    else:
        print(advisories.date_line())
        for finding in findings:
            print(finding.line())
        if findings:
            affected = len({finding.package for finding in findings})
            noun = "vulnerability" if len(findings) == 1 else "vulnerabilities"
            print(
                f"{len(findings)} known {noun} in {affected} of "
                f"{len(packages)} packages {audited}"
            )
        else:
            print(f"no known vulnerabilities in {len(packages)} packages {audited}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
