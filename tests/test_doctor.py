"""`quaylock doctor`: each misconfiguration it exists to catch, on a config
that is otherwise the hardened example, with its severity and exit status;
the hardened example itself passing; and real servers checked over --url.

The configurations are the hardened example with one change, so that a
finding can only come from that change.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from quaylock import doctor
from tests.conftest import start_server

HARDENED = Path(__file__).resolve().parent.parent / "docs/examples/hardened.yaml"
QUAYLOCK = Path(sys.executable).with_name("quaylock")
ADMIN_PASSWORD = "a-long-test-password-1"


def make_tls(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, mode 0600."""
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "365",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    key.chmod(0o600)
    return cert, key


def make_cosign_key(folder: Path) -> Path:
    path = folder / "cosign.pub"
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )
    return path


def hardened_settings(folder: Path) -> dict:
    """docs/examples/hardened.yaml with its /etc/quaylock placeholders
    replaced by real files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = make_tls(folder)
    cosign = make_cosign_key(folder)
    text = HARDENED.read_text()
    for placeholder, path in (
        ("/etc/quaylock/tls.crt", cert),
        ("/etc/quaylock/tls.key", key),
        ("/etc/quaylock/cosign.pub", cosign),
    ):
        assert placeholder in text, f"{placeholder} no longer in {HARDENED}"
        text = text.replace(placeholder, str(path))
    return yaml.safe_load(text)


@pytest.fixture(scope="module")
def hardened(tmp_path_factory):
    """The hardened settings, and a data folder a real server made with
    them (admin password from the environment, so no password file)."""
    folder = tmp_path_factory.mktemp("hardened")
    settings = hardened_settings(folder / "files")
    server = start_server(
        folder / "srv",
        settings,
        env={"QUAYLOCK_ADMIN_PASSWORD": ADMIN_PASSWORD},
        ca=Path(settings["tls"]["cert"]),
    )
    server.stop()
    assert (server.data / "metadata.db").is_file(), "the server made no store"
    assert list((server.data / "keys").glob("token-*.pem")), "no token key made"
    return types.SimpleNamespace(settings=settings, data=server.data)


def run_doctor(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUAYLOCK_")}
    return subprocess.run(
        [str(QUAYLOCK), "doctor", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=60, check=False,
    )  # fmt: skip


def audit(tmp_path: Path, settings: dict, data: Path, *args: str):
    """Run doctor --json on `settings` and `data`; (exit status, findings)."""
    config = tmp_path / "quaylock.yaml"
    config.write_text(yaml.safe_dump(settings))
    result = run_doctor("--config", str(config), "--data", str(data), "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)["findings"]


def severities(findings: list, code: str) -> list[str]:
    return [f["severity"] for f in findings if f["code"] == code]


def changed(settings: dict, change) -> dict:
    settings = copy.deepcopy(settings)
    change(settings)
    return settings


def test_hardened_example_passes_with_no_high_or_medium_finding(tmp_path, hardened):
    status, findings = audit(tmp_path, hardened.settings, hardened.data)
    serious = [f for f in findings if f["severity"] in ("high", "medium")]
    assert serious == [], serious
    assert status == 0


# (id, change to the hardened settings, code, severity, exit status)
CONFIG_CASES = [
    ("auth off beyond loopback",
     lambda s: s["auth"].update(mode="none"), "auth-off-public", "high", 1),
    ("auth off on loopback",
     lambda s: (s["auth"].update(mode="none"), s.update(listen="127.0.0.1:5000")),
     "auth-off-loopback", "low", 0),
    ("no tls beyond loopback",
     lambda s: s.pop("tls"), "tls-off-public", "high", 1),
    ("no tls behind a trusted proxy",
     lambda s: (s.pop("tls"), s["server"].update(trusted_proxies=["10.0.0.2"])),
     "tls-at-proxy", "low", 0),
    ("anonymous push",
     lambda s: s["auth"].update(rules=[{"subjects": ["anonymous"],
                                        "repositories": ["public/*"],
                                        "actions": ["pull", "push"]}]),
     "anonymous-push", "high", 1),
    ("anonymous delete",
     lambda s: s["auth"].update(rules=[{"subjects": ["user:bob", "anonymous"],
                                        "repositories": ["**"],
                                        "actions": ["delete"]}]),
     "anonymous-push", "high", 1),
    ("anonymous everything",
     lambda s: s["auth"].update(rules=[{"subjects": ["anonymous"],
                                        "repositories": ["scratch/**"],
                                        "actions": ["*"]}]),
     "anonymous-push", "high", 1),
    ("rate limits off",
     lambda s: s["rate_limits"].update(enabled=False), "rate-limits-off", "medium", 0),
    ("one rate class off",
     lambda s: s["rate_limits"].update(token={"per_minute": 0, "burst": 0}),
     "rate-limit-class-off", "low", 0),
    ("no quotas",
     lambda s: s.pop("quotas"), "no-quotas", "medium", 0),
    ("blob limit too high to bound anything",
     lambda s: s["limits"].update(blob_max_bytes=2**50), "size-limit-off", "medium", 0),
    ("manifest limit too high in an override",
     lambda s: s["limits"].update(overrides=[{"repositories": ["big/**"],
                                              "manifest_max_bytes": 2**31}]),
     "size-limit-off", "medium", 0),
    ("latest protected in some repositories only",
     lambda s: s["tags"].update(rules=[{"repositories": ["releases/**"],
                                        "protected": ["latest"]}]),
     "latest-unprotected", "medium", 0),
    ("no tag rules at all",
     lambda s: s["tags"].update(rules=[]), "latest-unprotected", "medium", 0),
    ("tag rules without a signature policy",
     lambda s: s.pop("signatures"), "no-signature-policy", "low", 0),
    ("signature policies that only audit",
     lambda s: s["signatures"]["policies"][0].update(mode="audit"),
     "signatures-audit-only", "low", 0),
    ("deletes without garbage collection",
     lambda s: s.pop("gc"), "deletes-without-gc", "low", 0),
    ("metrics open to every address",
     lambda s: s["metrics"].update(allow=["0.0.0.0/0"]),
     "metrics-allow-everyone", "medium", 0),
    ("every address a trusted proxy",
     lambda s: s["server"].update(trusted_proxies=["::/0"]),
     "trusted-proxies-everyone", "medium", 0),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "code", "severity", "status"),
    [case[1:] for case in CONFIG_CASES],
    ids=[case[0] for case in CONFIG_CASES],
)
def test_misconfiguration_is_reported_with_its_severity(
    tmp_path, hardened, change, code, severity, status
):
    settings = changed(hardened.settings, change)
    got_status, findings = audit(tmp_path, settings, hardened.data)
    assert severities(findings, code) and set(severities(findings, code)) == {
        severity
    }, (code, findings)
    assert got_status == status, findings


def test_settings_that_are_not_misconfigurations_are_not_reported(tmp_path, hardened):
    def change(s):
        # Anonymous pull, an immutable latest, and chunks left to follow
        # blob_max_bytes are all fine.
        s["auth"]["rules"] = [
            {
                "subjects": ["anonymous"],
                "repositories": ["public/*"],
                "actions": ["pull"],
            }
        ]
        s["tags"]["rules"] = [{"repositories": ["**"], "immutable": ["latest"]}]
        s["limits"]["chunk_max_bytes"] = 0

    status, findings = audit(
        tmp_path, changed(hardened.settings, change), hardened.data
    )
    codes = {f["code"] for f in findings}
    assert not codes & {"anonymous-push", "latest-unprotected", "size-limit-off"}
    assert status == 0


def test_a_recent_collection_from_cron_counts_as_scheduled(tmp_path, hardened):
    data = tmp_path / "data"
    shutil.copytree(hardened.data, data)
    settings = changed(hardened.settings, lambda s: s.pop("gc"))
    _, findings = audit(tmp_path, settings, data)
    assert severities(findings, "deletes-without-gc") == ["low"]

    (data / "gc.last").write_text("")  # what `quaylock gc` leaves
    os.chmod(data / "gc.last", 0o600)
    _, findings = audit(tmp_path, settings, data)
    assert severities(findings, "deletes-without-gc") == []

    old = time.time() - doctor.GC_STAMP_MAX_AGE_SECONDS - 60
    os.utime(data / "gc.last", (old, old))
    _, findings = audit(tmp_path, settings, data)
    assert severities(findings, "deletes-without-gc") == ["low"]


# (id, path in the data folder, mode, code, severity, exit status)
FILE_CASES = [
    ("data folder readable by others", ".", 0o755, "store-readable", "medium", 0),
    ("metadata database readable by group", "metadata.db", 0o640,
     "store-readable", "medium", 0),
    ("token key folder open", "keys", 0o755, "secret-readable", "high", 1),
    ("token signing key readable by others", "keys/*", 0o644,
     "secret-readable", "high", 1),
    ("data folder world-writable", ".", 0o777, "world-writable", "high", 1),
]  # fmt: skip


@pytest.mark.parametrize(
    ("where", "mode", "code", "severity", "status"),
    [case[1:] for case in FILE_CASES],
    ids=[case[0] for case in FILE_CASES],
)
def test_store_and_key_files_open_to_others_are_reported(
    tmp_path, hardened, where, mode, code, severity, status
):
    data = tmp_path / "data"
    shutil.copytree(hardened.data, data)
    [path] = data.glob(where) if "*" in where else [data / where]
    path.chmod(mode)
    got_status, findings = audit(tmp_path, hardened.settings, data)
    assert severities(findings, code) == [severity], findings
    assert str(path.resolve()) in " ".join(f["message"] for f in findings)
    assert got_status == status


def test_storage_root_of_its_own_readable_by_others_is_medium(tmp_path, hardened):
    root = tmp_path / "store"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    settings = changed(
        hardened.settings, lambda s: s.update(storage={"root": str(root)})
    )
    status, findings = audit(tmp_path, settings, hardened.data)
    [finding] = [f for f in findings if f["code"] == "store-readable"]
    assert finding["severity"] == "medium" and str(root) in finding["message"]
    assert finding["fix"] == f"chmod 700 {root}"
    assert status == 0


def test_tls_key_readable_by_others_is_high(tmp_path, hardened):
    key = tmp_path / "tls.key"
    shutil.copy(hardened.settings["tls"]["key"], key)
    key.chmod(0o644)
    settings = changed(hardened.settings, lambda s: s["tls"].update(key=str(key)))
    status, findings = audit(tmp_path, settings, hardened.data)
    assert severities(findings, "secret-readable") == ["high"]
    assert any(f["fix"] == f"chmod 600 {key}" for f in findings), findings
    assert status == 1


def test_missing_tls_key_is_high(tmp_path, hardened):
    gone = str(tmp_path / "nowhere.key")
    settings = changed(hardened.settings, lambda s: s["tls"].update(key=gone))
    status, findings = audit(tmp_path, settings, hardened.data)
    assert severities(findings, "file-missing") == ["high"]
    assert status == 1


def _certificate(folder: Path, days: tuple[int, int]) -> tuple[Path, Path]:
    """A self-signed certificate valid from days[0] to days[1] from now."""
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert, key_path = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip
    key_path.chmod(0o600)
    return cert, key_path


@pytest.mark.parametrize(
    "days, code, severity",
    [((-30, -1), "tls-expired", "high"), ((-30, 10), "tls-expiring", "medium")],
)
def test_a_certificate_past_or_near_its_end_is_reported(
    tmp_path, hardened, days, code, severity
):
    cert, key = _certificate(tmp_path, days)
    settings = changed(
        hardened.settings, lambda s: s["tls"].update(cert=str(cert), key=str(key))
    )
    _, findings = audit(tmp_path, settings, hardened.data)
    assert severities(findings, code) == [severity]


def test_a_certificate_that_does_not_go_with_its_key_is_high_and_serve_refuses_it(
    tmp_path, hardened
):
    cert, _ = _certificate(tmp_path, (-1, 365))
    other = tmp_path / "other"
    other.mkdir()
    _, key = _certificate(other, (-1, 365))
    settings = changed(
        hardened.settings, lambda s: s["tls"].update(cert=str(cert), key=str(key))
    )
    status, findings = audit(tmp_path, settings, hardened.data)
    assert severities(findings, "tls-unusable") == ["high"] and status == 1
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({**settings, "listen": "127.0.0.1:1"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUAYLOCK_")}
    served = subprocess.run(
        [str(QUAYLOCK), "serve", "--config", str(config), "--data", str(tmp_path / "d")],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert served.returncode == 2
    assert served.stderr.startswith("quaylock: tls: cannot use certificate")
    assert "Traceback" not in served.stderr


def test_a_folder_anyone_may_write_above_a_key_is_high(tmp_path, hardened):
    shared = tmp_path / "shared"
    shared.mkdir()
    key = shared / "cosign.pub"
    key.write_bytes(
        Path(
            hardened.settings["signatures"]["policies"][0]["cosign_keys"][0]
        ).read_bytes()
    )
    shared.chmod(0o777)
    settings = changed(
        hardened.settings,
        lambda s: s["signatures"]["policies"][0].update(cosign_keys=[str(key)]),
    )
    _, findings = audit(tmp_path, settings, hardened.data)
    found = [f for f in findings if f["code"] == "world-writable"]
    assert [f["severity"] for f in found] == ["high"]
    assert f"folder {shared} is mode 0777" in found[0]["message"]
    shared.chmod(0o1777)  # the sticky bit: nobody renames another's file
    _, findings = audit(tmp_path, settings, hardened.data)
    assert not [f for f in findings if f["code"] == "world-writable"]


def test_admin_password_file_left_behind_is_medium(tmp_path, hardened):
    data = tmp_path / "data"
    shutil.copytree(hardened.data, data)
    password = data / "admin-password"
    password.write_text(ADMIN_PASSWORD + "\n")
    password.chmod(0o600)
    status, findings = audit(tmp_path, hardened.settings, data)
    assert severities(findings, "admin-password-file") == ["medium"]
    assert severities(findings, "secret-readable") == []  # 0600 is right
    assert status == 0

    password.chmod(0o644)
    status, findings = audit(tmp_path, hardened.settings, data)
    assert severities(findings, "secret-readable") == ["high"]
    assert status == 1


def test_first_start_with_auth_leaves_a_password_file_doctor_reports(make_server):
    """What a real first start writes, as operations.md says."""
    server = make_server({"auth": {"mode": "token"}})
    result = run_doctor("--data", str(server.data), "--json", cwd=server.data.parent)
    findings = json.loads(result.stdout)["findings"]
    assert severities(findings, "admin-password-file") == ["medium"]
    assert not [f for f in findings if f["code"].endswith("-readable")], findings


def test_text_output_names_severity_code_and_fix(tmp_path, hardened):
    settings = changed(hardened.settings, lambda s: s["auth"].update(mode="none"))
    config = tmp_path / "quaylock.yaml"
    config.write_text(yaml.safe_dump(settings))
    result = run_doctor("--config", str(config), "--data", str(hardened.data))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    [at] = [i for i, line in enumerate(lines) if "auth-off-public" in line]
    assert lines[at].startswith("HIGH ")
    assert "auth.mode: token" in lines[at + 1] and "fix:" in lines[at + 1]
    assert lines[-1].startswith("quaylock doctor: 1 high")


@pytest.mark.parametrize(
    "args",
    [
        ("--config", "/nonexistent/quaylock.yaml"),
        ("--config", "{config_folder}"),
        ("--config", "{bad_key}"),
        ("--url", "ftp://127.0.0.1:5400"),
        ("--deps",),
    ],
    ids=["missing config", "config is a folder", "unknown key", "bad url",
         "deps without advisories"],
)  # fmt: skip
def test_unusable_input_exits_2(tmp_path, args):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("limits:\n  blob_max_byte: 10\n")
    args = [a.format(config_folder=tmp_path, bad_key=bad_key) for a in args]
    result = run_doctor(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip(), "no message says what is wrong"


# A running registry


def test_running_registry_over_tls_passes_and_leaks_no_version(tmp_path, make_server):
    settings = hardened_settings(tmp_path / "files")
    cert = settings["tls"]["cert"]
    server = make_server(
        settings, env={"QUAYLOCK_ADMIN_PASSWORD": ADMIN_PASSWORD}, ca=Path(cert)
    )
    status, findings = audit(
        tmp_path, settings, server.data,
        "--url", f"https://{server.host}", "--cafile", cert,
    )  # fmt: skip
    serious = [f for f in findings if f["severity"] in ("high", "medium")]
    assert serious == [], serious
    assert status == 0
    # The probes reached it: Granian's Server header (a name, no version) is
    # the one thing a stranger learns, and it is reported as low.
    named = [f for f in findings if f["code"] == "software-named"]
    assert [f["severity"] for f in named] == ["low"], findings
    assert "server: granian" in named[0]["message"]
    assert severities(findings, "version-disclosed") == []


def test_running_registry_over_plain_http_on_loopback(tmp_path, make_server):
    server = make_server()
    result = run_doctor("--url", server.url, "--json", cwd=tmp_path)
    findings = json.loads(result.stdout)["findings"]
    codes = {f["code"] for f in findings}
    assert not codes & {
        "unreachable", "not-healthy", "not-ready", "plain-http",
        "version-disclosed", "metrics-open",
    }, findings  # fmt: skip
    assert "software-named" in codes  # the probes did reach it
    assert result.returncode == 0, findings


def test_a_registry_whose_store_is_gone_is_not_ready(tmp_path, make_server):
    root = tmp_path / "blobs"
    server = make_server({"storage": {"root": str(root)}})
    shutil.rmtree(root)
    result = run_doctor("--url", server.url, "--json", cwd=tmp_path)
    findings = json.loads(result.stdout)["findings"]
    [ready] = [f for f in findings if f["code"] == "not-ready"]
    assert ready["severity"] == "high"
    assert "503" in ready["message"] and "blob_store" in ready["message"]
    assert severities(findings, "not-healthy") == []  # the process answers
    assert result.returncode == 1


def test_nothing_listening_is_high(tmp_path):
    # Port 5499 on loopback: nothing of ours listens there.
    result = run_doctor("--url", "http://127.0.0.1:5499", "--json", cwd=tmp_path)
    findings = json.loads(result.stdout)["findings"]
    assert severities(findings, "unreachable") == ["high"]
    assert result.returncode == 1


def test_plain_http_beyond_loopback_is_high():
    # From the URL alone: doctor would connect, the test does not.
    [finding] = doctor.url_findings("http://10.0.0.5:5000")
    assert (finding.severity, finding.code) == ("high", "plain-http")
    assert doctor.url_findings("https://10.0.0.5:5000") == []
    assert doctor.url_findings("http://127.0.0.1:5000") == []
    assert doctor.url_findings("http://[::1]:5000") == []


def test_metrics_open_beyond_loopback_is_medium():
    [finding] = doctor.metrics_findings(200, "192.0.2.7")
    assert (finding.severity, finding.code) == ("medium", "metrics-open")
    assert "192.0.2.7" in finding.message
    assert doctor.metrics_findings(401, "192.0.2.7") == []
    assert doctor.metrics_findings(200, "127.0.0.1") == []


@pytest.mark.parametrize(
    ("headers", "body", "code", "severity"),
    [
        ([("server", "nginx/1.25.3")], b"", "version-disclosed", "medium"),
        ([("x-powered-by", "quaylock 0.1.0")], b"", "version-disclosed", "medium"),
        ([], b'{"errors": [], "version": "0.1.0"}', "version-disclosed", "medium"),
        ([], b"<hr>granian/2.8.9", "version-disclosed", "medium"),
        ([("server", "granian")], b"", "software-named", "low"),
        ([("via", "1.1 nginx/1.25.3")], b"", "version-disclosed", "medium"),
    ],
    ids=["server header", "x-powered-by", "json body", "html body", "name only", "via"],
)
def test_version_in_an_answer_is_reported(headers, body, code, severity):
    answer = doctor.Answer(404, headers, body, "127.0.0.1")
    [finding] = doctor.disclosure_findings({doctor.ERROR_PROBE: answer})
    assert (finding.code, finding.severity) == (code, severity)
    assert doctor.ERROR_PROBE in finding.message


def test_protocol_version_header_is_not_a_disclosure():
    answer = doctor.Answer(
        401, [("docker-distribution-api-version", "registry/2.0")], b"{}", "::1"
    )
    assert doctor.disclosure_findings({"/v2/": answer}) == []


# Dependencies (quaylock.supply.audit)


def test_the_installed_dependencies_pass_against_the_pypa_snapshot(
    tmp_path, hardened, snapshot
):
    config = tmp_path / "quaylock.yaml"
    config.write_text(yaml.safe_dump(hardened.settings))
    result = run_doctor("--config", str(config), "--data", str(hardened.data),
                        "--deps", "--advisories", str(snapshot))  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(PyPA snapshot, newest entry 2024-10-10)" in result.stdout.splitlines()[0]
    assert "known-vulnerable-dependency" not in result.stdout


def test_an_installed_version_an_advisory_names_is_high_with_its_fix(
    tmp_path, hardened
):
    # An advisory, in the snapshot's layout, against the PyYAML installed here.
    installed = importlib.metadata.version("pyyaml")
    folder = tmp_path / "advisories" / "vulns" / "pyyaml"
    folder.mkdir(parents=True)
    (folder / "PYSEC-9999-1.yaml").write_text(yaml.safe_dump({
        "id": "PYSEC-9999-1", "modified": "2026-11-30T00:00:00Z",
        "aliases": ["CVE-9999-0001"],
        "summary": "a test advisory against the installed PyYAML",
        "affected": [{
            "package": {"ecosystem": "PyPI", "name": "PyYAML"},
            "ranges": [{"type": "ECOSYSTEM",
                        "events": [{"introduced": "0"}, {"fixed": "999.0"}]}],
        }],
    }))  # fmt: skip
    status, findings = audit(tmp_path, hardened.settings, hardened.data, "--deps",
                             "--advisories", str(tmp_path / "advisories"))  # fmt: skip
    assert status == 1
    (found,) = [f for f in findings if f["code"] == "known-vulnerable-dependency"]
    assert found["severity"] == "high"
    assert f"pyyaml {installed} (PYSEC-9999-1" in found["message"]
    assert "upgrade pyyaml to 999.0 or newer" in found["fix"]


def test_deps_with_a_missing_advisory_folder_exits_2(tmp_path):
    result = run_doctor("--config", str(HARDENED), "--deps",
                        "--advisories", str(tmp_path / "nowhere"))  # fmt: skip
    assert result.returncode == 2
    assert "nowhere" in result.stderr


def test_text_output_escapes_what_a_hostile_server_sends():
    from quaylock.cli.doctor import _printable

    assert _printable("alert \x15\x03\x1b[2J ok") == "alert \\x15\\x03\\x1b[2J ok"


def test_advisories_alone_mean_deps(tmp_path, hardened, snapshot):
    config = tmp_path / "quaylock.yaml"
    config.write_text(yaml.safe_dump(hardened.settings))
    result = run_doctor("--config", str(config), "--data", str(hardened.data),
                        "--advisories", str(snapshot))  # fmt: skip
    assert "(PyPA snapshot, newest entry 2024-10-10)" in result.stdout.splitlines()[0]


def _hostile_server(mode: str):
    """A server of this test's own on 127.0.0.1 that answers /healthz, then
    misbehaves: "drip" sends a byte every half second, "close" hangs up."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(connection: socket.socket) -> None:
        with connection, contextlib.suppress(OSError):  # the client may leave
            request = connection.recv(4096)
            if b"GET /healthz " in request:
                connection.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            elif mode == "drip":
                for byte in (
                    b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 100
                ):
                    if stop.wait(0.5):
                        return
                    connection.sendall(bytes([byte]))

    def accept() -> None:
        listener.settimeout(0.2)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    connection, _ = listener.accept()
                    threading.Thread(
                        target=serve, args=(connection,), daemon=True
                    ).start()
        finally:
            listener.close()  # here, once accept() no longer waits on it

    accepting = threading.Thread(target=accept, daemon=True)
    accepting.start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", stop, accepting


@pytest.mark.parametrize("mode", ["drip", "close"])
def test_a_registry_that_answers_badly_after_healthz_is_high_not_a_traceback(mode):
    url, stop, accepting = _hostile_server(mode)
    try:
        started = time.monotonic()
        findings = doctor.check_running(url, timeout=2, total=3)
        took = time.monotonic() - started
    finally:
        stop.set()
        accepting.join(5)
    failed = [f for f in findings if f.code == "probe-failed"]
    assert failed and all(f.severity == "high" for f in failed), findings
    # The whole check keeps to its time, however slow the answers.
    assert took < 3 + 2 + 1, took
