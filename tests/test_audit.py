"""The offline dependency audit (quaylock.supply.audit).

First the OSV matching rules, on advisories written here; then the real PyPA
snapshot: known-vulnerable pins are flagged with their advisory ids, and our
own locks and test venv are checked. The snapshot is found through
QUAYLOCK_ADVISORIES, else where the Makefile looks; without it these tests
fail rather than skip, so a missing snapshot cannot pass as a clean audit.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from quaylock.supply.audit import (
    Advisories,
    AdvisoryError,
    Finding,
    audit,
    audit_installed,
    data_date,
    installed,
    locked,
)

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ("requirements.lock", "requirements-test.lock")
CVSS = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:L/A:N"


def run_audit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quaylock.supply.audit", *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


# --- Matching rules, on a purpose-built OSV folder ------------------------


@pytest.fixture
def osv_folder(tmp_path) -> Path:
    """A flat folder of OSV files, nested anyhow, all about demo-pkg (spelt
    as the advisories spell it: Demo_Pkg, demo.pkg)."""
    folder = tmp_path / "osv"
    write(
        folder / "a" / "RANGE-1.yaml",
        f"""
        id: RANGE-1
        modified: 2024-02-29T12:00:00Z
        aliases: [CVE-2099-0001, GHSA-aaaa-bbbb-cccc]
        summary: Two ranges, each fixed
        details: Ignored, the summary is given.
        severity:
        - type: CVSS_V3
          score: {CVSS}
        affected:
        - package: {{ecosystem: PyPI, name: Demo_Pkg}}
          ranges:
          - type: GIT
            events: [{{introduced: "0"}}, {{fixed: 0123abcd}}]
          - type: ECOSYSTEM
            events: [{{introduced: "1.0"}}, {{fixed: 1.4.2}}]
          - type: ECOSYSTEM
            events: [{{introduced: "2.0"}}, {{fixed: "2.1"}}]
    """,
    )
    write(
        folder / "a" / "b" / "LIST-1.yaml",
        """
        id: LIST-1
        # An offset: this is 2024-02-29T23:30Z, the newest entry.
        modified: '2024-03-01T01:30:00+02:00'
        details: >-
          Demo-pkg trusts e.g. any header.
          Nobody should.
        affected:
        - package: {ecosystem: PyPI, name: demo.pkg}
          versions: ["0.9", 1.5.0]
    """,
    )
    write(
        folder / "WITHDRAWN-1.yaml",
        """
        id: WITHDRAWN-1
        modified: "2024-01-01T00:00:00Z"
        withdrawn: "2024-01-02T00:00:00Z"
        details: Not a vulnerability after all.
        affected:
        - package: {ecosystem: PyPI, name: demo-pkg}
          ranges:
          - type: ECOSYSTEM
            events: [{introduced: "0"}]
    """,
    )
    write(
        folder / "LAST-1.yaml",
        f"""
        id: LAST-1
        modified: 2023-05-05T05:05:05.12345Z
        details: {"word " * 60}and no full stop
        affected:
        - package: {{ecosystem: PyPI, name: demo-pkg}}
          ranges:
          - type: ECOSYSTEM
            events: [{{introduced: "3.0"}}, {{last_affected: "3.2"}}]
    """,
    )
    write(
        folder / "npm" / "NPM-1.yaml",
        """
        id: NPM-1
        modified: 2023-01-01T00:00:00Z
        details: Same name, other ecosystem.
        affected:
        - package: {ecosystem: npm, name: demo-pkg}
          ranges:
          - type: ECOSYSTEM
            events: [{introduced: "0"}]
    """,
    )
    pre = {
        "id": "PRE-1",
        "modified": "2022-01-01T00:00:00Z",
        "summary": "Pre-releases sit before their release",
        "affected": [
            {
                "package": {"ecosystem": "PyPI", "name": "demo-pkg"},
                "ranges": [
                    {
                        "type": "ECOSYSTEM",
                        "events": [{"introduced": "5.0"}, {"fixed": "5.1.0"}],
                    }
                ],
            }
        ],
    }
    (folder / "json").mkdir()
    (folder / "json" / "PRE-1.json").write_text(json.dumps(pre))
    return folder


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("0.9", {"LIST-1"}),
        ("0.9.0", {"LIST-1"}),  # PEP 440 equal to the listed 0.9
        ("1.0", {"RANGE-1"}),  # introduced is included
        ("1.4.1", {"RANGE-1"}),
        ("1.4.2", set()),  # fixed is excluded
        ("1.5", {"LIST-1"}),
        ("2.0.5", {"RANGE-1"}),  # the second range
        ("2.1", set()),
        ("3.0rc1", set()),  # a pre-release comes before its introduced release
        ("3.0", {"LAST-1"}),
        ("3.2", {"LAST-1"}),  # last_affected is included
        ("3.2.post1", set()),
        ("3.2.1", set()),
        ("5.0", {"PRE-1"}),
        ("5.1.0rc1", {"PRE-1"}),  # before 5.1.0, so not yet fixed
        ("5.1.0", set()),
        ("9.9", set()),  # only the withdrawn one and the npm one name it
        ("not-a-version", set()),
    ],
)
def test_osv_ranges_and_lists_decide_what_is_affected(osv_folder, version, expected):
    advisories = Advisories.load(osv_folder, ["demo-pkg"])
    findings = audit({"Demo.Pkg": version}, advisories)
    assert {f.advisory_id for f in findings} == expected


def test_findings_carry_ids_aliases_fixes_summary_and_severity(osv_folder):
    advisories = Advisories.load(osv_folder, ["demo_pkg"])
    assert audit({"demo-pkg": "1.4.1"}, advisories) == [
        Finding(
            package="demo-pkg",
            version="1.4.1",
            advisory_id="RANGE-1",
            aliases=("CVE-2099-0001", "GHSA-aaaa-bbbb-cccc"),
            fixed=("1.4.2", "2.1"),
            summary="Two ranges, each fixed",
            severity=CVSS,
        )
    ]
    # An older branch's fix is no way out of 2.0.5.
    assert audit({"demo-pkg": "2.0.5"}, advisories)[0].fixed == ("2.1",)
    # Without a summary, the first sentence of the details ("e.g." goes on).
    [listed] = audit({"demo-pkg": "1.5.0"}, advisories)
    assert (listed.summary, listed.fixed, listed.severity) == (
        "Demo-pkg trusts e.g. any header.",
        (),
        None,
    )
    [long] = audit({"demo-pkg": "3.1"}, advisories)
    assert len(long.summary) <= 120 and long.summary.endswith(" word...")


def test_the_data_date_is_the_newest_modified_in_utc(osv_folder):
    newest = data_date(osv_folder)
    assert newest.isoformat() == "2024-03-01T01:30:00+02:00"
    advisories = Advisories.load(osv_folder, [])
    line = advisories.date_line()
    assert line.startswith(
        f"advisories: {osv_folder} (OSV folder, newest entry 2024-02-29); warning: "
    )
    # Old data is said to be old, with its age in days.
    age = (datetime.now(UTC) - newest).days
    assert line.endswith(f"{age} days old, so it knows of nothing newer")


def test_a_folder_without_advisories_is_refused_not_passed(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "readme").mkdir()
    (tmp_path / "readme" / "readme.txt").write_text("nothing here")
    lock = tmp_path / "requirements.lock"
    lock.write_text("cryptography==41.0.0 \\\n    --hash=sha256:11\n")
    for folder in ("empty", "readme"):
        result = run_audit("--advisories", str(tmp_path / folder), "--lock", str(lock))
        assert result.returncode == 2, result.stdout
        assert "no advisories in" in result.stderr
    undated = tmp_path / "undated"
    undated.mkdir()
    (undated / "X-1.json").write_text('{"id": "X-1", "affected": []}')
    result = run_audit("--advisories", str(undated), "--lock", str(lock))
    assert result.returncode == 2 and "says when it was modified" in result.stderr


def test_pypa_layout_reads_only_the_audited_packages_folders(tmp_path):
    db = tmp_path / "db"
    write(
        db / "vulns" / "Demo_Pkg" / "DEMO-1.yaml",
        """
        id: DEMO-1
        modified: 2024-01-01T00:00:00Z
        details: Found.
        affected:
        - package: {ecosystem: PyPI, name: demo-pkg}
          versions: ["1.0"]
    """,
    )
    broken = write(db / "vulns" / "other" / "BROKEN.yaml", "id: [unclosed\n")

    advisories = Advisories.load(db, ["demo-pkg"])
    assert advisories.layout == "PyPA snapshot"
    assert [f.advisory_id for f in audit({"demo-pkg": "1.0"}, advisories)] == ["DEMO-1"]
    # A broken file is refused once it matters, never passed as clean.
    with pytest.raises(AdvisoryError, match=str(broken)):
        Advisories.load(db, ["other"])
    # Only loaded names may be audited: the others' folders were never read.
    with pytest.raises(ValueError, match="not loaded for other"):
        audit({"other": "1.0"}, advisories)


# --- Lock files -----------------------------------------------------------

PIP_COMPILE_LOCK = """\
#
# This file is autogenerated by pip-compile with Python 3.11
#
--extra-index-url file:///opt/pypi/simple

