"""What an installation tells about itself: its version to admins (never
to anonymous clients), its SBOM, and its schema, which `quaylock migrate`
moves on and an older quaylock refuses to touch."""

from __future__ import annotations

import importlib.metadata
import json
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import quaylock
from quaylock.metadata.schema import SCHEMA_VERSION
from tests.conftest import start_server

ADMIN = ("admin", "admin-password-1")
ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "quaylock.cli.main", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def registry(make_server):
    return make_server(
        {"auth": {"mode": "token"}}, env={"QUAYLOCK_ADMIN_PASSWORD": ADMIN[1]}
    )


def test_the_version_is_pyprojects():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert quaylock.__version__ == declared["version"]
    printed = run("--version")
    assert printed.stdout.strip() == f"quaylock {declared['version']}"


def test_admins_read_versions_and_anonymous_clients_learn_none(registry):
    with registry.client() as client:
        report = client.get("/admin/v1/version", auth=ADMIN)
        assert report.status_code == 200, report.text
        body = report.json()
        assert body["quaylock"] == quaylock.__version__
        assert body["python"]["version"] == sys.version.split()[0]
        assert body["schema"] == {"code": SCHEMA_VERSION, "store": SCHEMA_VERSION}
        for name in ("granian", "cryptography", "pyjwt", "pyyaml"):
            assert body["dependencies"][name] == importlib.metadata.version(name)

        assert client.get("/admin/v1/version").status_code == 401
        assert (
            client.get("/admin/v1/version", auth=("admin", "wrong")).status_code == 401
        )
        # Nothing an anonymous client can reach names a version.
        versions = {quaylock.__version__, importlib.metadata.version("granian"),
                    sys.version.split()[0]}  # fmt: skip
        for answer in (
            client.get("/v2/"),
            client.get("/v2/no/such/manifests/x"),
            client.get("/nowhere"),
            client.get("/v2/token", params={"service": "quaylock"}, auth=("x", "y")),
            client.get("/admin/v1/version"),
        ):
            seen = answer.text + " ".join(
                f"{k}: {v}" for k, v in answer.headers.items()
            )
            assert not [v for v in versions if v in seen], (answer.url, seen)


def test_the_sbom_is_cyclonedx_and_matches_what_is_installed(registry):
    with registry.client() as client:
        answer = client.get("/admin/v1/sbom", auth=ADMIN)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"] == "application/vnd.cyclonedx+json"
        sbom = answer.json()
        assert sbom["bomFormat"] == "CycloneDX"
        assert sbom["metadata"]["component"]["name"] == "quaylock"
        tools = sbom["metadata"]["tools"]["components"]
        assert "cyclonedx-py" in [t["name"] for t in tools]
        listed = {c["name"].lower(): c["version"] for c in sbom["components"]}
        assert listed["granian"] == importlib.metadata.version("granian")
        assert listed["cryptography"] == importlib.metadata.version("cryptography")
        report = client.get("/admin/v1/version", auth=ADMIN).json()
        assert report["sbom"]["present"] is True
        assert report["sbom"]["differences"] == []
        assert client.get("/admin/v1/sbom").status_code == 401


def test_sbom_drift_names_each_difference():
    from quaylock.about import sbom_drift

    sbom = {"components": [
        {"type": "library", "name": "Granian", "version": "2.8.9"},
        {"type": "library", "name": "gone", "version": "1.0"},
        {"type": "library", "name": "PyYAML", "version": "6.0.4"},
    ]}  # fmt: skip
    present = {"granian": "2.9.0", "pyyaml": "6.0.4", "new-one": "0.1"}
    assert sbom_drift(sbom, present) == [
        "gone 1.0 is in the SBOM but not installed",
        "granian is 2.9.0, the SBOM says 2.8.9",
        "new-one 0.1 is installed but not in the SBOM",
    ]


def test_migrate_moves_a_store_on_and_an_older_quaylock_refuses_a_newer_one(
    tmp_path,
):
    # Where start_server below keeps its data.
    data = tmp_path / "serve" / "data"
    data.mkdir(parents=True)
    check = run("migrate", "--check", "--data", str(data))
    assert check.returncode == 1, check.stderr
    assert json.loads(check.stdout) == {
        "schema": None, "target": SCHEMA_VERSION, "migrated": False,
    }  # fmt: skip
    done = run("migrate", "--data", str(data))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["migrated"] is True
    assert run("migrate", "--check", "--data", str(data)).returncode == 0

    # A newer quaylock has been here: this one must not start on its store.
    database = sqlite3.connect(data / "metadata.db")
    database.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    database.commit()
    database.close()
    refused = run("migrate", "--data", str(data))
    assert refused.returncode == 2
    assert "upgrade quaylock" in refused.stderr
    for command in (
        ("quota",),
        ("gc", "--dry-run"),
        ("user", "list"),
        ("audit", "verify"),
    ):
        refused = run(*command, "--data", str(data))
        assert refused.returncode == 2, command
        assert (
            "upgrade quaylock" in refused.stderr and "Traceback" not in refused.stderr
        )
    with pytest.raises(RuntimeError, match="upgrade quaylock before starting it"):
        start_server(tmp_path / "serve")


