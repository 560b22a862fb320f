"""Real registry clients against a running quaylock.

These tests show that the registry works with the tools people push and
pull with, not only with our own HTTP tests:

- umoci builds a multi-layer OCI image from files on this machine;
- skopeo pushes it (as OCI and as Docker schema 2), inspects it, pulls it
  back to `dir:` and `oci:` layouts, copies it between repositories, lists
  its tags across pages and deletes it;
- the oras Python client pushes artifacts whose manifests name the image as
  their `subject`, and pulls them back; the referrers API (end-12) lists
  them, filtered by `artifactType` when asked.

Every check compares digests or bytes with what the client wrote, so a
registry that rewrote, lost or mislabelled anything fails here. The tools'
own configuration (policy, registries.conf, credentials) is pointed at the
test's tmp_path so nothing from this machine's user leaks in.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import oras.oci
import oras.provider
import pytest
import requests

from tests.conftest import Server, require_tool
from tests.helpers import EMPTY_JSON, OCI_INDEX, OCI_MANIFEST, sha256, unique_repo

TOOL_TIMEOUT = 120  # seconds for one umoci or skopeo command

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

SBOM_TYPE = "application/vnd.example.sbom.v1+json"
SIGNATURE_TYPE = "application/vnd.example.signature.v1"

# Real files and folders on this machine, one layer each; the umoci binary
# makes a layer of a few MiB, so uploads are more than one small request.
IMAGE_SOURCES = [
    "/usr/share/doc/skopeo",
    "/etc/os-release",
    "/usr/share/common-licenses",
    "/usr/bin/umoci",
]


# Helpers: running tools


def run(argv: list[str], env: dict | None = None) -> bytes:
    """Run a tool; fail the test with its stderr unless it exits 0."""
    result = subprocess.run(argv, capture_output=True, env=env, timeout=TOOL_TIMEOUT)
    assert result.returncode == 0, (
        f"`{shlex.join(argv)}` exited {result.returncode}:\n"
        f"{result.stderr.decode(errors='replace')}"
    )
    return result.stdout


class Skopeo:
    """skopeo with its configuration kept inside the test's tmp_path."""

    def __init__(self, home: Path, tool: str = "skopeo"):
        home.mkdir(parents=True, exist_ok=True)
        policy = home / "policy.json"
        policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        registries_conf = home / "registries.conf"
        registries_conf.write_text("")
        (home / "registries.d").mkdir(exist_ok=True)
        (home / "tmp").mkdir(exist_ok=True)
        self.path = require_tool(tool)
        self.global_flags = [
            "--policy", str(policy),
            "--registries.d", str(home / "registries.d"),
            "--tmpdir", str(home / "tmp"),
        ]  # fmt: skip
        self.env = {
            **os.environ,
            "HOME": str(home),
            "XDG_RUNTIME_DIR": str(home),
            "XDG_CONFIG_HOME": str(home / "config"),
            "REGISTRY_AUTH_FILE": str(home / "auth.json"),
            "CONTAINERS_REGISTRIES_CONF": str(registries_conf),
        }

    def __call__(self, *args: str) -> bytes:
        return run([self.path, *self.global_flags, *args], env=self.env)

    def copy(self, source: str, destination: str, *flags: str) -> None:
        # quaylock serves plain HTTP on loopback; skopeo falls back to it
        # only when TLS verification is off.
        self(
            "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
            *flags, source, destination,
        )  # fmt: skip

    def inspect(self, reference: str) -> dict:
        return json.loads(self("inspect", "--tls-verify=false", reference))

    def inspect_raw(self, reference: str) -> bytes:
        return self("inspect", "--raw", "--tls-verify=false", reference)


# Helpers: the image umoci builds


