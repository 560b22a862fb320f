"""Tag rules: which tags may exist, which never move, who may move the rest,
and which new names look like spoofs of existing ones.

Every check that depends on what a tag points at now runs inside the
metadata transaction that moves the tag (`TagGuard.on_push`, passed to the
store as a hook), so two pushes racing for one immutable tag leave exactly
one winner: the second sees the first's tag and is refused.

Each refusal names the rule that fired, in words a person can act on, and
is written to the audit log like every tag move (`metadata.audit`).

Rules come from the configuration file (``tags.rules[i]``) and from admins at
run time (``tag rule <id>``, `metadata.policy`), in that order; so do the
names an admin allowed although they look like others. A look-alike under
mode ``hold`` raises `Held`: the caller parks the name (`metadata.policy`
holds) until an admin approves or rejects it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from quaylock import log
from quaylock.config import TagRule, TagsConfig, tag_rule
from quaylock.errors import Denied, Held
from quaylock.metadata import audit, policy
from quaylock.policy.access import matches
from quaylock.policy.lookalike import NameIndex

# The look-alike guard keeps the names it protects normalised (a NameIndex)
# between pushes: normalising 10,000 long tags costs tens of milliseconds
# inside the writing transaction, screening one candidate a few. A
# repository's tags are read again (those that moved since) at most every
# _GUARDED_SECONDS, repositories (those created since, by rowid) on every
# check; both are rebuilt whole every _REBUILD_SECONDS, which drops names
# deleted meanwhile.
_GUARDED_SECONDS = 2.0
_REBUILD_SECONDS = 60.0

# A tag that names a release: versions such as 1.2.3, v2, 2024.01.
# At most 40 characters, with a short suffix (1.2.3-rc1, 2.0-alpine3.19): a
# tag with a long hash after its version is for machines, and guarding it
# would let anyone make every push compare long names (bench/lookalike.py).
_RELEASE_RE = re.compile(r"(?=.{1,40}\Z)v?[0-9]+(\.[0-9]+)*([-+][0-9A-Za-z.-]{1,32})?")


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
    """Applies `tags` settings, and the rules and allowed names that admins
    stored, to tag creates, moves and deletes.

    Args:
        config: the `tags` section.
        store: the metadata store, for the stored rules and allowed names.
    """

    def __init__(self, config: TagsConfig, store):
        self.config = config
        self.store = store
        # (repository, rule) -> [read again at, rebuilt at, newest move seen, index]
        self._guarded_cache: dict[tuple[str, int], list] = {}
        # [rebuilt at, newest repository id seen, index], or None
        self._repositories: list | None = None
        # (policy version, [(label, rule)], allowed names) as last loaded.
        self._loaded: tuple[int, list[tuple[str, TagRule]], frozenset] = (
            -1,
            [],
            frozenset(),
        )

    def _current(self, c=None) -> tuple[int, list[tuple[str, TagRule]], frozenset]:
        """Configured plus stored rules, and allowed names; reloaded when an
        admin changed them (one indexed read otherwise). `c` is the writer's
        connection inside a transaction, None on the event loop."""
        read = (lambda fn: fn(c)) if c is not None else self.store.read
        version = read(policy.version)
        loaded = self._loaded
        if version == loaded[0]:
            return loaded
        rules = [(f"tags.rules[{i}]", rule) for i, rule in enumerate(self.config.rules)]
        for rule_id, raw in read(policy.stored_rules):
            rules.append((f"tag rule {rule_id}", tag_rule(raw, f"tag rule {rule_id}")))
        self._loaded = (version, rules, read(policy.allowed_names))
        self._guarded_cache.clear()
        return self._loaded

    def rules_for(self, repository: str, c=None) -> list[tuple[str, TagRule]]:
        return [
            (label, rule)
            for label, rule in self._current(c)[1]
            if any(matches(p, repository) for p in rule.repositories)
        ]

    def _allowed(self, kind: str, repository: str, name: str, c=None) -> bool:
        return (kind, repository, name) in self._current(c)[2]

    def check_name(self, repository: str, tag: str) -> None:
        """The naming rule, checked before anything is stored.

        Raises:
            Denied: no `allow` pattern of a matching rule admits the tag.
        """
        for where, rule in self.rules_for(repository):
            if rule.allow and _fullmatch_any(rule.allow, tag) is None:
                raise Denied(
                    f"tag {tag!r} is not allowed in {repository} by {where}: "
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
        # A hold waits until every rule has had its say: a later rule that
        # refuses outright wins over an earlier one that would hold.
        held: Held | None = None
        # One read of the policy version per move: the look-alike check
        # below reads the allowed names loaded here (`self._loaded`).
        rules = self.rules_for(repository, c)
        for where, rule in rules:
            if old is not None and (pattern := _fullmatch_any(rule.immutable, tag)):
                advice = (
                    "it stays for good" if new is None else "push a new tag instead"
                )
                verb = "deleted" if new is None else "moved"
                raise Denied(
                    f"tag {tag!r} in {repository} is immutable ({where}, pattern "
                    f"{pattern!r}) and cannot be {verb}; {advice}"
                )
            if not actor.tag_admin and (pattern := _fullmatch_any(rule.protected, tag)):
                raise Denied(
                    f"tag {tag!r} in {repository} is protected ({where}, pattern "
                    f"{pattern!r}); only subjects with the tag-admin right on "
                    f"{repository} may create, move or delete it"
                )
            if old is None and new is not None and rule.lookalike != "off":
                try:
                    self._check_lookalike(store, c, repository, tag, rule, where, actor)
                except Held as exc:
                    held = held or exc
                self._remember(repository, tag, rule)
        if held is not None:
            raise held

    def _remember(self, repository: str, tag: str, rule: TagRule) -> None:
        """Add a tag this process creates to the cached guarded tags, so the
        cache never hides a tag created here."""
        cached = self._guarded_cache.get((repository, id(rule)))
        if cached is not None and _guards(rule, tag):
            cached[3].add(tag)

    def _check_lookalike(self, store, c, repository, tag, rule, where, actor) -> None:
        if tag in rule.lookalike_allow or ("tag", repository, tag) in self._loaded[2]:
            return
        found = self._guarded(store, c, repository, rule).find(tag)
        if not found:
            return
        reason = f"new tag {tag!r} in {repository} looks like {found[0].existing!r}: {found[0].reason}"
        if rule.lookalike == "deny":
            raise Denied(
                f"{reason} ({where} lookalike is deny); an admin can allow the "
                f"name (POST /admin/v1/allowed-names) or add it to lookalike_allow"
            )
        if rule.lookalike == "hold":
            raise Held(f"{reason} ({where} lookalike is hold)")
        _alert(c, actor, repository, tag, reason, "look-alike tag allowed")

    def _guarded(self, store, c, repository: str, rule: TagRule) -> NameIndex:
        """The tags a new tag must not resemble: protected, immutable and
        version tags, among the `tags.lookalike_max_names` that moved last.
        Tags this process creates are added at once (`_remember`); one
        created by another worker is seen within `_GUARDED_SECONDS`, which
        a heuristic guard can afford."""
        key = (repository, id(rule))
        cached = self._guarded_cache.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[3]
        cap = self.config.lookalike_max_names
        if cached is None or cached[1] <= now or len(cached[3]) > 2 * cap + 100:
            rows = store.recent_tags(c, repository, cap)
            if len(rows) == cap:
                _warn_capped(f"tags of {repository}", cap)
            # Beyond the window of recent moves, which anyone who may push
            # can fill with junk tags: the tags protected or immutable by
            # name, and those this index guarded before, while they exist.
            literal = _literal_names(rule)
            before = [
                n for n in (cached[3].names if cached else ()) if n not in literal
            ]
            kept = store.existing_tags(c, repository, [*literal, *before[-cap:]])
            recent = [t for t, _ in rows if _guards(rule, t)]
            index = NameIndex([*kept, *recent], "tag")
            cached = [0.0, now + _REBUILD_SECONDS, rows[0][1] if rows else 0.0, index]
            if len(self._guarded_cache) > 10_000:
                self._guarded_cache.clear()
            self._guarded_cache[key] = cached
        else:
            rows = store.recent_tags(c, repository, cap, since=cached[2])
            for name, _ in rows:
                if _guards(rule, name):
                    cached[3].add(name)
            if rows:
                cached[2] = rows[0][1]
        cached[0] = now + _GUARDED_SECONDS
        return cached[3]

    def _repository_index(self, store) -> NameIndex:
        """The repositories a new one must not resemble: the
        `tags.lookalike_max_names` created first."""
        cap = self.config.lookalike_max_names
        now = time.monotonic()
        cached = self._repositories
        if cached is None or cached[0] <= now:
            rows = store.oldest_repositories(cap)
            cached = [now + _REBUILD_SECONDS, 0, NameIndex((), "repository")]
            self._repositories = cached
        elif len(cached[2]) < cap:
            rows = store.oldest_repositories(cap - len(cached[2]), after=cached[1])
        else:
            rows = []
        for number, name in rows:
            cached[2].add(name)
        if rows:
            cached[1] = rows[-1][0]
        if len(cached[2]) >= cap:
            _warn_capped("repositories", cap)
        return cached[2]

    def check_new_repository(self, store, repository: str, actor: Actor) -> None:
        """The look-alike guard for a repository that does not exist yet.

        Raises:
            Denied: it looks like an existing one and the mode is deny.
            Held: it does and the mode is hold.
        """
        mode = self.config.repository_lookalike
        if (
            mode == "off"
            or repository in self.config.repository_lookalike_allow
            or self._allowed("repository", "", repository)
        ):
            return
        found = self._repository_index(store).find(repository)
        if not found:
            return
        reason = (
            f"new repository {repository!r} looks like {found[0].existing!r}: "
            f"{found[0].reason}"
        )
        if mode == "deny":
            raise Denied(
                f"{reason} (tags.repository_lookalike is deny); an admin can allow "
                "the name (POST /admin/v1/allowed-names) or add it to "
                "tags.repository_lookalike_allow"
            )
        if mode == "hold":
            raise Held(f"{reason} (tags.repository_lookalike is hold)")
        _alert(None, actor, repository, None, reason, "look-alike repository allowed")


_warned_capped: set[str] = set()


def _literal_names(rule: TagRule) -> list[str]:
    """The protected and immutable patterns that are plain names (latest,
    stable), which the store can look up directly."""
    return [p for p in rule.protected + rule.immutable if re.escape(p) == p]


def _guards(rule: TagRule, tag: str) -> bool:
    """Whether new tags must not resemble `tag` under `rule`."""
    return bool(
        _fullmatch_any(rule.protected, tag)
        or _fullmatch_any(rule.immutable, tag)
        or _RELEASE_RE.fullmatch(tag)
    )


def _warn_capped(what: str, cap: int) -> None:
    """Say once per process that the guard saw only part of some names."""
    if what in _warned_capped or len(_warned_capped) > 1000:
        return
    _warned_capped.add(what)
    log.event(
        log.logger, 30, "look-alike guard compares with part of the names",
        detail=f"{what}: only {cap} are compared (tags.lookalike_max_names)",
    )  # fmt: skip


def _alert(c, actor: Actor, repository: str, tag: str | None, reason: str, what: str):
    """Log an allowed look-alike and, inside a transaction, audit it."""
    log.event(log.logger, 30, what, detail=reason, subject=actor.subject)
    if c is not None:
        audit.append(
            c,
            audit.AuditEvent(
                "alert", actor.subject, actor.client, actor.user_agent, repository, tag,
                detail=reason,
            ),
        )  # fmt: skip
