"""Who may do what to which repository.

Rights come from three places, in this order:

1. admins may do everything;
2. each user owns the namespace of its own name: ``alice`` may pull, push
   and delete ``alice`` and ``alice/...``;
3. the `auth.rules` of the configuration, each granting actions on
   repository patterns to subjects (``anonymous``, ``user:NAME``,
   ``group:NAME``, ``robot:NAME``; ``*`` in a name matches any name).

A robot may do what its own grants allow and its owner may do, never more.
A subject from an outside issuer's token may do exactly what that token
grants, as with Distribution's token auth.

Repository patterns are matched against names that already passed the
spec's grammar, so no ``..`` or ``%2F`` can reach them. ``*`` matches
within one path component, ``**`` any number of components:
``team/*`` matches ``team/app`` but not ``team/app/x``; ``team/**``
matches both.
"""

from __future__ import annotations

import functools
import re
from fnmatch import fnmatchcase

from quaylock.config import AuthRule
from quaylock.policy.accounts import ROBOT_PREFIX, Subject

# tag-admin: create, move and delete protected tags (services/tags.py).
ALL_ACTIONS = frozenset({"pull", "push", "delete", "tag-admin"})


_STAR, _GLOBSTAR = object(), object()


@functools.lru_cache(maxsize=1024)
def _tokens(pattern: str) -> tuple:
    """A glob as tokens: characters, `_STAR` (any run inside one path part)
    and `_GLOBSTAR` (any run at all)."""
    tokens: list = []
    for piece in re.split(r"(\*\*|\*)", pattern):
        if piece == "**":
            tokens.append(_GLOBSTAR)
        elif piece == "*":
            tokens.append(_STAR)
        else:
            tokens.extend(piece)
    return tuple(tokens)


def matches(pattern: str, repository: str) -> bool:
    """Whether `repository` matches the glob `pattern` (`*` within one path
    part, `**` across parts).

    The glob runs as a set of positions advanced one character at a time,
    so the cost is at most len(pattern) x len(repository) steps whatever
    the pattern: a regular expression's backtracking would make
    ``**a**a**a**b`` take seconds on a long name.
    """
    if "*" not in pattern:
        return pattern == repository
    if pattern.endswith("/**") and "*" not in pattern[:-3]:
        return repository.startswith(pattern[:-2])
    tokens = _tokens(pattern)
    end = len(tokens)
    states = _skip_stars(tokens, {0})
    for char in repository:
        advanced = set()
        for i in states:
            if i == end:
                continue
            token = tokens[i]
            if token is _GLOBSTAR or (token is _STAR and char != "/"):
                advanced.add(i)
            elif token == char:
                advanced.add(i + 1)
        if not advanced:
            return False
        states = _skip_stars(tokens, advanced)
    return end in states


def _skip_stars(tokens: tuple, states: set) -> set:
    """Add the positions after stars, which may match nothing."""
    pending = list(states)
    while pending:
        i = pending.pop()
        if i < len(tokens) and (tokens[i] is _STAR or tokens[i] is _GLOBSTAR):
            if i + 1 not in states:
                states.add(i + 1)
                pending.append(i + 1)
    return states


def subject_matches(selector: str, subject: Subject) -> bool:
    if selector == "anonymous":
        return subject.kind == "anonymous"
    kind, _, name = selector.partition(":")
    if kind == "user" and subject.kind == "user":
        return fnmatchcase(subject.name, name)
    if kind == "group" and subject.kind == "user":
        # Not robots: a robot acts within its own grants, whatever groups
        # its owner is in (the owner's rights only bound it).
        return any(fnmatchcase(group, name) for group in subject.groups)
    if kind == "robot" and subject.kind == "robot":
        return fnmatchcase(subject.name[len(ROBOT_PREFIX) :], name)
    return False


class AccessPolicy:
    """Decides the actions a subject may take on a repository.

    Args:
        rules: the `auth.rules` of the configuration.
    """

    def __init__(self, rules: list[AuthRule]):
        self.rules = rules
        # Rules do not change while the process runs; subjects are frozen.
        self.allowed = functools.lru_cache(maxsize=65536)(self._allowed)

    def _allowed(self, subject: Subject, repository: str) -> frozenset[str]:
        if subject.token_access is not None:
            granted: set[str] = set()
            for name, actions in subject.token_access:
                if name == repository:
                    granted |= actions
            return frozenset(granted & ALL_ACTIONS) | (
                ALL_ACTIONS if "*" in granted else frozenset()
            )
        if subject.kind == "robot":
            owner = Subject("user", subject.owner or "", subject.groups, subject.admin)
            bound = self._rights(owner, repository)
            own: set[str] = set(self._from_rules(subject, repository))
            for grant in subject.grants:
                if any(matches(p, repository) for p in grant.repositories):
                    own |= ALL_ACTIONS if "*" in grant.actions else set(grant.actions)
            return frozenset(own) & bound
        return self._rights(subject, repository)

    def _rights(self, subject: Subject, repository: str) -> frozenset[str]:
        if subject.admin:
            return ALL_ACTIONS
        rights = set(self._from_rules(subject, repository))
        if subject.kind == "user" and (
            repository == subject.name or repository.startswith(subject.name + "/")
        ):
            rights |= ALL_ACTIONS
        return frozenset(rights)

    def _from_rules(self, subject: Subject, repository: str) -> set[str]:
        """What the rules grant `subject`. A rule for ``anonymous`` grants
        everyone, signed in or not: logging in never takes a right away
        (a public repository stays pullable with credentials)."""
        rights: set[str] = set()
        for rule in self.rules:
            if "anonymous" not in rule.subjects and not any(
                subject_matches(s, subject) for s in rule.subjects
            ):
                continue
            if any(matches(p, repository) for p in rule.repositories):
                rights |= ALL_ACTIONS if "*" in rule.actions else set(rule.actions)
        return rights

    def may_list_catalog(self, subject: Subject) -> bool:
        return subject.kind != "anonymous" or any(
            "anonymous" in rule.subjects for rule in self.rules
        )