@dataclass
class Layout:
    """An OCI image layout on disk with one tagged image in it."""

    path: Path
    tag: str

    @property
    def reference(self) -> str:
        return f"oci:{self.path}:{self.tag}"

    def blob(self, digest: str) -> bytes:
        algorithm, hex_ = digest.split(":", 1)
        return (self.path / "blobs" / algorithm / hex_).read_bytes()

    @property
    def manifest_digest(self) -> str:
        index = json.loads((self.path / "index.json").read_text())
        (descriptor,) = index["manifests"]
        return descriptor["digest"]

    @property
    def manifest_bytes(self) -> bytes:
        return self.blob(self.manifest_digest)

    @property
    def manifest(self) -> dict:
        return json.loads(self.manifest_bytes)

    @property
    def config_digest(self) -> str:
        return self.manifest["config"]["digest"]

    @property
    def layer_digests(self) -> list[str]:
        return [layer["digest"] for layer in self.manifest["layers"]]

    def image_blobs(self) -> dict[str, bytes]:
        """Manifest, config and layers, by digest: what a push must carry."""
        digests = [self.manifest_digest, self.config_digest, *self.layer_digests]
        return {digest: self.blob(digest) for digest in digests}

    def subject(self) -> oras.oci.Subject:
        """A descriptor of the image, for an artifact's `subject` field."""
        return oras.oci.Subject(
            mediaType=OCI_MANIFEST,
            digest=self.manifest_digest,
            size=len(self.manifest_bytes),
        )


def build_image(directory: Path, tag: str = "v1") -> Layout:
    """Build a multi-layer image from IMAGE_SOURCES with umoci."""
    umoci = require_tool("umoci")
    image = f"{directory}:{tag}"
    run([umoci, "init", "--layout", str(directory)])
    run([umoci, "new", "--image", image])
    for source in IMAGE_SOURCES:
        run([umoci, "insert", "--image", image, source, source])
    run([
        umoci, "config", "--image", image,
        "--config.cmd", "/bin/cat", "--config.cmd", "/etc/os-release",
        "--config.label", "org.example.built-by=quaylock-tests",
    ])  # fmt: skip
    # Each umoci step leaves an older manifest and config behind; drop them
    # so the layout holds exactly one image.
    run([umoci, "gc", "--layout", str(directory)])
    return Layout(directory, tag)


# Helpers: looking at the registry over HTTP


def get_manifest(
    client: httpx.Client,
    repository: str,
    reference: str,
    accept: str = f"{OCI_MANIFEST}, {DOCKER_MANIFEST}",
) -> httpx.Response:
    return client.get(
        f"/v2/{repository}/manifests/{reference}", headers={"Accept": accept}
    )


def assert_manifest_unknown(client: httpx.Client, repository: str, digest: str):
    response = get_manifest(client, repository, digest)
    assert response.status_code == 404, (
        f"GET /v2/{repository}/manifests/{digest} after delete gave "
        f"{response.status_code}: {response.text}"
    )
    codes = [error["code"] for error in response.json()["errors"]]
    assert codes == ["MANIFEST_UNKNOWN"], response.text


