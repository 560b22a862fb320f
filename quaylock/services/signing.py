"""Signature policy: which manifests need a valid signature, and when.

For a repository matched by a policy, a manifest counts as signed when one
of its signatures verifies against the policy's trust roots and names the
manifest's exact digest (and, for cosign, this repository). Signatures are
found where clients put them: the cosign tag ``sha256-<hex>.sig`` in the
same repository, and OCI 1.1 referrers (cosign, and notation in its JWS and
COSE envelopes). The checks themselves are in `policy.signatures` and
`policy.notation_cose`.

Modes:

- ``tag``: moving a matching tag to a manifest needs a signature on that
  digest already (push by digest, sign, then tag);
- ``pull``: pulling a manifest needs one; signatures and other artifacts
  that refer to a subject stay pullable, or no client could check them;
- ``audit``: nothing is refused; each move of a matching tag is checked,
  counted in ``quaylock_signature_checks_total`` and logged when unsigned,
  and the admin API reports the status of any manifest.

A manifest's positive answer is cached for a minute: a removed signature
stops counting within a minute. Negative answers are not, so a signature
added later is seen at once; only each layer that failed is remembered, and
skipped, for ten minutes (see `SignatureChecker.status`).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict

from quaylock import log
from quaylock.config import SignaturePolicy, SignaturesConfig
from quaylock.errors import Denied
from quaylock.metrics import Metrics
from quaylock.policy.access import matches
from quaylock.policy.notation_cose import verify_notation_cose
from quaylock.policy.signatures import (
    COSIGN_ARTIFACT_TYPE,
    NOTATION_ARTIFACT_TYPE,
    SignatureLayer,
    TrustRoot,
    Verdict,
    load_trust_root,
    signature_candidates,
    signature_layers,
    verify_cosign_signature,
    verify_notation_jws,
)

# Signature layers read per manifest, signature referrers read per artifact
# type, the largest signature manifest and layer, and the bytes one check
# reads in all.
_MAX_SIGNATURES = 20
_MAX_REFERRERS = 1000
_MAX_SIGNATURE_MANIFEST_BYTES = 64 * 1024
_MAX_CHECK_BYTES = 4 * 1024 * 1024
_MAX_VERIFICATIONS = 500
# How long a layer that failed to verify for a manifest is skipped.
_FAILED_SECONDS = 600
_MAX_LAYER_BYTES = 1024 * 1024
_CACHE_SECONDS = 60
_CACHE_MAX = 10_000
_UNSIGNED = "no signature found"


class SignatureChecker:
    """Applies `signatures.policies`.

    Args:
        config: the `signatures` section.
        store: the metadata store.
        driver: the blob driver (signature payloads are blobs).
    """

    def __init__(self, config: SignaturesConfig, store, driver, metrics: Metrics):
        self.store = store
        self.driver = driver
        self.metrics = metrics
        self.policies: list[tuple[int, SignaturePolicy, list[TrustRoot]]] = []
        for i, policy in enumerate(config.policies):
            roots = [
                load_trust_root("cosign-key", f"policies[{i}].cosign_keys[{j}]", path)
                for j, path in enumerate(policy.cosign_keys)
            ] + [
                load_trust_root(
                    "notation-x509", f"policies[{i}].notation_roots[{j}]", path
                )
                for j, path in enumerate(policy.notation_roots)
            ]
            self.policies.append((i, policy, roots))
        self._verified: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._failed: OrderedDict[tuple, float] = OrderedDict()

    def policy_for(self, repository: str):
        for i, policy, roots in self.policies:
            if any(matches(p, repository) for p in policy.repositories):
                return i, policy, roots
        return None

    async def status(
        self, repository: str, digest: str, roots: list[TrustRoot]
    ) -> Verdict:
        """Whether `digest` carries a valid signature in `repository`.

        Anyone who may push can add signature manifests that do not verify,
        to bury a real one or to make every check slow. So one check reads
        at most `_MAX_CHECK_BYTES` of signature manifests and as much of
        layers, smallest first, verifies at most `_MAX_VERIFICATIONS`, and
        skips layers already found invalid for this manifest (remembered
        for `_FAILED_SECONDS`): a real signature is found at the latest
        after a few checks, and junk costs once.
        """
        key = (repository, digest)
        now = time.monotonic()
        if self._verified.get(key, 0) > now:
            return Verdict(True, None, "verified within the last minute")
        reasons: list[str] = []
        # Gather first, smallest first: real signatures are a few kilobytes,
        # so padding junk with large layers does not put them out of reach.
        layers: dict[tuple, SignatureLayer] = {}
        manifest_bytes = 0
        async for content in self._signature_manifests(repository, digest):
            manifest_bytes += len(content)
            for layer in signature_layers(content)[:_MAX_SIGNATURES]:
                failed = (repository, digest, layer.digest, layer.signature_b64)
                if self._failed.get(failed, 0) <= now:
                    layers.setdefault(failed, layer)
            if manifest_bytes > _MAX_CHECK_BYTES:
                reasons.append("more signature manifests than one check reads")
                break
        budget, checked = _MAX_CHECK_BYTES, 0
        for failed, layer in sorted(layers.items(), key=lambda item: item[1].size):
            if layer.size > _MAX_LAYER_BYTES:
                reasons.append(f"{layer.kind} signature over {_MAX_LAYER_BYTES} bytes")
                continue
            if layer.size > budget or checked == _MAX_VERIFICATIONS:
                reasons.append("more signatures than one check reads")
                break
            budget -= layer.size
            checked += 1
            body = await self._blob(layer.digest)
            if body is None:
                continue
            verdict = _verify(layer, body, digest, repository, roots)
            if verdict.verified:
                _remember(self._verified, key, now + _CACHE_SECONDS)
                return verdict
            _remember(self._failed, failed, now + _FAILED_SECONDS)
            reasons.append(verdict.reason)
        reason = "; ".join(reasons[:3]) if reasons else _UNSIGNED
        return Verdict(False, None, reason)

    async def _signature_manifests(self, repository: str, digest: str):
        """The cosign ``.sig`` manifest, then signature referrers (cosign and
        notation artifact types only), each small enough to be one."""
        if digest.startswith("sha256:"):
            tagged = await self.store.get_manifest(
                repository, signature_candidates(digest)
            )
            if tagged is not None and tagged.size <= _MAX_SIGNATURE_MANIFEST_BYTES:
                yield tagged.content
        for artifact_type in (COSIGN_ARTIFACT_TYPE, NOTATION_ARTIFACT_TYPE):
            rows = await self.store.list_referrers(
                repository, digest, artifact_type, None, _MAX_REFERRERS
            )
            for ref_digest, _, size, _, _ in rows:
                if size > _MAX_SIGNATURE_MANIFEST_BYTES:
                    continue
                manifest = await self.store.get_manifest(repository, ref_digest)
                if manifest is not None:
                    yield manifest.content

    async def _blob(self, digest: str) -> bytes | None:
        parts = []
        try:
            async for chunk in self.driver.read_blob(digest, 0, _MAX_LAYER_BYTES):
                parts.append(chunk)
        except Exception:
            return None
        return b"".join(parts)

    def _count(self, mode: str, verdict: Verdict) -> None:
        if verdict.verified:
            result = "verified"
        elif verdict.reason == _UNSIGNED:
            result = "unsigned"
        else:
            result = "invalid"
        self.metrics.inc("quaylock_signature_checks_total", mode=mode, result=result)

    async def require_for_tag(self, repository: str, tag: str, digest: str) -> None:
        """Raises:
        Denied: a `tag` policy covers this tag and `digest` is not signed."""
        found = self.policy_for(repository)
        if found is None:
            return
        i, policy, roots = found
        if policy.mode == "pull" or not any(re.fullmatch(p, tag) for p in policy.tags):
            return
        verdict = await self.status(repository, digest, roots)
        self._count(policy.mode, verdict)
        if not verdict.verified and policy.mode == "audit":
            log.event(
                log.logger, 30, "tag moved to a manifest without a valid signature",
                repository=repository, tag=tag, digest=digest, detail=verdict.reason,
            )  # fmt: skip
        elif not verdict.verified:
            raise Denied(
                f"tag {tag!r} in {repository} may only point at a signed manifest "
                f"(signatures.policies[{i}], mode tag): {digest} has no valid "
                f"signature ({verdict.reason}); push by digest, sign, then tag"
            )

    async def require_for_pull(self, repository: str, manifest) -> None:
        """Raises:
        Denied: a `pull` policy covers this repository and the manifest is
            not signed."""
        found = self.policy_for(repository)
        if found is None or found[1].mode != "pull":
            return
        if signature_layers(manifest.content) or b'"subject"' in manifest.content:
            return  # a signature or another artifact about an image
        i, _, roots = found
        verdict = await self.status(repository, manifest.digest, roots)
        self._count("pull", verdict)
        if not verdict.verified:
            raise Denied(
                f"{repository}@{manifest.digest} has no valid signature "
                f"(signatures.policies[{i}], mode pull): {verdict.reason}"
            )


def _remember(cache: OrderedDict, key, until: float) -> None:
    cache[key] = until
    cache.move_to_end(key)
    while len(cache) > _CACHE_MAX:
        cache.popitem(last=False)


def _verify(
    layer: SignatureLayer, body: bytes, digest: str, repository: str, roots
) -> Verdict:
    """One layer's verdict. Whatever a hostile envelope makes a parser
    raise is a refusal of that layer, never an error of the request, so one
    bad signature cannot hide a good one."""
    try:
        if layer.kind == "cosign":
            return verify_cosign_signature(
                body, layer.signature_b64 or "", digest, repository, roots
            )
        if layer.kind == "notation-cose":
            return verify_notation_cose(body, digest, roots)
        return verify_notation_jws(body, digest, roots)
    except Exception as error:  # noqa: BLE001 - see the docstring
        log.event(
            log.logger, 30, "signature check failed unexpectedly",
            repository=repository, digest=digest, kind=layer.kind,
            detail=f"{type(error).__name__}: {str(error)[:200]}",
        )  # fmt: skip
        return Verdict(False, None, f"{layer.kind} signature could not be read")