Demo_Pkg[extra]==1.4.1 \\
    --hash=sha256:0000000000000000000000000000000000000000000000000000000000000000 \\
    --hash=sha256:1111111111111111111111111111111111111111111111111111111111111111
    # via -r requirements.in
other.pkg==2.0 ; python_version >= "3.11" \\
    --hash=sha256:2222222222222222222222222222222222222222222222222222222222222222
    # via
    #   demo-pkg
"""


def test_a_pip_compile_lock_gives_its_pins_by_normalised_name(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(PIP_COMPILE_LOCK)
    assert locked(lock) == {"demo-pkg": "1.4.1", "other-pkg": "2.0"}


@pytest.mark.parametrize(
    "line",
    [
        "requests",
        "requests>=2.0",
        "requests==2.*",
        "requests===2.0",
        "requests==2.0,<3",
        "requests @ https://example.invalid/requests-2.0-py3-none-any.whl",
        "-e ./src",
        "-r other.txt",
    ],
)
def test_a_lock_line_without_an_exact_pin_is_refused(tmp_path, line):
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# pins\nhttpx==0.29.0\n{line}\n")
    with pytest.raises(ValueError, match=f"{lock}:3: .* not"):
        locked(lock)


def test_unpinned_lock_exits_2_naming_the_line(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("httpx==0.29.0 \\\n    --hash=sha256:00\nrequests>=2.0\n")
    result = run_audit("--advisories", str(tmp_path), "--lock", str(lock))
    assert result.returncode == 2
    assert f"{lock}:3: 'requests>=2.0' is not pinned with ==" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_advisory_folder_exits_2(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("httpx==0.29.0\n")
    result = run_audit("--advisories", str(tmp_path / "nowhere"), "--lock", str(lock))
    assert result.returncode == 2
    assert f"no advisory folder at {tmp_path / 'nowhere'}" in result.stderr


# --- The real PyPA snapshot -----------------------------------------------


# Looked up in the snapshot: each lists the version, or a range holds it.
# PYSEC-2022-43059 lists aiohttp 3.8.4 too but is withdrawn.
AIOHTTP_3_8_4 = {
    "PYSEC-2023-120", "PYSEC-2023-246", "PYSEC-2023-250",
    "PYSEC-2023-251", "PYSEC-2024-24", "PYSEC-2024-26",
}  # fmt: skip
CRYPTOGRAPHY_41_0_0 = {"PYSEC-2023-112", "PYSEC-2023-254"}


def test_known_vulnerable_pins_are_flagged(snapshot, tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "aiohttp==3.8.4 \\\n    --hash=sha256:00\n    # via -r requirements.in\n"
        "cryptography==41.0.0 \\\n    --hash=sha256:11\n"
    )
    result = run_audit("--advisories", str(snapshot), "--lock", str(lock))
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        f"advisories: {snapshot} (PyPA snapshot, newest entry 2024-10-10); warning: "
    )
    flagged = {tuple(line.split()[:3]) for line in lines[1:-1]}
    assert flagged == {("aiohttp", "3.8.4", id) for id in AIOHTTP_3_8_4} | {
        ("cryptography", "41.0.0", id) for id in CRYPTOGRAPHY_41_0_0
    }
    assert (
        "aiohttp 3.8.4 PYSEC-2023-250 (CVE-2023-49081 GHSA-q3qx-c6g2-7pw2) "
        "fixed in 3.9.0: " in result.stdout
    )
    assert lines[-1] == f"8 known vulnerabilities in 2 of 2 packages pinned in {lock}"

    as_json = json.loads(
        run_audit("--advisories", str(snapshot), "--lock", str(lock), "--json").stdout
    )
    assert as_json["newest_entry"].startswith("2024-10-10")
    [pysec_2023_250] = [
        f for f in as_json["findings"] if f["advisory_id"] == "PYSEC-2023-250"
    ]
    assert pysec_2023_250["severity"] == CVSS
    assert pysec_2023_250["fixed"] == ["3.9.0"]


@pytest.mark.parametrize("lock", LOCKS)
def test_our_own_locks_pass(snapshot, lock):
    result = run_audit("--advisories", str(snapshot), "--lock", lock)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "newest entry 2024-10-10" in result.stdout.splitlines()[0]
    assert f"no known vulnerabilities in {len(locked(ROOT / lock))} packages" in (
        result.stdout
    )


def test_the_installed_check_runs_on_the_test_venv(snapshot):
    packages = installed()
    for name in ("pytest", "packaging", "pyyaml", "quaylock"):
        assert packages[name] == importlib.metadata.version(name)

    date_line, findings = audit_installed(snapshot)
    assert "(PyPA snapshot, newest entry 2024-10-10); warning: " in date_line
    # The venv's own pip is the locked one, not the older one `python -m
    # venv` brings: nothing installed is known to be vulnerable.
    assert packages["pip"] == locked(ROOT / "requirements.lock")["pip"]
    assert findings == []


def test_the_whole_snapshot_is_dated_by_its_newest_entry(snapshot):
    assert data_date(snapshot).isoformat() == "2024-10-10T17:22:00.587279+00:00"


def test_a_flat_walk_of_the_snapshot_finds_the_same(snapshot):
    """The same files read through the any-layout walk (slower: it parses
    every file) give the same findings as the per-package folders."""
    packages = {"aiohttp": "3.8.4", "cryptography": "41.0.0", "jw-util": "1.0"}
    by_folder = audit(packages, Advisories.load(snapshot, packages))
    walked = audit(packages, Advisories.load(snapshot / "vulns", packages))
    assert by_folder == walked
    assert len(by_folder) == len(AIOHTTP_3_8_4 | CRYPTOGRAPHY_41_0_0) + 1
    # Its folder is vulns/jw.util: folder names are normalised too.
    assert ("jw-util", "PYSEC-2020-341") in {
        (f.package, f.advisory_id) for f in by_folder
    }


@pytest.mark.parametrize(
    "name, text",
    [
        # A few hundred bytes of aliases that stand for 9**9 strings.
        ("bomb.yaml", "id: X\nx0: &a0 [l,l,l,l,l,l,l,l,l]\n" + "".join(
            f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)
        ) + "modified: *a8\n"),
        ("deep.json", "[" * 100_000),
        ("shape.yaml", "id: X\nmodified: 2024-01-01T00:00:00Z\naffected: [hello]\n"),
        ("package.yaml", "id: X\nmodified: 2024-01-01T00:00:00Z\naffected:\n- package: pyyaml\n"),
        ("events.yaml", "id: X\nmodified: 2024-01-01T00:00:00Z\naffected:\n"
                        "- package: {ecosystem: PyPI, name: demo-pkg}\n"
                        "  ranges: [{type: ECOSYSTEM, events: [x]}]\n"),
    ],
)  # fmt: skip
def test_a_hostile_advisory_is_refused_with_exit_2_not_expanded(tmp_path, name, text):
    folder = tmp_path / "osv"
    write(folder / "GOOD-1.yaml", "id: GOOD-1\nmodified: 2024-01-01T00:00:00Z\n")
    write(folder / name, text)
    lock = write(
        tmp_path / "requirements.lock", "demo-pkg==1.0 \\\n    --hash=sha256:00\n"
    )
    result = run_audit("--advisories", str(folder), "--lock", str(lock))
    assert result.returncode == 2, result.stdout + result.stderr
    assert name in result.stderr and "Traceback" not in result.stderr