def referrers(
    client: httpx.Client,
    repository: str,
    digest: str,
    artifact_type: str | None = None,
) -> httpx.Response:
    params = {"artifactType": artifact_type} if artifact_type else None
    response = client.get(f"/v2/{repository}/referrers/{digest}", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == OCI_INDEX
    return response


def docker_ref(server: Server, repository: str, reference: str) -> str:
    separator = "@" if ":" in reference else ":"
    return f"docker://{server.host}/{repository}{separator}{reference}"


# Fixtures


@pytest.fixture
def image(tmp_path) -> Layout:
    return build_image(tmp_path / "image")


@pytest.fixture
def skopeo(tmp_path) -> Skopeo:
    return Skopeo(tmp_path / "skopeo")


@pytest.fixture
def oras_registry(server, tmp_path, monkeypatch) -> oras.provider.Registry:
    """An oras client for the `server` registry, over plain HTTP.

    oras reads ~/.docker/config.json for credentials; HOME is moved into
    tmp_path so it finds none.
    """
    home = tmp_path / "oras-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return oras.provider.Registry(hostname=server.host, insecure=True)


# skopeo: push, inspect, pull


@pytest.mark.interop
def test_skopeo_push_keeps_manifest_bytes_and_layers(server, client, image, skopeo):
    repository = unique_repo("interop-push")
    skopeo.copy(image.reference, docker_ref(server, repository, "v1"))

    # What skopeo sees: the same digest, layers in order, and the tag.
    inspected = skopeo.inspect(docker_ref(server, repository, "v1"))
    assert inspected["Digest"] == image.manifest_digest
    assert inspected["Layers"] == image.layer_digests
    assert len(inspected["Layers"]) == len(IMAGE_SOURCES)
    assert inspected["RepoTags"] == ["v1"]
    assert inspected["Labels"] == {"org.example.built-by": "quaylock-tests"}
    assert skopeo.inspect_raw(docker_ref(server, repository, "v1")) == (
        image.manifest_bytes
    )

    # What the API serves: the pushed bytes under their own digest.
    response = get_manifest(client, repository, "v1")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == OCI_MANIFEST
    assert response.headers["docker-content-digest"] == image.manifest_digest
    assert response.content == image.manifest_bytes
    for digest, content in image.image_blobs().items():
        if digest == image.manifest_digest:
            continue
        blob = client.get(f"/v2/{repository}/blobs/{digest}")
        assert blob.status_code == 200, f"{digest}: {blob.text}"
        assert sha256(blob.content) == digest
        assert blob.content == content


@pytest.mark.interop
def test_skopeo_pull_to_dir_is_byte_identical(server, image, skopeo, tmp_path):
    repository = unique_repo("interop-pull-dir")
    skopeo.copy(image.reference, docker_ref(server, repository, "v1"))
    pulled = tmp_path / "pulled-dir"

    skopeo.copy(docker_ref(server, repository, "v1"), f"dir:{pulled}")

    # dir: stores each blob under its hex digest, the manifest as
    # manifest.json, and a `version` file of its own.
    files = {p.name: p.read_bytes() for p in pulled.iterdir() if p.name != "version"}
    assert files.pop("manifest.json") == image.manifest_bytes
    expected = {
        digest.removeprefix("sha256:"): content
        for digest, content in image.image_blobs().items()
        if digest != image.manifest_digest
    }
    assert sorted(files) == sorted(expected)
    for name, content in files.items():
        assert sha256(content) == f"sha256:{name}", f"blob {name} has other bytes"
        assert content == expected[name]


@pytest.mark.interop
def test_skopeo_pull_to_oci_layout_is_byte_identical(server, image, skopeo, tmp_path):
    repository = unique_repo("interop-pull-oci")
    skopeo.copy(image.reference, docker_ref(server, repository, "v1"))
    pulled = Layout(tmp_path / "pulled-oci", "copied")

    skopeo.copy(docker_ref(server, repository, "v1"), pulled.reference)

    assert pulled.manifest_digest == image.manifest_digest
    blob_dir = pulled.path / "blobs" / "sha256"
    files = {p.name: p.read_bytes() for p in blob_dir.iterdir()}
    expected = {
        digest.removeprefix("sha256:"): content
        for digest, content in image.image_blobs().items()
    }
    assert sorted(files) == sorted(expected)
    for name, content in files.items():
        assert sha256(content) == f"sha256:{name}", f"blob {name} has other bytes"
        assert content == expected[name]


@pytest.mark.interop
def test_skopeo_push_as_docker_schema2_is_served_with_docker_media_type(
    server, client, image, skopeo, tmp_path
):
    repository = unique_repo("interop-docker-v2s2")
    reference = docker_ref(server, repository, "v1")

    skopeo.copy(image.reference, reference, "--format", "v2s2")

    response = get_manifest(client, repository, "v1", accept=DOCKER_MANIFEST)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == DOCKER_MANIFEST
    digest = response.headers["docker-content-digest"]
    assert digest == sha256(response.content)
    manifest = response.json()
    assert manifest["mediaType"] == DOCKER_MANIFEST
    # Conversion changes the media types, not the compressed layers.
    assert [layer["digest"] for layer in manifest["layers"]] == image.layer_digests
    assert {layer["mediaType"] for layer in manifest["layers"]} == {DOCKER_LAYER_GZIP}
    config = client.get(f"/v2/{repository}/blobs/{manifest['config']['digest']}")
    assert config.status_code == 200, config.text
    assert sha256(config.content) == manifest["config"]["digest"]

    # skopeo reads back the very bytes the registry serves, by digest too.
    assert skopeo.inspect_raw(reference) == response.content
    pulled = tmp_path / "pulled-v2s2"
    skopeo.copy(docker_ref(server, repository, digest), f"dir:{pulled}")
    assert (pulled / "manifest.json").read_bytes() == response.content


# skopeo: copy between repositories, tags, delete


@pytest.mark.interop
def test_skopeo_copy_between_repositories_makes_blobs_present_in_target(
    server, client, image, skopeo
):
    source, target = unique_repo("interop-copy"), unique_repo("interop-copy")
    skopeo.copy(image.reference, docker_ref(server, source, "v1"))

    skopeo.copy(docker_ref(server, source, "v1"), docker_ref(server, target, "v1"))

    assert skopeo.inspect(docker_ref(server, target, "v1"))["Digest"] == (
        image.manifest_digest
    )
    for digest, content in image.image_blobs().items():
        if digest == image.manifest_digest:
            continue
        head = client.head(f"/v2/{target}/blobs/{digest}")
        assert head.status_code == 200, f"HEAD {target} {digest}: {head.status_code}"
        assert head.headers["docker-content-digest"] == digest
        assert int(head.headers["content-length"]) == len(content)

    # The copy stands on its own: deleting the source leaves it whole.
    skopeo("delete", "--tls-verify=false", docker_ref(server, source, "v1"))
    assert_manifest_unknown(client, source, image.manifest_digest)
    response = get_manifest(client, target, image.manifest_digest)
    assert response.status_code == 200, response.text
    assert response.content == image.manifest_bytes
    for digest in image.layer_digests:
        assert client.head(f"/v2/{target}/blobs/{digest}").status_code == 200


@pytest.mark.interop
def test_skopeo_list_tags_follows_pages(make_server, image, tmp_path):
    # Two tags a page, so five tags take three pages and skopeo must follow
    # the Link header (end-8b) to see them all.
    server = make_server({"limits": {"page_default_entries": 2}})
    skopeo = Skopeo(tmp_path / "skopeo")
    repository = unique_repo("interop-tags")
    tags = ["1.0", "1.1", "2.0", "latest", "stable"]
    for tag in tags:
        skopeo.copy(image.reference, docker_ref(server, repository, tag))

    output = skopeo(
        "list-tags", "--tls-verify=false", f"docker://{server.host}/{repository}"
    )
    listed = json.loads(output)

    assert listed["Repository"] == f"{server.host}/{repository}"
    assert sorted(listed["Tags"]) == tags
    with server.client() as client:
        first_page = client.get(f"/v2/{repository}/tags/list")
    assert first_page.json()["tags"] == tags[:2]
    assert 'rel="next"' in first_page.headers["link"]


@pytest.mark.interop
def test_skopeo_delete_removes_manifest(server, client, image, skopeo):
    repository = unique_repo("interop-delete")
    skopeo.copy(image.reference, docker_ref(server, repository, "v1"))
    assert get_manifest(client, repository, image.manifest_digest).status_code == 200

    skopeo("delete", "--tls-verify=false", docker_ref(server, repository, "v1"))

    assert_manifest_unknown(client, repository, image.manifest_digest)
    assert get_manifest(client, repository, "v1").status_code == 404
    tags = client.get(f"/v2/{repository}/tags/list")
    assert "v1" not in (tags.json().get("tags") or []), tags.text


# oras: artifacts with a subject, referrers, pull


def push_sbom(
    oras_registry: oras.provider.Registry,
    server: Server,
    repository: str,
    image: Layout,
    tmp_path: Path,
) -> tuple[requests.Response, Path]:
    """Push a small SBOM of the image's layers as an artifact about it.

    oras's high-level push takes a `subject` but no `artifactType`, so the
    artifact type comes from the config's media type, as image-spec says a
    referrers list then shows it.
    """
    sbom = tmp_path / "sbom.json"
    content = {"image": image.manifest_digest, "layers": image.layer_digests}
    sbom.write_text(json.dumps(content, indent=2))
    response = oras_registry.push(
        f"{server.host}/{repository}:sbom",
        files=[f"{sbom}:application/spdx+json"],
        disable_path_validation=True,
        # No file by that name: oras then sends the empty config `{}`
        # under this media type.
        manifest_config=f"{tmp_path / 'absent'}:{SBOM_TYPE}",
        manifest_annotations={"org.example.kind": "sbom"},
        subject=image.subject(),
        quiet=True,
    )
    assert response.status_code == 201, response.text
    return response, sbom


def push_signature(
    oras_registry: oras.provider.Registry,
    server: Server,
    repository: str,
    image: Layout,
    tmp_path: Path,
) -> requests.Response:
    """Push a signature-like artifact with its own `artifactType` and the
    empty config, through oras's lower-level blob and manifest calls."""
    container = oras_registry.get_container(f"{server.host}/{repository}:signature")
    signature = tmp_path / "signature.txt"
    signature.write_text(f"signed {image.manifest_digest}\n")
    empty = tmp_path / "empty.json"
    empty.write_text("{}")

    layer = oras.oci.NewLayer(str(signature), media_type=SIGNATURE_TYPE)
    config, _ = oras.oci.ManifestConfig(str(empty), media_type=EMPTY_JSON)
    for path, descriptor in ((signature, layer), (empty, config)):
        uploaded = oras_registry.upload_blob(str(path), container, descriptor)
        assert uploaded.status_code in (200, 201), uploaded.text

    manifest = oras.oci.NewManifest()
    manifest.update(
        artifactType=SIGNATURE_TYPE,
        config=config,
        layers=[layer],
        subject=asdict(image.subject()),
    )
    del manifest["annotations"]
    response = oras_registry.upload_manifest(manifest, container)
    assert response.status_code == 201, response.text
    return response


def pushed_digest(response: requests.Response) -> str:
    """The digest of the manifest a client sent, checked against the one the
    registry answered with."""
    digest = response.headers["docker-content-digest"]
    assert digest == sha256(response.request.body)
    return digest


@pytest.mark.interop
def test_oras_artifact_with_subject_is_listed_in_referrers(
    server, client, image, skopeo, oras_registry, tmp_path
):
    repository = unique_repo("interop-referrers")
    skopeo.copy(image.reference, docker_ref(server, repository, "v1"))

    response, _ = push_sbom(oras_registry, server, repository, image, tmp_path)

    # distribution-spec "Pushing Manifests with Subject": the registry
    # confirms it processed the subject.
    assert response.headers["oci-subject"] == image.manifest_digest
    digest = pushed_digest(response)
    listed = referrers(client, repository, image.manifest_digest)
    assert "oci-filters-applied" not in listed.headers
    assert listed.json()["manifests"] == [
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": len(response.request.body),
            "artifactType": SBOM_TYPE,
            "annotations": {"org.example.kind": "sbom"},
        }
    ]


