"""`quaylock doctor`: audit a configuration, its files and, with --url, a
running registry; print each finding with its severity and its fix.

Exit status: 1 when any finding is high (so that it can gate a deployment),
0 otherwise, 2 when the input cannot be used (an unreadable or invalid
configuration, a bad --url, an unusable advisory database).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from quaylock import config as config_mod
from quaylock import doctor
from quaylock.cli import add_store_options


def add_parsers(commands) -> None:
    parser = commands.add_parser(
        "doctor",
        help="audit a configuration, its files and a running registry; "
        "exit 1 on any high finding",
    )
    add_store_options(parser)
    parser.add_argument(
        "--url", help="also check the registry serving at this URL, as a stranger"
    )
    parser.add_argument(
        "--cafile", help="CA certificate that verifies --url (self-signed TLS)"
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON document on stdout"
    )
    parser.add_argument(
        "--deps", action="store_true",
        help="also audit installed dependencies against --advisories",
    )  # fmt: skip
    parser.add_argument(
        "--advisories", help="folder of OSV advisories (implies --deps)"
    )


def run(args) -> int:
    """Raises:
    ConfigError: the configuration cannot be read (main answers 2)."""
    from quaylock.cli.main import apply_flags

    if args.deps and not args.advisories:
        return _bad_input("--deps needs --advisories PATH (the advisory database)")
    args.deps = args.deps or bool(args.advisories)  # --advisories alone means it
    apply_flags(args)
    config = config_mod.load(os.environ.get("QUAYLOCK_CONFIG_FILE") or None)
    findings = doctor.check_config(config) + doctor.check_files(config)

    if args.url:
        try:
            findings += doctor.check_running(args.url, args.cafile)
        except ValueError as exc:
            return _bad_input(str(exc))

    date_line = None
    if args.deps:
        try:
            date_line, vulnerable = doctor.check_dependencies(Path(args.advisories))
        except (OSError, ValueError) as exc:
            return _bad_input(f"--advisories {args.advisories}: {exc}")
        findings += vulnerable + doctor.check_sbom()

    order = {severity: i for i, severity in enumerate(doctor.SEVERITIES)}
    findings.sort(key=lambda finding: order[finding.severity])
    counts = {s: sum(f.severity == s for f in findings) for s in doctor.SEVERITIES}
    if args.json:
        report = {"findings": [f.as_json() for f in findings], "counts": counts}
        if date_line is not None:
            report["advisories"] = date_line
        print(json.dumps(report, indent=2))
    else:
        _print_text(findings, counts, date_line)
    return 1 if counts[doctor.HIGH] else 0


def _printable(text: str) -> str:
    """`text` with control characters escaped: a message may quote what a
    server answered, and a hostile one could send terminal escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _print_text(findings: list, counts: dict, date_line: str | None) -> None:
    if date_line is not None:
        print(date_line)
    for finding in findings:
        message, fix = _printable(finding.message), _printable(finding.fix)
        print(f"{finding.severity.upper():<6}  {finding.code}: {message}")
        print(f"{'':<6}  fix: {fix}")
    summary = ", ".join(f"{counts[s]} {s}" for s in doctor.SEVERITIES)
    verdict = "fails (a high finding)" if counts[doctor.HIGH] else "passes"
    print(f"quaylock doctor: {summary}; {verdict}")


def _bad_input(message: str) -> int:
    print(f"quaylock doctor: {message}", file=sys.stderr)
    return 2
