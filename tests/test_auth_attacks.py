"""Attacks on authentication and authorisation (issue #4), against real servers.

Each test plays one attacker against a `quaylock serve` process on loopback:
forged and tampered tokens, stolen and revoked credentials, tokens from an
outside issuer, repository names that try to slip past a pattern, probes for
what exists, password guessing, timing, secrets in the log and malformed
token requests.

Every refusal is paired with a positive control (the same request with a
genuine credential succeeds), so no test can pass because a route is simply
broken, and every refused write is followed by a check that nothing reached
the store. Loops are bounded in count and in time.

The test acts as the operator too: it creates accounts with the CLI and may
read the token signing key under ``<data>/keys/`` to sign tokens whose
claims are wrong in exactly one way.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import hmac
import http.client
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import start_server
from tests.helpers import (
    OCI_MANIFEST,
    error_code,
    image_manifest,
    push_image,
    sha256,
)

ADMIN = ("admin", "admin-pw-for-attack-tests")
ALICE = ("alice", "alice-pw-for-attack-tests")
BOB = ("bob", "bob-pw-for-attack-tests")
ADMIN_ENV = {"QUAYLOCK_ADMIN_PASSWORD": ADMIN[1]}
TOKEN_AUTH = {"auth": {"mode": "token"}}
BASIC_AUTH = {"auth": {"mode": "basic"}}


# Operating the registry: the CLI, as an operator on the machine would.


def quaylock(server, *args: str, stdin: str = "") -> str:
    """Run ``quaylock <args>`` on the server's data folder; return stdout."""
    command = [
        sys.executable, "-m", "quaylock.cli.main",
        args[0], "--data", str(server.data), *args[1:],
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUAYLOCK_")}
    done = subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"quaylock {' '.join(args)}: {done.stderr}"
    return done.stdout


def add_user(server, credentials: tuple[str, str], *options: str) -> None:
    name, password = credentials
    quaylock(
        server, "user", "add", name, "--password-stdin", *options, stdin=password + "\n"
    )


def add_robot(server, name, owner, repositories, actions) -> tuple[str, str]:
    """Create ``robot$<name>``; return its credentials."""
    args = ["robot", "add", name, "--owner", owner]
    for repository in repositories:
        args += ["--repository", repository]
    for action in actions:
        args += ["--action", action]
    created = json.loads(quaylock(server, *args))
    return created["name"], created["secret"]


# Clients and tokens.


def client_from(server, local_address: str | None = None, **kwargs) -> httpx.Client:
    """A client whose connections leave from `local_address` (a 127.x address)."""
    transport = (
        httpx.HTTPTransport(local_address=local_address) if local_address else None
    )
    return httpx.Client(base_url=server.url, timeout=60, transport=transport, **kwargs)


def request_token(server, scopes, credentials=None, local_address=None, **params):
    query = [("service", "quaylock"), *(("scope", s) for s in scopes), *params.items()]
    with client_from(server, local_address) as c:
        return c.get("/v2/token", params=query, auth=credentials)


def token(server, credentials, *scopes: str) -> str:
    response = request_token(server, scopes, credentials)
    assert response.status_code == 200, response.text
    return response.json()["token"]


def bearer(value: str) -> dict:
    return {"authorization": f"Bearer {value}"}


def claims_of(value: str) -> dict:
    return jwt.decode(value, options={"verify_signature": False})


def granted(value: str) -> dict[str, list[str]]:
    """The grants of one of our tokens: repository name -> actions."""
    return {a["name"]: a["actions"] for a in claims_of(value).get("access", [])}


def full_grant(repository: str) -> list[dict]:
    actions = ["delete", "pull", "push"]
    return [{"type": "repository", "name": repository, "actions": actions}]


# Forging: base64url, our signing key, HMAC by hand (PyJWT refuses to use a
# PEM key as an HMAC secret, which is exactly what an attacker would do).


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def signing_key(server):
    """The registry's newest signing key; the operator may read it."""
    newest = max((server.data / "keys").glob("token-*.pem"))
    return serialization.load_pem_private_key(newest.read_bytes(), password=None)


def sign_as_registry(server, claims: dict, kid: str) -> str:
    return jwt.encode(
        claims, signing_key(server), algorithm="ES256", headers={"kid": kid}
    )


def hmac_token(header: dict, claims: dict, secret: bytes) -> str:
    digestmod = {
        "HS256": hashlib.sha256,
        "HS384": hashlib.sha384,
        "HS512": hashlib.sha512,
    }
    signing_input = f"{b64url_json(header)}.{b64url_json(claims)}"
    mac = hmac.new(secret, signing_input.encode(), digestmod[header["alg"]]).digest()
    return f"{signing_input}.{b64url(mac)}"


def genuine(server, credentials, repository, actions="pull") -> tuple[str, dict, dict]:
    """A token the registry issued: (token, header, claims)."""
    value = token(server, credentials, f"repository:{repository}:{actions}")
    return value, jwt.get_unverified_header(value), claims_of(value)


# Writes an attacker attempts, and the proof that none of them landed.


def payload_for(repository: str) -> bytes:
    """The blob a test pushes to `repository`: one digest per repository."""
    return json.dumps({"pushed to": repository}).encode()


def try_push(server, headers: dict, repository: str) -> list[httpx.Response]:
    """The writes of a push: open an upload, upload a whole blob (end-4b),
    put a manifest (end-7) that refers to that blob."""
    payload = payload_for(repository)
    manifest = image_manifest(payload, [])
    with server.client(headers=headers) as c:
        return [
            c.post(f"/v2/{repository}/blobs/uploads/"),
            c.post(
                f"/v2/{repository}/blobs/uploads/",
                params={"digest": sha256(payload)},
                content=payload,
                headers={"content-type": "application/octet-stream"},
            ),
            c.put(
                f"/v2/{repository}/manifests/v1",
                content=manifest,
                headers={"content-type": OCI_MANIFEST},
            ),
        ]


def assert_pushed(responses: list[httpx.Response]) -> None:
    statuses = [r.status_code for r in responses]
    assert statuses == [202, 201, 201], [
        (r.status_code, r.text[:200]) for r in responses
    ]


def assert_nothing_written(server, repository: str, tags: list[str] | None = None):
    """No blob of `payload_for(repository)` on disk or in the repository, and
    the repository's tags are `tags` (None: the repository does not exist)."""
    digest = sha256(payload_for(repository))
    on_disk = list((server.data / "blobs").rglob(digest.split(":")[1]))
    assert not on_disk, f"a blob pushed to {repository} reached the disk: {on_disk}"
    admin = token(server, ADMIN, f"repository:{repository}:pull")
    with server.client(headers=bearer(admin)) as c:
        listed = c.get(f"/v2/{repository}/tags/list")
        blob = c.head(f"/v2/{repository}/blobs/{digest}")
    if tags is None:
        assert listed.status_code == 404, f"{repository} exists now: {listed.text}"
    else:
        assert listed.status_code == 200 and listed.json()["tags"] == tags, listed.text
    assert blob.status_code == 404, f"{repository} holds the pushed blob"


def assert_invalid_token(response: httpx.Response, what: str) -> None:
    challenge = response.headers.get("www-authenticate", "")
    assert (
        response.status_code == 401
        and error_code(response) == "UNAUTHORIZED"
        and challenge.startswith("Bearer ")
        and 'error="invalid_token"' in challenge
    ), (
        f"{what}: {response.request.method} {response.request.url.path} answered "
        f"{response.status_code} {response.text[:200]!r}, challenge {challenge!r}; "
        'expected 401 UNAUTHORIZED with error="invalid_token"'
    )


def assert_forged_token_refused(server, forged: str, repository: str, what: str):
    """`forged` claims push on `repository`: every use is a 401, nothing lands."""
    with server.client(headers=bearer(forged)) as c:
        assert_invalid_token(c.get("/v2/"), what)
        assert_invalid_token(c.get(f"/v2/{repository}/tags/list"), what)
    for response in try_push(server, bearer(forged), repository):
        assert_invalid_token(response, what)
    assert_nothing_written(server, repository)


def raw_request(server, method: str, path: str, headers=None, body=b""):
    """Send `path` byte for byte (httpx would resolve '..' and requote it);
    return (status, body)."""
    host, port = server.host.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# One registry for the token-forging tests: each uses its own repositories
# and none fails a login, so they cannot lock each other out.


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    server = start_server(
        tmp_path_factory.mktemp("auth-attacks"), TOKEN_AUTH, ADMIN_ENV
    )
    try:
        add_user(server, ALICE)
        add_user(server, BOB)
        yield server
    finally:
        server.stop()


# 1. alg: none


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_unsigned_token_with_alg_none_is_refused(registry, alg):
    repository = "alice/alg-none-" + hashlib.sha256(alg.encode()).hexdigest()[:10]
    _, header, claims = genuine(registry, ALICE, repository)

    # The forger keeps the real kid and claims, widens the grant to push for
    # the admin, and drops the signature.
    forged_claims = {**claims, "sub": "admin", "access": full_grant(repository)}
    unsigned = f"{b64url_json({**header, 'alg': alg})}.{b64url_json(forged_claims)}"
    for signature in ("", b64url(b"\0" * 64)):
        forged = f"{unsigned}.{signature}"
        assert_forged_token_refused(registry, forged, repository, f"alg {alg!r}")

    # Control: a token the registry signs for these rights does push.
    real = token(registry, ALICE, f"repository:{repository}:pull,push")
    assert_pushed(try_push(registry, bearer(real), repository))


# 2. HMAC with the public key as the secret


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_token_keyed_with_the_public_key_is_refused(registry, alg):
    repository = f"alice/hmac-{alg.lower()}"
    _, header, claims = genuine(registry, ALICE, repository)
    public = signing_key(registry).public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    point = public.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    forged_claims = {**claims, "access": full_grant(repository)}

    # Every form of the public key a verifier might hand to HMAC.
    for secret in (pem, pem.strip(), der, point):
        for kid in (header["kid"], None):
            forged_header = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
            forged = hmac_token(forged_header, forged_claims, secret)
            assert_forged_token_refused(registry, forged, repository, f"{alg} key")

    real = token(registry, ALICE, f"repository:{repository}:pull,push")
    assert_pushed(try_push(registry, bearer(real), repository))


# 3. Tokens signed with our own key whose claims are wrong in one way


def _expired(claims, now):
    return {**claims, "iat": now - 900, "nbf": now - 900, "exp": now - 300}


WRONG_CLAIMS = {
    "expired 5 minutes ago": _expired,
    "audience of another service": lambda c, now: {**c, "aud": "another-registry"},
    "audience missing": lambda c, now: {k: v for k, v in c.items() if k != "aud"},
    "issuer we do not trust": lambda c, now: {**c, "iss": "evil-issuer"},
    "issuer missing": lambda c, now: {k: v for k, v in c.items() if k != "iss"},
    "not valid for 10 minutes (nbf)": lambda c, now: {**c, "nbf": now + 600},
    "expiry missing": lambda c, now: {k: v for k, v in c.items() if k != "exp"},
    "subject that does not exist": lambda c, now: {**c, "sub": "mallory"},
}


@pytest.mark.parametrize("wrong", list(WRONG_CLAIMS))
def test_token_signed_by_our_key_with_one_wrong_claim_is_refused(registry, wrong):
    repository = "alice/claims-" + hashlib.sha256(wrong.encode()).hexdigest()[:10]
    _, header, claims = genuine(registry, ALICE, repository)
    now = int(time.time())
    right = {
        **claims,
        "jti": secrets.token_urlsafe(16),
        "access": full_grant(repository),
    }

    forged = sign_as_registry(registry, WRONG_CLAIMS[wrong](right, now), header["kid"])
    assert_forged_token_refused(registry, forged, repository, wrong)

    # Control: the same claims, all right, signed the same way, do push.
    resigned = sign_as_registry(registry, right, header["kid"])
    assert_pushed(try_push(registry, bearer(resigned), repository))
    with registry.client(headers=bearer(resigned)) as c:
        assert c.get(f"/v2/{repository}/manifests/v1").status_code == 200


# 4. A real token whose payload was edited, signature kept


EDITS = {
    "push added to the grant": lambda c, repo: {**c, "access": full_grant(repo)},
    "grant moved to bob's repository": lambda c, repo: {
        **c,
        "access": full_grant("bob/stolen"),
    },
    "subject changed to admin": lambda c, repo: {**c, "sub": "admin"},
    "expiry a day later": lambda c, repo: {**c, "exp": c["exp"] + 86400},
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_real_token_with_edited_payload_is_refused(registry, edit):
    repository = "alice/edited-" + hashlib.sha256(edit.encode()).hexdigest()[:10]
    real, _, claims = genuine(registry, ALICE, repository)
    header_part, _, signature = real.split(".")
    edited = f"{header_part}.{b64url_json(EDITS[edit](claims, repository))}.{signature}"
    assert edited != real
    assert_forged_token_refused(registry, edited, repository, edit)

    # Control: the untouched token still works for what it grants.
    with registry.client(headers=bearer(real)) as c:
        assert c.get("/v2/").status_code == 200


def test_signature_of_one_token_does_not_carry_another_payload(registry):
    repository = "alice/spliced"
    weak = token(registry, ALICE, f"repository:{repository}:pull")
    strong_claims = {**claims_of(weak), "access": full_grant(repository)}
    header_part, _, signature = weak.split(".")
    spliced = f"{header_part}.{b64url_json(strong_claims)}.{signature}"
    assert_forged_token_refused(registry, spliced, repository, "spliced signature")


# 5. Revocation takes effect at once


def test_revoked_robot_token_secret_and_refresh_token_are_refused(registry):
    repository = "alice/robot-revoked"
    robot = add_robot(registry, "revoked", "alice", [repository], ["pull", "push"])
    scope = f"repository:{repository}:pull,push"
    issued = request_token(registry, [scope], robot, offline_token="true")
    assert issued.status_code == 200, issued.text
    access, refresh = issued.json()["token"], issued.json()["refresh_token"]

    # Control: while active, the robot pushes and pulls.
    with registry.client(headers=bearer(access)) as c:
        push_image(c, repository, "v1", seed="robot")
        assert c.get(f"/v2/{repository}/manifests/v1").status_code == 200

    quaylock(registry, "robot", "revoke", "revoked")

    with registry.client(headers=bearer(access)) as c:
        assert_invalid_token(c.get(f"/v2/{repository}/manifests/v1"), "revoked robot")
    for response in try_push(registry, bearer(access), repository):
        assert_invalid_token(response, "revoked robot push")
    login = request_token(registry, [scope], robot)
    assert (login.status_code, error_code(login)) == (401, "UNAUTHORIZED"), login.text
    with registry.client() as c:
        renewed = c.post(
            "/v2/token",
            data={"grant_type": "refresh_token", "refresh_token": refresh,
                  "service": "quaylock", "scope": scope},
        )  # fmt: skip
    assert renewed.status_code == 401, f"refresh after revoke: {renewed.text}"
    assert_nothing_written(registry, repository, tags=["v1"])


def test_disabled_user_token_is_refused(registry):
    carol = ("carol", "carol-pw-for-attack-tests")
    add_user(registry, carol)
    repository = "carol/app"
    access = token(registry, carol, f"repository:{repository}:pull,push")
    with registry.client(headers=bearer(access)) as c:
        assert c.get("/v2/").status_code == 200

    quaylock(registry, "user", "disable", "carol")

    for response in try_push(registry, bearer(access), repository):
        assert_invalid_token(response, "disabled user")
    login = request_token(registry, [f"repository:{repository}:pull"], carol)
    assert login.status_code == 401, login.text
    assert_nothing_written(registry, repository)


def test_basic_mode_refuses_old_password_right_after_a_password_change(make_server):
    server = make_server(BASIC_AUTH, ADMIN_ENV)
    add_user(server, ALICE)
    with server.client() as c:
        assert c.get("/v2/", auth=ALICE).status_code == 200

    new_password = "alice-new-pw-for-attack-tests"
    quaylock(
        server, "user", "passwd", "alice", "--password-stdin", stdin=new_password + "\n"
    )

    with server.client() as c:
        old = c.get("/v2/", auth=ALICE)
        new = c.get("/v2/", auth=("alice", new_password))
    assert new.status_code == 200, new.text
    assert old.status_code == 401, (
        f"the old password still logs in after `user passwd` ({old.status_code}): "
        "Basic mode remembers a checked name+password for 60 s "
        "(policy/auth.py _BASIC_CACHE_SECONDS) and only re-checks that the "
        "account exists, not that the password is still the same"
    )


# 6. Tokens from an outside issuer


def _key_pair(kind: str):
    if kind == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_outside_issuer_token_grants_exactly_its_access(make_server, tmp_path, alg):
    issuer_key, other_key = _key_pair(alg), _key_pair(alg)
    keys_file = tmp_path / "ext-keys.pem"
    public_pem = issuer_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    keys_file.write_bytes(public_pem)
    settings = {
        "auth": {
            "mode": "token",
            "trusted_issuers": [{"issuer": "ext", "keys": str(keys_file)}],
        }
    }
    server = make_server(settings, ADMIN_ENV)
    admin = token(server, ADMIN, "repository:x/y:pull,push", "repository:x/z:pull,push")
    with server.client(headers=bearer(admin)) as c:
        image = push_image(c, "x/y", "v1", seed="y")
        push_image(c, "x/z", "v1", seed="z")

    now = int(time.time())
    claims = {
        "iss": "ext", "aud": "quaylock", "sub": "admin", "iat": now,
        "exp": now + 300, "jti": secrets.token_urlsafe(8),
        "access": [{"type": "repository", "name": "x/y", "actions": ["pull"]}],
    }  # fmt: skip
    outside = jwt.encode(claims, issuer_key, algorithm=alg)

    # Pull of x/y is what the token grants; nothing else is.
    with server.client(headers=bearer(outside)) as c:
        pulled = c.get("/v2/x/y/manifests/v1", headers={"accept": OCI_MANIFEST})
        assert pulled.status_code == 200, pulled.text
        assert pulled.content == image["manifest"]
        other = c.get("/v2/x/z/manifests/v1")
        assert other.status_code in (401, 403), f"x/z: {other.status_code} {other.text}"
    for response in try_push(server, bearer(outside), "x/y"):
        assert response.status_code in (401, 403), (
            f"push with a pull-only outside token: {response.status_code}"
        )
    assert_nothing_written(server, "x/y", tags=["v1"])

    # Tokens the outside issuer did not sign, or not for us, or not now.
    forgeries = {
        "signed by an untrusted key": jwt.encode(claims, other_key, algorithm=alg),
        "claims our issuer": jwt.encode(
            {**claims, "iss": "quaylock"}, issuer_key, algorithm=alg
        ),
        "for another audience": jwt.encode(
            {**claims, "aud": "other"}, issuer_key, algorithm=alg
        ),
        "expired": jwt.encode(
            {**claims, "iat": now - 900, "exp": now - 300}, issuer_key, algorithm=alg
        ),
        "HS256 keyed with its public key": hmac_token(
            {"alg": "HS256", "typ": "JWT"}, claims, public_pem
        ),
    }
    for what, forged in forgeries.items():
        with server.client(headers=bearer(forged)) as c:
            assert_invalid_token(c.get("/v2/x/y/manifests/v1"), what)


# 7. Names that try to slip past a repository pattern


PATTERN_RULES = {
    "auth": {
        "mode": "token",
        "rules": [
            {"subjects": ["group:devs"], "repositories": ["team/**"],
             "actions": ["pull", "push"]},
            {"subjects": ["user:bob"], "repositories": ["team/*"],
             "actions": ["pull", "push"]},
        ],
    }
}  # fmt: skip

# Raw request paths a robot limited to alice/app might try, and the name
# each one reaches (None: not a valid name).
TRICK_PATHS = {
    "/v2/alice/app/../other": None,
    "/v2/alice/app%2F..%2Fother": None,
    "/v2/alice/app2": "alice/app2",
    "/v2/alice/app/sub": "alice/app/sub",
    "/v2/alice%2Fapp/x": "alice/app/x",
    "/v2/ALICE/app": None,
    # alice is in group devs, which a rule lets push team/**; the robot's
    # own grant is alice/app only.
    "/v2/team/app": "team/app",
}


def test_robot_limited_to_one_repository_reaches_no_other(make_server):
    server = make_server(PATTERN_RULES, ADMIN_ENV)
    add_user(server, ALICE, "--group", "devs")
    robot = add_robot(server, "ci", "alice", ["alice/app"], ["pull", "push"])
    targets = [
        "alice/app",
        "alice/other",
        "alice/app2",
        "alice/app/sub",
        "alice/app/x",
        "team/app",
    ]
    alice = token(server, ALICE, *(f"repository:{t}:pull,push" for t in targets))
    with server.client(headers=bearer(alice)) as c:
        for target in targets:
            push_image(c, target, "v1", seed=target)

    # The token endpoint grants the robot alice/app and nothing else.
    asked = [
        *TRICK_PATHS.values(),
        "alice/app/../other",
        "ALICE/app",
        "alice/*",
        "alice/**",
        "*",
    ]
    scopes = [f"repository:{name}:pull,push,delete" for name in asked if name]
    robot_token = token(server, robot, "repository:alice/app:pull,push", *scopes)
    leaks = []
    if granted(robot_token) != {"alice/app": ["pull", "push"]}:
        leaks.append(f"the robot's token grants {granted(robot_token)}")

    # Control: the robot reads its own repository.
    headers = {"authorization": f"Bearer {robot_token}"}
    status, _ = raw_request(server, "GET", "/v2/alice/app/manifests/v1", headers)
    assert status == 200

    for prefix, name in TRICK_PATHS.items():
        pulled, _ = raw_request(server, "GET", f"{prefix}/manifests/v1", headers)
        opened, _ = raw_request(server, "POST", f"{prefix}/blobs/uploads/", headers)
        if pulled not in (400, 401, 403, 404) or opened not in (400, 401, 403, 404):
            leaks.append(f"{prefix}: GET manifest {pulled}, POST upload {opened}")
    for name in {n for n in TRICK_PATHS.values() if n}:
        for response in try_push(server, bearer(robot_token), name):
            if response.status_code < 400:
                leaks.append(f"push to {name}: {response.status_code}")
    assert not leaks, "a robot limited to alice/app reached:\n" + "\n".join(leaks)
    for name in {n for n in TRICK_PATHS.values() if n}:
        assert_nothing_written(server, name, tags=["v1"])


def test_single_star_rule_does_not_reach_nested_repositories(make_server):
    server = make_server(PATTERN_RULES, ADMIN_ENV)
    add_user(server, BOB)
    add_user(server, ("ali", "ali-pw-for-attack-tests"))
    admin = token(server, ADMIN, "repository:team/a/b:pull,push")
    with server.client(headers=bearer(admin)) as c:
        push_image(c, "team/a/b", "v1", seed="nested")

    # Control: `team/*` lets bob push team/a.
    bob = token(
        server, BOB, "repository:team/a:pull,push", "repository:team/a/b:pull,push"
    )
    assert granted(bob) == {"team/a": ["pull", "push"]}, granted(bob)
    assert_pushed(try_push(server, bearer(bob), "team/a"))

    with server.client(headers=bearer(bob)) as c:
        pulled = c.get("/v2/team/a/b/manifests/v1")
    assert pulled.status_code in (401, 403), (
        f"bob pulled team/a/b: {pulled.status_code}"
    )
    for response in try_push(server, bearer(bob), "team/a/b"):
        assert response.status_code in (401, 403), response.text
    assert_nothing_written(server, "team/a/b", tags=["v1"])

    # A user named `ali` owns ali/..., not alice/... .
    ali = token(
        server, ("ali", "ali-pw-for-attack-tests"), "repository:alice/app:pull,push"
    )
    assert granted(ali) == {}, granted(ali)
    for response in try_push(server, bearer(ali), "alice/app"):
        assert response.status_code in (401, 403), response.text
    assert_nothing_written(server, "alice/app")


# 8. What exists is not told to those who may not see it


# (method, path); {repo}, {tag}, {manifest} and {blob} are filled in.
PROBES = [
    ("GET", "/v2/{repo}/manifests/{tag}"),
    ("HEAD", "/v2/{repo}/manifests/{tag}"),
    ("GET", "/v2/{repo}/manifests/{manifest}"),
    ("GET", "/v2/{repo}/blobs/{blob}"),
    ("HEAD", "/v2/{repo}/blobs/{blob}"),
    ("GET", "/v2/{repo}/tags/list"),
    ("GET", "/v2/{repo}/referrers/{manifest}"),
    ("POST", "/v2/{repo}/blobs/uploads/"),
    ("DELETE", "/v2/{repo}/manifests/{manifest}"),
]


def _answer(response: httpx.Response, *names: str) -> tuple:
    """Status, headers and body, with the probed names replaced."""

    def plain(text: str) -> str:
        for name in names:
            text = text.replace(name, "<name>")
        return text

    # The rate-limit count moves with every request, whatever exists.
    moving = ("date", "ratelimit-remaining", "ratelimit-reset")
    headers = {k: plain(v) for k, v in response.headers.items() if k not in moving}
    return response.status_code, headers, plain(response.text)


def test_refusals_do_not_tell_what_exists(registry):
    real, fake = "alice/leak-real", "alice/leak-fake"
    alice = token(registry, ALICE, f"repository:{real}:pull,push")
    with registry.client(headers=bearer(alice)) as c:
        image = push_image(c, real, "v1", seed="leak")
    existing = {
        "tag": "v1",
        "manifest": image["digest"],
        "blob": sha256(image["layers"][0]),
    }
    absent = {
        "tag": "v9",
        "manifest": sha256(b"no manifest"),
        "blob": sha256(b"no blob"),
    }
    bob = token(
        registry, BOB,
        f"repository:{real}:pull,push,delete", f"repository:{fake}:pull,push,delete",
    )  # fmt: skip
    assert granted(bob) == {}, granted(bob)

    # Control: to alice, who may pull both, the two answers do differ.
    owner = token(registry, ALICE, f"repository:{real}:pull", f"repository:{fake}:pull")
    with registry.client(headers=bearer(owner)) as c:
        assert c.get(f"/v2/{real}/manifests/v1").status_code == 200
        assert c.get(f"/v2/{fake}/manifests/v1").status_code == 404

    differences = []
    for caller, headers in (("anonymous", {}), ("bob", bearer(bob))):
        with registry.client(headers=headers) as c:
            for method, template in PROBES:
                seen = c.request(method, template.format(repo=real, **existing))
                if seen.status_code < 400:
                    differences.append(
                        f"{caller} {method} {template}: {seen.status_code}"
                    )
                names = (real, fake, *existing.values(), *absent.values())
                others = [
                    c.request(method, template.format(repo=fake, **existing)),
                    c.request(method, template.format(repo=real, **absent)),
                ]
                for other in others:
                    if _answer(seen, *names) != _answer(other, *names):
                        differences.append(
                            f"{caller} {method} {template}:\n"
                            f"  existing: {_answer(seen, *names)}\n"
                            f"  absent:   {_answer(other, *names)}"
                        )

    # Bob's own catalog and mounts must not show alice's repositories either.
    listing = token(
        registry, BOB, "registry:catalog:*", "repository:bob/mounts:pull,push"
    )
    with registry.client(headers=bearer(listing)) as c:
        catalog = c.get("/v2/_catalog", params={"n": 1000})
        if real in catalog.text:
            differences.append(f"bob's catalog lists {real}: {catalog.text}")
        for source in (f"&from={real}", ""):
            for blob in (existing["blob"], absent["blob"]):
                mounted = c.post(f"/v2/bob/mounts/blobs/uploads/?mount={blob}{source}")
                if mounted.status_code != 202:
                    differences.append(
                        f"bob mounting {blob} {source or 'without from'}: "
                        f"{mounted.status_code} (202 expected: he may not pull {real})"
                    )
    assert not differences, "\n".join(differences)


# 9. Password guessing


LOCKOUT = {"auth": {"mode": "token", "lockout_failures": 8, "lockout_seconds": 600}}
VICTIM = ("victim", "victim-pw-for-attack-tests")


@pytest.mark.slow
def test_password_guessing_is_slowed_then_locked_without_locking_out_the_owner(
    make_server,
):
    server = make_server(LOCKOUT, ADMIN_ENV)
    limit = LOCKOUT["auth"]["lockout_failures"]
    add_user(server, VICTIM)
    scope = ["repository:victim/app:pull"]

    def owner_logs_in() -> float:
        started = time.perf_counter()
        response = request_token(server, scope, VICTIM, local_address="127.0.0.2")
        assert response.status_code == 200, (
            f"the owner, from 127.0.0.2: {response.text}"
        )
        return time.perf_counter() - started

    hash_cost = statistics.median(owner_logs_in() for _ in range(3))
    statuses, durations, refusals = [], [], []
    started = time.monotonic()
    with client_from(server, "127.0.0.1") as attacker:
        for attempt in range(1000):
            if time.monotonic() - started > 120:
                break
            # Headers a proxy would set must not buy the attacker a new counter.
            spoof = f"203.0.113.{attempt % 250}"
            t0 = time.perf_counter()
            response = attacker.get(
                "/v2/token",
                params={"service": "quaylock", "scope": scope[0]},
                auth=(VICTIM[0], f"guess-{attempt}"),
                headers={"x-forwarded-for": spoof, "x-real-ip": spoof,
                         "forwarded": f"for={spoof}"},
            )  # fmt: skip
            durations.append(time.perf_counter() - t0)
            statuses.append(response.status_code)
            if response.status_code == 429:
                refusals.append(
                    (error_code(response), response.headers.get("retry-after"))
                )
            if attempt % 100 == 0:
                owner_logs_in()
    elapsed = time.monotonic() - started

    assert len(statuses) == 1000, (
        f"only {len(statuses)} guesses in 120 s: locked attempts are not cheap"
    )
    assert statuses[:limit] == [401] * limit, statuses[: limit + 2]
    assert set(statuses[limit:]) == {429}, (
        f"after {limit} failures: {sorted(set(statuses[limit:]))}; "
        f"{statuses.count(401)} guesses had their password checked"
    )
    for code, retry_after in refusals:
        assert code == "TOOMANYREQUESTS"
        assert retry_after and retry_after.isdigit(), retry_after
        assert 1 <= int(retry_after) <= 601, retry_after

    # Slowed before the lock: the last guesses before it wait far longer
    # than the first ones.
    first = statistics.median(durations[:3])
    assert durations[limit - 1] >= max(1.0, 4 * first), durations[:limit]
    assert sum(durations[:limit]) >= 2.0, durations[:limit]
    # Locked guesses are refused without hashing: each costs far less than
    # one password check, and the whole loop ends quickly.
    locked = statistics.median(durations[limit:])
    assert locked < hash_cost / 2, (locked, hash_cost)
    assert elapsed < 60, elapsed

    # After: the owner still logs in from elsewhere; from the locked address
    # even the right password is refused.
    owner_logs_in()
    locked_out = request_token(server, scope, VICTIM, local_address="127.0.0.1")
    assert locked_out.status_code == 429, locked_out.text
    assert error_code(locked_out) == "TOOMANYREQUESTS"
    assert locked_out.headers.get("retry-after", "").isdigit()


def test_parallel_guesses_get_no_more_password_checks_than_the_limit(make_server):
    settings = {
        "auth": {"mode": "token", "lockout_failures": 5, "lockout_seconds": 600}
    }
    server = make_server(settings, ADMIN_ENV)
    limit = settings["auth"]["lockout_failures"]
    add_user(server, VICTIM)
    guesses = 40
    start = threading.Barrier(guesses, timeout=30)

    def guess(number: int) -> int:
        with client_from(server, "127.0.0.9") as c:
            start.wait()
            response = c.get(
                "/v2/token",
                params={"service": "quaylock"},
                auth=(VICTIM[0], f"parallel-{number}"),
            )
            return response.status_code

    with concurrent.futures.ThreadPoolExecutor(guesses) as pool:
        statuses = list(pool.map(guess, range(guesses), timeout=120))

    checked = statuses.count(401)
    assert set(statuses) <= {401, 429}, statuses
    assert checked <= limit, (
        f"{checked} of {guesses} simultaneous guesses had their password "
        f"checked (401); lockout_failures is {limit}. Accounts.authenticate "
        "reads the lock before the scrypt check and counts the failure after "
        "it, so concurrent guesses all pass the lock and are all hashed"
    )


# 10. Timing


def test_unknown_user_and_wrong_password_take_similar_time(make_server):
    server = make_server(TOKEN_AUTH, ADMIN_ENV)
    add_user(server, ALICE)
    unknown, wrong = [], []

    # A fresh source address for every try, so no delay or lock applies.
    for i in range(10):
        for name, times, address in (
            ("nobody-here", unknown, f"127.0.0.{3 + 2 * i}"),
            ("alice", wrong, f"127.0.0.{4 + 2 * i}"),
        ):
            started = time.perf_counter()
            response = request_token(
                server, [], (name, f"wrong-{i}"), local_address=address
            )
            times.append(time.perf_counter() - started)
            assert response.status_code == 401, response.text
    slow = max(statistics.median(unknown), statistics.median(wrong))
    fast = min(statistics.median(unknown), statistics.median(wrong))
    assert slow < 2 * fast, f"unknown user {unknown}, wrong password {wrong}"


# 11. Secrets in the log


def test_log_holds_no_password_token_secret_or_authorization_value(make_server):
    secrets_used: dict[str, str] = {"admin password": ADMIN[1]}
    token_server = make_server(TOKEN_AUTH, ADMIN_ENV)
    basic_server = make_server(BASIC_AUTH, ADMIN_ENV)
    for server in (token_server, basic_server):
        add_user(server, ALICE)
    secrets_used["alice password"] = ALICE[1]
    wrong = "wrong-pw-" + secrets.token_hex(8)
    secrets_used["a wrong password"] = wrong

    # Token mode: logins, both POST grants, robot, pulls with bearer tokens.
    server = token_server
    robot = add_robot(server, "logbot", "alice", ["alice/logged"], ["pull"])
    secrets_used["robot secret"] = robot[1]
    scope = "repository:alice/logged:pull,push"
    issued = request_token(server, [scope], ALICE, offline_token="true").json()
    robot_token = token(server, robot, "repository:alice/logged:pull")
    with server.client() as c:
        common = {"scope": scope, "service": "quaylock"}
        by_password = c.post(
            "/v2/token",
            data={"grant_type": "password", "username": "alice",
                  "password": ALICE[1], "access_type": "offline", **common},
        ).json()  # fmt: skip
        by_refresh = c.post(
            "/v2/token",
            data={"grant_type": "refresh_token",
                  "refresh_token": issued["refresh_token"], **common},
        ).json()  # fmt: skip
        c.get("/v2/token", params={"scope": scope, "password": ALICE[1]})
        c.get("/v2/token", auth=("alice", wrong))
        c.get("/v2/token", auth=(ALICE[1], "typed-the-password-as-name"))
        c.get("/v2/alice/logged/tags/list", auth=ALICE)
    with server.client(headers=bearer(issued["token"])) as c:
        push_image(c, "alice/logged", "v1", seed="log")
    with server.client(headers=bearer(robot_token)) as c:
        assert c.get("/v2/alice/logged/manifests/v1").status_code == 200
    for name, value in {
        "access token": issued["token"],
        "refresh token": issued["refresh_token"],
        "password-grant token": by_password["token"],
        "password-grant refresh token": by_password["refresh_token"],
        "refresh-grant token": by_refresh["token"],
        "robot token": robot_token,
    }.items():
        secrets_used[name] = value
        secrets_used[name + " signature"] = value.rsplit(".", 1)[1]

    # Basic mode: pushes and pulls with Basic credentials, a wrong one too.
    with basic_server.client(auth=ALICE) as c:
        push_image(c, "alice/basic", "v1", seed="basic")
        assert c.get("/v2/alice/basic/manifests/v1").status_code == 200
    with basic_server.client() as c:
        c.get("/v2/alice/basic/tags/list", auth=("alice", wrong))
    for name, password in (("alice", ALICE[1]), ("alice", wrong), robot):
        value = base64.b64encode(f"{name}:{password}".encode()).decode()
        secrets_used[f"Basic value of {name}"] = value

    logs = token_server.log() + basic_server.log()
    assert '"route": "/v2/token"' in logs, "the request log is missing"
    found = [name for name, value in secrets_used.items() if value in logs]
    assert not found, f"the server log contains: {', '.join(found)}"


# 12. The token endpoint under malformed requests


def test_token_endpoint_answers_malformed_requests_with_4xx(make_server):
    server = make_server(TOKEN_AUTH, ADMIN_ENV)
    add_user(server, ALICE)
    access = token(server, ALICE, "repository:alice/app:pull")
    refresh = request_token(server, [], ALICE, offline_token="true").json()[
        "refresh_token"
    ]
    forged_refresh = (
        f"{b64url_json({'alg': 'none'})}.{b64url_json(claims_of(refresh))}."
    )

    def basic(text: bytes) -> dict:
        return {"authorization": "Basic " + base64.b64encode(text).decode()}

    def get(path: str, headers: dict | None = None) -> tuple:
        return "GET", path, headers or {}, b""

    def post(body: bytes, content_type="application/x-www-form-urlencoded"):
        return "POST", "/v2/token", {"content-type": content_type}, body

    def form(**fields) -> tuple:
        return post(str(httpx.QueryParams(fields)).encode())

    def refresh_grant(value: str) -> tuple:
        return form(grant_type="refresh_token", refresh_token=value)

    alice = basic(f"alice:{ALICE[1]}".encode())
    many_scopes = "&".join(f"scope=repository:alice/r{i}:pull" for i in range(3000))
    # Malformed credentials and grants get a 4xx. A scope that cannot be
    # granted is dropped, so scope abuse may get a useless token: no 5xx.
    four, no_5xx = range(400, 500), range(200, 500)
    cases = {
        "Basic without value": (get("/v2/token", {"authorization": "Basic"}), four),
        "Basic not base64": (get("/v2/token", {"authorization": "Basic !*"}), four),
        "Basic without colon": (get("/v2/token", basic(b"alicepw")), four),
        "Basic not UTF-8": (get("/v2/token", basic(b"\xff\xfe:\xfd")), four),
        "Basic 60 KB password": (
            get("/v2/token", basic(b"alice:" + b"p" * 60_000)),
            four,
        ),
        "Basic empty name": (get("/v2/token", basic(b":" + ALICE[1].encode())), four),
        "Bearer at the token endpoint": (get("/v2/token", bearer(access)), four),
        "50 KB scope": (
            get("/v2/token?scope=repository:" + "a" * 50_000 + ":pull", alice),
            no_5xx,
        ),
        "3000 scope params": (get(f"/v2/token?{many_scopes}", alice), no_5xx),
        "scope of colons": (get("/v2/token?scope=" + ":" * 5000), no_5xx),
        "POST unknown grant_type": (form(grant_type="client_credentials"), four),
        "POST no grant_type": (form(username="alice"), four),
        "POST body not UTF-8": (post(b"\xff\xfe=\xfd"), four),
        "POST JSON body": (
            post(b'{"grant_type": "password"}', "application/json"),
            four,
        ),
        "POST 100 KB body": (form(grant_type="password", password="p" * 100_000), four),
        "POST wrong password": (
            form(grant_type="password", username="alice", password="nope-nope"),
            four,
        ),
        "POST refresh grant, access token": (refresh_grant(access), four),
        "POST refresh grant, alg none": (refresh_grant(forged_refresh), four),
        "POST refresh grant, garbage": (refresh_grant("a.b.c"), four),
        "POST refresh grant, empty": (form(grant_type="refresh_token"), four),
        "refresh token as access token": (get("/v2/", bearer(refresh)), four),
        "PUT to the token endpoint": (("PUT", "/v2/token", {}, b"x"), four),
    }

    failures = []
    for what, (request, allowed) in cases.items():
        started = time.monotonic()
        status, answer = raw_request(server, *request)
        took = time.monotonic() - started
        if status not in allowed or took > 10:
            failures.append(f"{what}: {status} in {took:.1f} s {answer[:160]!r}")
    with server.client() as c:
        assert c.get("/v2/").status_code == 401, "the server stopped answering"
    assert "unhandled error" not in server.log()
    assert not failures, "\n".join(failures)