@pytest.mark.interop
def test_referrers_filter_by_artifact_type(
    server, client, image, skopeo, oras_registry, tmp_path
):
    repository = unique_repo("interop-referrers-filter")
    skopeo.copy(image.reference, docker_ref(server, repository, "v1"))
    sbom_push, _ = push_sbom(oras_registry, server, repository, image, tmp_path)
    signature_push = push_signature(oras_registry, server, repository, image, tmp_path)
    sbom, signature = pushed_digest(sbom_push), pushed_digest(signature_push)
    subject = image.manifest_digest

    everything = referrers(client, repository, subject)
    only_signatures = referrers(client, repository, subject, SIGNATURE_TYPE)
    nothing = referrers(client, repository, subject, "application/x-none")

    listed = {(m["digest"], m["artifactType"]) for m in everything.json()["manifests"]}
    assert listed == {(sbom, SBOM_TYPE), (signature, SIGNATURE_TYPE)}
    assert "oci-filters-applied" not in everything.headers
    assert [m["digest"] for m in only_signatures.json()["manifests"]] == [signature]
    assert only_signatures.headers["oci-filters-applied"] == "artifactType"
    assert nothing.json()["manifests"] == []
    assert nothing.headers["oci-filters-applied"] == "artifactType"


@pytest.mark.interop
def test_deleting_an_artifact_removes_it_from_referrers(
    server, client, image, skopeo, oras_registry, tmp_path
):
    repository = unique_repo("interop-referrers-delete")
    skopeo.copy(image.reference, docker_ref(server, repository, "v1"))
    sbom_push, _ = push_sbom(oras_registry, server, repository, image, tmp_path)
    signature_push = push_signature(oras_registry, server, repository, image, tmp_path)
    sbom, signature = pushed_digest(sbom_push), pushed_digest(signature_push)

    # oras resolves the tag with HEAD, then deletes the manifest by digest.
    assert oras_registry.delete_tag(f"{server.host}/{repository}", "sbom")

    assert_manifest_unknown(client, repository, sbom)
    listed = referrers(client, repository, image.manifest_digest)
    assert [m["digest"] for m in listed.json()["manifests"]] == [signature]
    assert get_manifest(client, repository, image.manifest_digest).status_code == 200


