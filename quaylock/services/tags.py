"""Tag rules: which tags may exist, which never move, who may move the rest,
and which new names look like spoofs of existing ones.

Every check that depends on what a tag points at now runs inside the
metadata transaction that moves the tag (`TagGuard.on_push`, passed to the
store as a hook), so two pushes racing for one immutable tag leave exactly
one winner: the second sees the first's tag and is refused.

Each refusal names the rule that fired, in words a person can act on, and
is written to the audit log like every tag move (`metadata.audit`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from quaylock import log
from quaylock.config import TagRule, TagsConfig
from quaylock.errors import Denied
from quaylock.metadata import audit
from quaylock.policy.access import matches
from quaylock.policy.lookalike import find_lookalikes

_GUARDED_SECONDS = 2.0

# A tag that names a release: versions such as 1.2.3, v2, 2024.01.
_RELEASE_RE = re.compile(r"v?[0-9]+(\.[0-9]+)*([-+][0-9A-Za-z.-]+)?")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who pushes, for rules and for the audit log."""

    subject: str
    client: str | None = None
    user_agent: str | None = None
    # May create, move and delete protected tags here.
    tag_admin: bool = True


def _fullmatch_any(patterns: list[str], tag: str) -> str | None:
    for pattern in patterns:
        if re.fullmatch(pattern, tag):
            return pattern
    return None


class TagGuard:
    """Applies `tags` settings to tag creates, moves and deletes.

    Args:
        config: the `tags` section.
    """

    def __init__(self, config: TagsConfig):
        self.config = config
        self._guarded_cache: dict[tuple[str, int], tuple[float, list[str]]] = {}

    def rules_for(self, repository: str) -> list[tuple[int, TagRule]]:
        return [
            (i, rule)
            for i, rule in enumerate(self.config.rules)
            if any(matches(p, repository) for p in rule.repositories)
        ]

    def check_name(self, repository: str, tag: str) -> None:
        """The naming rule, checked before anything is stored.

        Raises:
            Denied: no `allow` pattern of a matching rule admits the tag.
        """
        for i, rule in self.rules_for(repository):
            if rule.allow and _fullmatch_any(rule.allow, tag) is None:
                raise Denied(
                    f"tag {tag!r} is not allowed in {repository} by tags.rules[{i}]: "
                    f"tags there must match one of {', '.join(rule.allow)}"
                )

    def check_move(
        self,
        store,
        c,
        repository: str,
        tag: str,
        old: str | None,
        new: str | None,
        actor: Actor,
    ) -> None:
        """Refuse a create (old None), move, or delete (new None) of `tag`.

        Runs inside the transaction, with `old` read in that transaction.

        Raises:
            Denied: naming the rule that fired.
        """
        if old == new:
            return  # a re-push of the same digest changes nothing
        for i, rule in self.rules_for(repository):
            where = f"tags.rules[{i}]"
            if old is not None and (pattern := _fullmatch_any(rule.immutable, tag)):
                verb = "deleted" if new is None else "moved"
                raise Denied(
                    f"tag {tag!r} in {repository} is immutable ({where}, pattern "
                    f"{pattern!r}) and cannot be {verb}; push a new tag instead"
                )
            if not actor.tag_admin and (pattern := _fullmatch_any(rule.protected, tag)):
                raise Denied(
                    f"tag {tag!r} in {repository} is protected ({where}, pattern "
                    f"{pattern!r}); only subjects with the tag-admin right on "
                    f"{repository} may create, move or delete it"
                )
            if old is None and new is not None and rule.lookalike != "off":
                self._check_lookalike(store, c, repository, tag, rule, where, actor)
                self._remember(repository, tag, rule)

    def _remember(self, repository: str, tag: str, rule: TagRule) -> None:
        """Add a tag this process creates to the cached guarded tags, so the
        cache never hides a tag created here."""
        cached = self._guarded_cache.get((repository, id(rule)))
        if cached is not None and (
            _fullmatch_any(rule.protected, tag)
            or _fullmatch_any(rule.immutable, tag)
            or _RELEASE_RE.fullmatch(tag)
        ):
            cached[1].append(tag)

    def _check_lookalike(self, store, c, repository, tag, rule, where, actor) -> None:
        if tag in rule.lookalike_allow:
            return
        found = find_lookalikes(
            tag, self._guarded(store, c, repository, rule), kind="tag"
        )
        if not found:
            return
        reason = f"new tag {tag!r} in {repository} looks like {found[0].existing!r}: {found[0].reason}"
        # TODO(#5): a "hold" mode that parks the tag until an admin approves.
        if rule.lookalike == "deny":
            raise Denied(
                f"{reason} ({where}.lookalike is deny); an admin can allow it in "
                f"{where}.lookalike_allow"
            )
        log.event(
            log.logger,
            30,
            "look-alike tag allowed",
            detail=reason,
            subject=actor.subject,
        )
        audit.append(
            c,
            audit.AuditEvent(
                "alert", actor.subject, actor.client, actor.user_agent, repository, tag,
                detail=reason,
            ),
        )  # fmt: skip

    def _guarded(self, store, c, repository: str, rule: TagRule) -> list[str]:
        """The tags a new tag must not resemble: protected, immutable and
        version tags. Read at most every `_GUARDED_SECONDS` per repository,
        since the read is linear in the repository's tags and runs inside the
        writing transaction. Tags this process creates are added at once
        (`_remember`); one created by another worker in that window is
        missed, which a heuristic guard can afford."""
        key = (repository, id(rule))
        cached = self._guarded_cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        guarded = [
            t
            for t in store.tags_matching(c, repository)
            if _fullmatch_any(rule.protected, t)
            or _fullmatch_any(rule.immutable, t)
            or _RELEASE_RE.fullmatch(t)
        ]
        if len(self._guarded_cache) > 10_000:
            self._guarded_cache.clear()
        self._guarded_cache[key] = (now + _GUARDED_SECONDS, guarded)
        return guarded

    def check_new_repository(self, store, repository: str, actor: Actor) -> None:
        """The look-alike guard for a repository that does not exist yet.

        Raises:
            Denied: it looks like an existing one and the mode is deny.
        """
        mode = self.config.repository_lookalike
        if mode == "off" or repository in self.config.repository_lookalike_allow:
            return
        existing = store.read_all(
            "SELECT name FROM repositories ORDER BY name LIMIT 10000"
        )
        found = find_lookalikes(repository, [n for (n,) in existing], kind="repository")
        if not found:
            return
        reason = (
            f"new repository {repository!r} looks like {found[0].existing!r}: "
            f"{found[0].reason}"
        )
        if mode == "deny":
            raise Denied(
                f"{reason} (tags.repository_lookalike is deny); an admin can allow "
                "it in tags.repository_lookalike_allow"
            )
        log.event(
            log.logger,
            30,
            "look-alike repository allowed",
            detail=reason,
            subject=actor.subject,
        )