def test_doctor_says_when_the_sbom_no_longer_matches(tmp_path, monkeypatch):
    from quaylock import about, doctor

    assert doctor.check_sbom() == []  # `make test` wrote it for this venv
    real = about.installed()
    monkeypatch.setattr(about, "installed", lambda: {**real, "granian": "0.0.1"})
    (stale,) = doctor.check_sbom()
    assert stale.code == "sbom-stale" and stale.severity == "low"
    assert "granian is 0.0.1, the SBOM says" in stale.message
    monkeypatch.setattr(about, "sbom_path", lambda: tmp_path / "none.json")
    (missing,) = doctor.check_sbom()
    assert missing.code == "sbom-missing" and "make sbom" in missing.message


def test_migration_8_gives_old_manifests_to_who_pushed_them(tmp_path):
    from quaylock.metadata.store import open_store

    url = f"sqlite:///{tmp_path / 'metadata.db'}"
    open_store(url).close()
    # A store as schema 7 left it: manifests with no pusher, and the audit
    # records of who pushed them (a user, a robot, anonymous).
    db = sqlite3.connect(tmp_path / "metadata.db")
    db.execute("INSERT INTO repositories VALUES (1, 'team/app', 0)")
    db.execute(
        "INSERT INTO robots VALUES ('robot$ci', 'carol', 'x', '[]', NULL, NULL, 0)"
    )
    for digest, size, subject in (("sha256:a", 100, "alice"), ("sha256:b", 30, "robot$ci"),
                                  ("sha256:c", 7, "anonymous")):  # fmt: skip
        db.execute(
            "INSERT INTO manifests (repository_id, digest, media_type, size, content, "
            "created_at) VALUES (1, ?, 'application/vnd.oci.image.manifest.v1+json', "
            "?, x'00', 0)", (digest, size),
        )  # fmt: skip
        db.execute(
            "INSERT INTO audit_log (time, action, subject, repository, tag, new_digest, "
            "prev_hash, hash) VALUES (0, 'tag.create', ?, 'team/app', 'v1', ?, '', '')",
            (subject, digest),
        )  # fmt: skip
    db.execute("UPDATE schema_version SET version = 7")
    db.commit()

    open_store(url).close()  # migrates
    assert dict(db.execute("SELECT digest, pushed_by FROM manifests")) == {
        "sha256:a": "alice", "sha256:b": "carol", "sha256:c": None,
    }  # fmt: skip
    assert dict(db.execute("SELECT name, bytes FROM usage WHERE scope = 'user'")) == {
        "alice": 100, "carol": 30,
    }  # fmt: skip
    db.close()


def test_an_sbom_that_is_not_cyclonedx_is_not_served_as_one(tmp_path, monkeypatch):
    from quaylock import about

    path = tmp_path / "sbom.cdx.json"
    monkeypatch.setattr(about, "sbom_path", lambda: path)
    assert about.read_sbom()[1].startswith("no SBOM at")
    path.write_text('{"bomFormat": "SPDX"}')
    assert "is not a CycloneDX document" in about.read_sbom()[1]
    path.write_text("{not json")
    assert "cannot be read" in about.read_sbom()[1]


def test_doctor_reads_the_stores_schema(tmp_path):
    from quaylock import config as config_mod
    from quaylock import doctor

    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    assert run("migrate", "--data", str(data)).returncode == 0
    config = config_mod.Config(data=str(data))
    assert not [f for f in doctor.check_files(config) if "schema" in f.message]
    database = sqlite3.connect(data / "metadata.db")
    for version, code, severity in ((SCHEMA_VERSION + 1, "schema-too-new", "high"),
                                    (SCHEMA_VERSION - 1, "migration-due", "low")):  # fmt: skip
        database.execute("UPDATE schema_version SET version = ?", (version,))
        database.commit()
        (found,) = [f for f in doctor.check_files(config) if f.code == code]
        assert found.severity == severity
    database.close()


def test_migrate_waits_for_no_server_and_a_running_server_is_not_migrated_under(
    make_server,
):
    server = make_server()
    refused = run("migrate", "--data", str(server.data))
    assert refused.returncode == 2
    assert "a quaylock server is running on" in refused.stderr
    # --check only reads: it may look while the server runs.
    assert run("migrate", "--check", "--data", str(server.data)).returncode == 0


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE schema_version SET version = 'abc'",
        "INSERT INTO schema_version VALUES (99)",
        "garbage",
    ],
)
def test_a_damaged_store_is_one_line_and_exit_2_everywhere(tmp_path, damage):
    data = tmp_path / "serve" / "data"
    data.mkdir(parents=True)
    assert run("migrate", "--data", str(data)).returncode == 0
    if damage == "garbage":
        (data / "metadata.db").write_bytes(b"not a database at all " * 100)
        for suffix in ("-wal", "-shm"):
            (data / f"metadata.db{suffix}").unlink(missing_ok=True)
    else:
        database = sqlite3.connect(data / "metadata.db")
        database.execute(damage)
        database.commit()
        database.close()
    for command in (("migrate",), ("migrate", "--check"), ("quota",), ("user", "list")):
        result = run(*command, "--data", str(data))
        assert result.returncode == 2, (command, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.startswith(
            "quaylock: "
        )
    with pytest.raises(RuntimeError, match="quaylock exited early"):
        start_server(tmp_path / "serve")
    assert "Traceback" not in (tmp_path / "serve" / "server.log").read_text()