@pytest.mark.interop
def test_oras_pull_returns_pushed_bytes(server, image, skopeo, oras_registry, tmp_path):
    repository = unique_repo("interop-oras-pull")
    skopeo.copy(image.reference, docker_ref(server, repository, "v1"))
    response, sbom = push_sbom(oras_registry, server, repository, image, tmp_path)
    digest = pushed_digest(response)

    pulled = oras_registry.pull(
        f"{server.host}/{repository}@{digest}", outdir=str(tmp_path / "pulled")
    )

    assert [Path(p).name for p in pulled] == [sbom.name]
    assert Path(pulled[0]).read_bytes() == sbom.read_bytes()
    manifest = oras_registry.get_manifest(f"{server.host}/{repository}@{digest}")
    assert manifest["subject"]["digest"] == image.manifest_digest


@pytest.mark.interop
def test_oras_chunked_push_of_a_large_file_pulls_back_identical(
    server, oras_registry, tmp_path
):
    # A real multi-MiB binary in 1 MiB PATCH chunks (end-5), then PUT (end-6).
    repository = unique_repo("interop-oras-chunked")
    source = Path(require_tool("umoci"))
    assert source.stat().st_size > 3 << 20
    response = oras_registry.push(
        f"{server.host}/{repository}:v1",
        files=[str(source)],
        disable_path_validation=True,
        do_chunked=True,
        chunk_size=1 << 20,
        quiet=True,
    )
    assert response.status_code == 201, response.text

    pulled = oras_registry.pull(
        f"{server.host}/{repository}:v1", outdir=str(tmp_path / "pulled")
    )

    assert [Path(p).name for p in pulled] == [source.name]
    assert sha256(Path(pulled[0]).read_bytes()) == sha256(source.read_bytes())
