"""Real registry clients against quaylock with authentication on.

Every test starts its own server with an `auth` section, makes accounts
with the `quaylock user` and `quaylock robot` commands on its data folder,
and then lets the tools people use log in as those accounts:

- skopeo with ``--creds``, ``--src-creds`` and ``--dest-creds``, which
  follows the Docker token flow (401 challenge, ``/v2/token`` with Basic
  credentials, bearer token) or, in Basic mode, sends Basic on every request;
- podman, after ``podman login``, from a store of its own in tmp_path;
- the oras Python client, after ``login`` or ``set_basic_auth``.

What is checked is what an operator relies on: the owner of a namespace
pushes, pulls and deletes there; nobody else does unless a rule says so;
a robot stays inside its grants and stops at once when revoked; a first
start leaves an admin password that works; imported htpasswd users log in;
the catalog shows a caller only what it may pull.

The tools' configuration (policy, registries.conf, auth files, podman's
store) lives in the test's tmp_path, so nothing of this machine's user is
read or changed.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import bcrypt
import httpx
import oras.provider
import pytest

from tests.conftest import Server, require_tool
from tests.helpers import error_code, sha256, unique_repo
from tests.test_interop import (
    TOOL_TIMEOUT,
    Layout,
    Skopeo,
    build_image,
    docker_ref,
)

PASSWORD = {"alice": "alice-secret-1", "bob": "bob-secret-22"}

# What a refused skopeo says: the registry's 403 DENIED, or a 401 that
# skopeo reports as "unauthorized"/"authentication required".
DENIED_WORDS = ("denied", "403")
UNAUTHORIZED_WORDS = (
    "unauthorized",
    "authentication required",
    "401",
    "invalid username/password",
)


# Helpers: the quaylock command


def quaylock(server: Server, *args: str, stdin: str = "") -> str:
    """Run ``quaylock <args>`` (the data folder is added after the
    command word); fail the test unless it exits 0. Returns stdout."""
    command, *rest = args
    argv = [
        sys.executable, "-m", "quaylock.cli.main",
        command, "--data", str(server.data), *rest,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUAYLOCK_")}
    result = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, env=env,
        timeout=TOOL_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, (
        f"`{shlex.join(argv)}` exited {result.returncode}:\n{result.stderr}"
    )
    return result.stdout


def add_user(server: Server, name: str) -> str:
    """Create user `name` with its password from PASSWORD; return that."""
    password = PASSWORD[name]
    quaylock(server, "user", "add", name, "--password-stdin", stdin=password + "\n")
    return password


def add_robot(
    server: Server, name: str, owner: str, repository: str, *actions: str
) -> tuple[str, str]:
    """Create robot `name`; return its full name and its secret."""
    flags = [flag for action in actions for flag in ("--action", action)]
    output = quaylock(
        server, "robot", "add", name, "--owner", owner,
        "--repository", repository, *flags,
    )  # fmt: skip
    created = json.loads(output)
    assert created["name"] == f"robot${name}", output
    return created["name"], created["secret"]


def admin_password(server: Server) -> str:
    return (server.data / "admin-password").read_text().strip()


def token_server(make_server, **auth) -> Server:
    return make_server({"auth": {"mode": "token", **auth}})


# Helpers: the token endpoint, as clients call it


def fetch_token(
    server: Server, scope: str, credentials: tuple[str, str] | None = None
) -> httpx.Response:
    with server.client() as client:
        return client.get(
            "/v2/token",
            params={"service": "quaylock", "scope": scope},
            auth=credentials,
        )


def bearer(server: Server, scope: str, credentials: tuple[str, str]) -> dict:
    response = fetch_token(server, scope, credentials)
    assert response.status_code == 200, (
        f"GET /v2/token scope={scope} as {credentials[0]}: "
        f"{response.status_code} {response.text}"
    )
    return {"Authorization": f"Bearer {response.json()['token']}"}


# Helpers: running tools that may fail, reading what skopeo wrote


def attempt(argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a tool and return what happened, whatever its exit status."""
    return subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=TOOL_TIMEOUT,
        check=False,
    )  # fmt: skip


def skopeo_attempt(skopeo: Skopeo, *args: str) -> subprocess.CompletedProcess:
    return attempt([skopeo.path, *skopeo.global_flags, *args], env=skopeo.env)


def push_attempt(
    skopeo: Skopeo, image: Layout, destination: str, *flags: str
) -> subprocess.CompletedProcess:
    return skopeo_attempt(
        skopeo, "copy", "--dest-tls-verify=false", *flags,
        image.reference, destination,
    )  # fmt: skip


def assert_refused(result: subprocess.CompletedProcess, words, what: str) -> None:
    """The tool failed, and its message names the refusal."""
    assert result.returncode != 0, f"{what} succeeded; it must be refused"
    message = result.stderr.lower()
    assert any(word in message for word in words), (
        f"{what} failed, but not with one of {words}:\n{result.stderr}"
    )


def creds(name: str, password: str) -> str:
    return f"{name}:{password}"


def dir_files(folder: Path) -> dict[str, bytes]:
    """What `skopeo copy ... dir:` wrote, without its own `version` file."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "version"}


def expected_dir_files(image: Layout) -> dict[str, bytes]:
    files = {
        digest.removeprefix("sha256:"): content
        for digest, content in image.image_blobs().items()
        if digest != image.manifest_digest
    }
    files["manifest.json"] = image.manifest_bytes
    return files


# Helpers: podman with a store of its own


class Podman:
    """podman as root with its store, auth file and configuration inside
    `home`: vfs (no overlay mounts), cgroupfs and file events, since this
    machine has no systemd session. `runroot` is separate because podman
    refuses one longer than 50 characters, which tmp_path often is."""

    def __init__(self, home: Path, runroot: Path):
        self.path = require_tool("podman")
        for folder in ("root", "tmp", "xdg", "config"):
            (home / folder).mkdir(parents=True, exist_ok=True)
        registries_conf = home / "registries.conf"
        registries_conf.write_text("")
        containers_conf = home / "containers.conf"
        containers_conf.write_text("")
        # podman stats the auth file before any pull, so it must exist.
        self.auth_file = home / "auth.json"
        self.auth_file.write_text('{"auths": {}}')
        self.global_flags = [
            "--root", str(home / "root"),
            "--runroot", str(runroot),
            "--tmpdir", str(home / "tmp"),
            "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
        ]  # fmt: skip
        self.env = {
            **os.environ,
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(home / "xdg"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "REGISTRY_AUTH_FILE": str(self.auth_file),
            "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
            "CONTAINERS_CONF": str(containers_conf),
        }

    def attempt(self, *args: str) -> subprocess.CompletedProcess:
        return attempt([self.path, *self.global_flags, *args], env=self.env)

    def __call__(self, *args: str) -> str:
        result = self.attempt(*args)
        assert result.returncode == 0, (
            f"`podman {shlex.join(args)}` exited {result.returncode}:\n{result.stderr}"
        )
        return result.stdout


# Fixtures


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Layout:
    """One umoci-built multi-layer image, shared read-only by the tests."""
    return build_image(tmp_path_factory.mktemp("auth-image") / "image")


@pytest.fixture
def skopeo(tmp_path) -> Skopeo:
    return Skopeo(tmp_path / "skopeo")


@pytest.fixture
def podman(tmp_path) -> Podman:
    with tempfile.TemporaryDirectory(prefix="ql-podman-") as runroot:
        yield Podman(tmp_path / "podman", Path(runroot))


# 1. skopeo through the token flow


@pytest.mark.interop
def test_skopeo_owner_pushes_pulls_identical_bytes_and_deletes_with_token_flow(
    make_server, image, skopeo, tmp_path
):
    server = token_server(make_server)
    password = add_user(server, "alice")
    alice = creds("alice", password)
    reference = docker_ref(server, "alice/app", "v1")

    skopeo.copy(image.reference, reference, "--dest-creds", alice)

    # Pulled back with credentials: the very bytes that were pushed.
    pulled = tmp_path / "pulled"
    skopeo.copy(reference, f"dir:{pulled}", "--src-creds", alice)
    assert dir_files(pulled) == expected_dir_files(image)
    inspected = json.loads(
        skopeo("inspect", "--tls-verify=false", "--creds", alice, reference)
    )
    assert inspected["Digest"] == image.manifest_digest

    # Without credentials the repository is closed.
    anonymous = skopeo_attempt(skopeo, "inspect", "--tls-verify=false", reference)
    assert_refused(anonymous, UNAUTHORIZED_WORDS, "anonymous inspect of alice/app")

    # The owner deletes; the manifest is gone for the owner too.
    skopeo("delete", "--tls-verify=false", "--creds", alice, reference)
    headers = bearer(server, "repository:alice/app:pull", ("alice", password))
    with server.client(headers=headers) as client:
        gone = client.get(f"/v2/alice/app/manifests/{image.manifest_digest}")
    assert gone.status_code == 404, gone.text
    assert error_code(gone) == "MANIFEST_UNKNOWN", gone.text


@pytest.mark.interop
def test_skopeo_with_wrong_password_is_refused_by_the_token_endpoint(
    make_server, image, skopeo
):
    server = token_server(make_server)
    add_user(server, "alice")

    result = push_attempt(
        skopeo, image, docker_ref(server, "alice/app", "v1"),
        "--dest-creds", "alice:not-the-password",
    )  # fmt: skip

    assert_refused(result, UNAUTHORIZED_WORDS, "push with a wrong password")


# 2. podman: login, push, pull


@pytest.mark.interop
def test_podman_login_then_push_and_pull_round_trip(make_server, image, podman):
    server = token_server(make_server)
    password = add_user(server, "alice")
    target = f"{server.host}/alice/podman:v1"

    # Into podman's own store from the OCI layout; -q prints the image ID,
    # which is the digest of the image's config.
    image_id = podman("pull", "-q", image.reference).strip()
    assert f"sha256:{image_id}" == image.config_digest

    login = podman.attempt(
        "login", "--tls-verify=false", "-u", "alice", "-p", password, server.host
    )
    assert login.returncode == 0, f"podman login failed:\n{login.stderr}"
    saved = json.loads(podman.auth_file.read_text())
    assert server.host in saved["auths"], saved

    podman("push", "--tls-verify=false", image_id, f"docker://{target}")

    # podman recompresses the layers from its store, so compare what must
    # survive that: the config (the image ID), whose diff_ids are the
    # digests of the uncompressed layers.
    podman("rmi", "-f", image_id)
    pulled_id = podman("pull", "-q", "--tls-verify=false", target).strip()
    assert pulled_id == image_id

    # After logout the same pull is refused: the login was what let it in.
    podman("rmi", "-f", image_id)
    podman("logout", server.host)
    anonymous = podman.attempt("pull", "-q", "--tls-verify=false", target)
    assert_refused(anonymous, UNAUTHORIZED_WORDS, "podman pull after logout")


@pytest.mark.interop
def test_podman_login_with_wrong_password_is_refused(make_server, podman):
    server = token_server(make_server)
    add_user(server, "alice")

    login = podman.attempt(
        "login", "--tls-verify=false", "-u", "alice", "-p", "wrong-password",
        server.host,
    )  # fmt: skip

    assert_refused(login, UNAUTHORIZED_WORDS, "podman login with a wrong password")
    assert server.host not in json.loads(podman.auth_file.read_text())["auths"]


# 3. oras with credentials


def oras_client(server: Server) -> oras.provider.Registry:
    return oras.provider.Registry(hostname=server.host, insecure=True)


def take_push_token(registry: oras.provider.Registry, target: str) -> None:
    """Make `registry` fetch its bearer token on a push request.

    oras-py keeps one token per client and, on a 401, resends it rather
    than asking for a wider one (oras-project/oras-py#187). Its push first
    HEADs each blob, which earns a pull-only token, so the upload after it
    is refused. Opening (and cancelling) an upload first makes oras ask
    the token endpoint for ``pull,push``, with its Basic credentials.
    """
    container = registry.get_container(target)
    started = registry.do_request(
        f"{registry.prefix}://{container.upload_blob_url()}", "POST"
    )
    assert started.status_code == 202, (
        f"oras could not open an upload for {target}: "
        f"{started.status_code} {started.text}"
    )
    location = started.headers["location"]
    if location.startswith("/"):
        location = f"{registry.prefix}://{container.registry}{location}"
    assert registry.do_request(location, "DELETE").status_code == 204


@pytest.mark.interop
def test_oras_login_pushes_artifact_into_own_namespace_and_pulls_it_back(
    make_server, tmp_path, monkeypatch
):
    server = token_server(make_server)
    password = add_user(server, "alice")
    home = tmp_path / "oras-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    docker_config = home / ".docker" / "config.json"
    notes = tmp_path / "notes.txt"
    notes.write_text("release notes for alice/notes:v1\n")
    target = f"{server.host}/alice/notes:v1"

    # login stores the credentials and hands them to this client.
    pusher = oras_client(server)
    pusher.login(
        "alice", password, hostname=server.host, config_path=str(docker_config)
    )
    take_push_token(pusher, target)
    pushed = pusher.push(target, files=[notes.name], quiet=True)
    assert pushed.status_code == 201, pushed.text

    # A second client finds them in the Docker config that login wrote.
    puller = oras_client(server)
    files = puller.pull(
        target, outdir=str(tmp_path / "pulled"), config_path=str(docker_config)
    )
    assert [Path(f).name for f in files] == [notes.name]
    assert Path(files[0]).read_bytes() == notes.read_bytes()

    # A client given the credentials with set_basic_auth reads it too.
    reader = oras_client(server)
    reader.auth.set_basic_auth("alice", password)
    manifest = reader.get_manifest(target)
    assert [layer["digest"] for layer in manifest["layers"]] == [
        sha256(notes.read_bytes())
    ]


@pytest.mark.interop
def test_oras_without_credentials_cannot_read_a_users_artifact(
    make_server, tmp_path, monkeypatch
):
    server = token_server(make_server)
    password = add_user(server, "alice")
    home = tmp_path / "oras-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("private\n")
    target = f"{server.host}/alice/private:v1"
    owner = oras_client(server)
    owner.auth.set_basic_auth("alice", password)
    take_push_token(owner, target)
    assert owner.push(target, files=[notes.name], quiet=True).status_code == 201

    # No credentials: oras takes an anonymous token, which holds nothing.
    stranger = oras_client(server)
    container = stranger.get_container(target)
    response = stranger.do_request(
        f"{stranger.prefix}://{container.manifest_url()}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )

    assert response.status_code == 401, (
        f"anonymous oras read of alice/private gave {response.status_code}: "
        f"{response.text}"
    )


# 4. robots


@pytest.mark.interop
def test_robot_pushes_and_pulls_only_its_repository_and_stops_when_revoked(
    make_server, image, skopeo, tmp_path
):
    server = token_server(make_server)
    add_user(server, "alice")
    robot, secret = add_robot(server, "ci", "alice", "alice/app", "pull", "push")
    robot_creds = creds(robot, secret)
    app = docker_ref(server, "alice/app", "v1")

    # Inside its grant: push, then pull back the same bytes.
    skopeo.copy(image.reference, app, "--dest-creds", robot_creds)
    pulled = tmp_path / "pulled"
    skopeo.copy(app, f"dir:{pulled}", "--src-creds", robot_creds)
    assert dir_files(pulled) == expected_dir_files(image)

    # Outside it, in its owner's own namespace: 403 DENIED.
    other = push_attempt(
        skopeo, image, docker_ref(server, "alice/other", "v1"),
        "--dest-creds", robot_creds,
    )  # fmt: skip
    assert_refused(other, DENIED_WORDS, "robot push to alice/other")

    # A token from before the revocation, and the revocation itself.
    headers = bearer(server, "repository:alice/app:pull", (robot, secret))
    with server.client(headers=headers) as client:
        before = client.get(f"/v2/alice/app/manifests/{image.manifest_digest}")
    assert before.status_code == 200, before.text
    quaylock(server, "robot", "revoke", "ci")

    with server.client(headers=headers) as client:
        after = client.get(f"/v2/alice/app/manifests/{image.manifest_digest}")
    assert after.status_code == 401, (
        f"a revoked robot's token still reads: {after.status_code} {after.text}"
    )
    assert 'error="invalid_token"' in after.headers["www-authenticate"]
    relogin = fetch_token(server, "repository:alice/app:pull", (robot, secret))
    assert relogin.status_code == 401, relogin.text
    pull = skopeo_attempt(
        skopeo, "copy", "--src-tls-verify=false", "--src-creds", robot_creds,
        app, f"dir:{tmp_path / 'after-revoke'}",
    )  # fmt: skip
    assert_refused(pull, UNAUTHORIZED_WORDS, "pull by a revoked robot")


# 5. namespaces, rules, anonymous access


@pytest.mark.interop
def test_user_cannot_push_into_another_users_namespace(make_server, image, skopeo):
    server = token_server(make_server)
    password = add_user(server, "alice")
    add_user(server, "bob")

    result = push_attempt(
        skopeo, image, docker_ref(server, "bob/app", "v1"),
        "--dest-creds", creds("alice", password),
    )  # fmt: skip

    assert_refused(result, DENIED_WORDS, "alice pushing to bob/app")
    # What skopeo met, as the API answers it: the token holds nothing for
    # bob/app, and starting an upload there is 403 DENIED.
    token = fetch_token(server, "repository:bob/app:pull,push", ("alice", password))
    assert token.status_code == 200, token.text
    headers = {"Authorization": f"Bearer {token.json()['token']}"}
    with server.client(headers=headers) as client:
        upload = client.post("/v2/bob/app/blobs/uploads/")
    assert upload.status_code == 403, upload.text
    assert error_code(upload) == "DENIED", upload.text


@pytest.mark.interop
def test_user_cannot_read_or_delete_in_another_users_namespace(
    make_server, image, skopeo, tmp_path
):
    server = token_server(make_server)
    alice = creds("alice", add_user(server, "alice"))
    bob = creds("bob", add_user(server, "bob"))
    reference = docker_ref(server, "alice/app", "v1")
    skopeo.copy(image.reference, reference, "--dest-creds", alice)

    pulled = skopeo_attempt(
        skopeo, "copy", "--src-tls-verify=false", "--src-creds", bob,
        reference, f"dir:{tmp_path / 'pulled'}",
    )  # fmt: skip
    deleted = skopeo_attempt(
        skopeo, "delete", "--tls-verify=false", "--creds", bob, reference
    )

    assert_refused(pulled, DENIED_WORDS, "bob pulling alice/app")
    assert_refused(deleted, DENIED_WORDS, "bob deleting alice/app:v1")
    inspected = json.loads(
        skopeo("inspect", "--tls-verify=false", "--creds", alice, reference)
    )
    assert inspected["Digest"] == image.manifest_digest


@pytest.mark.interop
def test_config_rule_lets_a_user_push_into_a_shared_namespace(
    make_server, image, skopeo, tmp_path
):
    rule = {
        "subjects": ["user:alice"],
        "repositories": ["shared/**"],
        "actions": ["pull", "push"],
    }
    server = token_server(make_server, rules=[rule])
    alice = creds("alice", add_user(server, "alice"))
    bob = creds("bob", add_user(server, "bob"))
    reference = docker_ref(server, "shared/team/app", "v1")

    skopeo.copy(image.reference, reference, "--dest-creds", alice)

    pulled = tmp_path / "pulled"
    skopeo.copy(reference, f"dir:{pulled}", "--src-creds", alice)
    assert dir_files(pulled) == expected_dir_files(image)
    # The rule names alice only.
    refused = push_attempt(
        skopeo, image, docker_ref(server, "shared/team/other", "v1"),
        "--dest-creds", bob,
    )  # fmt: skip
    assert_refused(refused, DENIED_WORDS, "bob pushing to shared/team/other")


@pytest.mark.interop
def test_anonymous_rule_allows_pull_without_credentials_but_not_push(
    make_server, image, skopeo, tmp_path
):
    rule = {
        "subjects": ["anonymous"],
        "repositories": ["public/**"],
        "actions": ["pull"],
    }
    server = token_server(make_server, rules=[rule])
    admin = creds("admin", admin_password(server))
    reference = docker_ref(server, "public/app", "v1")
    skopeo.copy(image.reference, reference, "--dest-creds", admin)

    # No credentials at all: skopeo takes an anonymous token and pulls.
    pulled = tmp_path / "pulled"
    skopeo.copy(reference, f"dir:{pulled}")
    assert dir_files(pulled) == expected_dir_files(image)

    # The same anonymous client may not push, there or anywhere.
    for target in ("public/app:v2", "public/other:v1"):
        repository, tag = target.split(":")
        pushed = push_attempt(skopeo, image, docker_ref(server, repository, tag))
        assert_refused(
            pushed, UNAUTHORIZED_WORDS + DENIED_WORDS, f"anonymous push to {target}"
        )
    tags = json.loads(
        skopeo("list-tags", "--tls-verify=false", f"docker://{server.host}/public/app")
    )
    assert tags["Tags"] == ["v1"], tags
    # Nor pull outside the rule.
    closed = skopeo_attempt(
        skopeo, "inspect", "--tls-verify=false",
        docker_ref(server, "admin/app", "v1"),
    )  # fmt: skip
    assert_refused(closed, UNAUTHORIZED_WORDS, "anonymous inspect of admin/app")


# 6. Basic mode


@pytest.mark.interop
def test_basic_mode_skopeo_with_credentials_pushes_and_pulls(
    make_server, image, skopeo, tmp_path
):
    server = make_server({"auth": {"mode": "basic"}})
    alice = creds("alice", add_user(server, "alice"))
    reference = docker_ref(server, "alice/app", "v1")

    skopeo.copy(image.reference, reference, "--dest-creds", alice)

    pulled = tmp_path / "pulled"
    skopeo.copy(reference, f"dir:{pulled}", "--src-creds", alice)
    assert dir_files(pulled) == expected_dir_files(image)
    with server.client() as client:
        challenge = client.get("/v2/")
    assert challenge.status_code == 401
    assert challenge.headers["www-authenticate"].startswith("Basic ")


@pytest.mark.interop
def test_basic_mode_refuses_a_wrong_password(make_server, image, skopeo):
    server = make_server({"auth": {"mode": "basic"}})
    add_user(server, "alice")
    reference = docker_ref(server, "alice/app", "v1")

    pushed = push_attempt(
        skopeo, image, reference, "--dest-creds", "alice:not-the-password"
    )
    inspected = skopeo_attempt(
        skopeo, "inspect", "--tls-verify=false",
        "--creds", "alice:not-the-password", reference,
    )  # fmt: skip

    assert_refused(pushed, UNAUTHORIZED_WORDS, "basic-mode push, wrong password")
    assert_refused(inspected, UNAUTHORIZED_WORDS, "basic-mode inspect, wrong password")


# 7. First start


@pytest.mark.interop
def test_first_start_writes_admin_password_file_that_logs_in(
    make_server, image, skopeo
):
    server = token_server(make_server)
    path = server.data / "admin-password"

    assert path.exists(), f"no {path} after a first start:\n{server.log()}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)
    password = admin_password(server)
    assert len(password) >= 16
    users = json.loads(quaylock(server, "user", "list"))
    assert [(u["name"], u["admin"]) for u in users] == [("admin", True)]
    reference = docker_ref(server, unique_repo("anywhere"), "v1")
    skopeo.copy(image.reference, reference, "--dest-creds", f"admin:{password}")
    inspected = json.loads(
        skopeo(
            "inspect", "--tls-verify=false", "--creds", f"admin:{password}", reference
        )
    )
    assert inspected["Digest"] == image.manifest_digest


def test_first_start_logs_where_the_admin_password_is_but_not_the_password(
    make_server,
):
    server = token_server(make_server)
    path = server.data / "admin-password"
    password = admin_password(server)

    log = server.log()

    assert password not in log
    created = [
        entry
        for entry in map(json.loads, log.splitlines())
        if entry["msg"].startswith("created user admin")
    ]
    assert len(created) == 1, f"expected one first-start line:\n{log}"
    # docs/operations.md: the registry "logs that path".
    assert str(path) in json.dumps(created[0]), (
        "the first-start log line does not say where the admin password is: "
        f"{json.dumps(created[0])}"
    )


@pytest.mark.interop
def test_first_start_takes_admin_password_from_environment_and_writes_no_file(
    make_server, image, skopeo
):
    password = "from-the-environment-42"
    server = make_server(
        {"auth": {"mode": "token"}}, env={"QUAYLOCK_ADMIN_PASSWORD": password}
    )

    assert not (server.data / "admin-password").exists()
    assert password not in server.log()
    reference = docker_ref(server, unique_repo("anywhere"), "v1")
    skopeo.copy(image.reference, reference, "--dest-creds", f"admin:{password}")
    inspected = json.loads(
        skopeo(
            "inspect", "--tls-verify=false", "--creds", f"admin:{password}", reference
        )
    )
    assert inspected["Digest"] == image.manifest_digest


# 8. htpasswd import


@pytest.mark.interop
def test_imported_htpasswd_bcrypt_users_log_in_with_skopeo(
    make_server, image, skopeo, tmp_path
):
    server = token_server(make_server)
    hashed = {
        name: bcrypt.hashpw(PASSWORD[name].encode(), bcrypt.gensalt(rounds=5))
        for name in ("alice", "bob")
    }
    # bcrypt writes $2b$; Apache's `htpasswd -B` writes $2y$ for the same
    # algorithm. The file holds one of each.
    lines = [
        "# exported from the old registry",
        f"alice:{hashed['alice'].decode()}",
        "bob:$2y$" + hashed["bob"].decode()[4:],
    ]
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("\n".join(lines) + "\n")

    output = quaylock(server, "user", "import-htpasswd", str(htpasswd))

    assert "alice" in output and "bob" in output, output
    for name in ("alice", "bob"):
        login = creds(name, PASSWORD[name])
        reference = docker_ref(server, f"{name}/app", "v1")
        skopeo.copy(image.reference, reference, "--dest-creds", login)
        # The second login checks the scrypt hash the first one stored.
        inspected = json.loads(
            skopeo("inspect", "--tls-verify=false", "--creds", login, reference)
        )
        assert inspected["Digest"] == image.manifest_digest, name
    wrong = push_attempt(
        skopeo, image, docker_ref(server, "alice/app", "v2"),
        "--dest-creds", "alice:bob-secret-22",
    )  # fmt: skip
    assert_refused(wrong, UNAUTHORIZED_WORDS, "imported user with a wrong password")


# 9. The catalog


def catalog(server: Server, credentials: tuple[str, str]) -> list[str]:
    headers = bearer(server, "registry:catalog:*", credentials)
    with server.client(headers=headers) as client:
        response = client.get("/v2/_catalog")
    assert response.status_code == 200, response.text
    return response.json()["repositories"]


@pytest.mark.interop
def test_catalog_lists_only_repositories_the_caller_may_pull(
    make_server, image, skopeo
):
    server = token_server(make_server)
    alice = ("alice", add_user(server, "alice"))
    bob = ("bob", add_user(server, "bob"))
    admin = ("admin", admin_password(server))
    pushed = {"alice/app": alice, "alice/tools/cli": alice, "bob/app": bob}
    for repository, (name, password) in pushed.items():
        skopeo.copy(
            image.reference, docker_ref(server, repository, "v1"),
            "--dest-creds", creds(name, password),
        )  # fmt: skip

    seen = {who[0]: catalog(server, who) for who in (alice, bob, admin)}

    assert seen["admin"] == ["alice/app", "alice/tools/cli", "bob/app"], seen
    assert seen["alice"] == ["alice/app", "alice/tools/cli"], (
        f"alice's catalog shows repositories she may not pull: {seen['alice']}"
    )
    assert seen["bob"] == ["bob/app"], (
        f"bob's catalog shows repositories he may not pull: {seen['bob']}"
    )


# Beyond the brief: a blob mount must not read another user's repository


@pytest.mark.interop
def test_blob_mount_from_a_repository_the_caller_may_not_pull_is_refused(
    make_server, image, skopeo
):
    # end-11: mounting a blob "from" a repository reads that repository, so
    # the caller must be able to pull there; otherwise the registry opens
    # an ordinary upload session (202) and the blob stays out of reach.
    server = token_server(make_server)
    alice = creds("alice", add_user(server, "alice"))
    bob_password = add_user(server, "bob")
    skopeo.copy(
        image.reference, docker_ref(server, "alice/private", "v1"),
        "--dest-creds", alice,
    )  # fmt: skip
    layer = image.layer_digests[0]
    headers = bearer(server, "repository:bob/loot:pull,push", ("bob", bob_password))

    # With `from` naming alice's repository, and without `from` at all
    # (the registry then looks for the blob in any repository).
    for params in ({"mount": layer, "from": "alice/private"}, {"mount": layer}):
        with server.client(headers=headers) as client:
            mounted = client.post("/v2/bob/loot/blobs/uploads/", params=params)
            read = client.get(f"/v2/bob/loot/blobs/{layer}")

        assert mounted.status_code == 202, (
            f"bob mounted a blob of alice/private into bob/loot: POST "
            f"/v2/bob/loot/blobs/uploads/ with {params} gave "
            f"{mounted.status_code} (location {mounted.headers.get('location')})"
        )
        assert read.status_code == 404, (
            f"bob reads alice's layer through bob/loot after {params}: "
            f"{read.status_code}, {len(read.content)} bytes"
        )
