"""What admins do about tags while the registry runs: add and remove tag
rules, allow names that look like others, and decide held names.

Each change is one transaction with its audit record, and bumps the policy
version that `TagGuard` watches, so every worker applies it to the next
request it checks (`metadata.policy`).
"""

from __future__ import annotations

import json
from dataclasses import asdict

from quaylock import oci
from quaylock.config import ConfigError, tag_rule
from quaylock.errors import BadRequest, Conflict, NotFound
from quaylock.metadata import audit, policy
from quaylock.metadata.policy import Hold
from quaylock.services.tags import Actor

NAME_KINDS = ("tag", "repository")


class TagAdmin:
    """Args:
    registry: the `services.registry.Registry` whose tags these are.
    """

    def __init__(self, registry):
        self.registry = registry
        self.store = registry.store

    async def _write(self, fn):
        """Run `fn(connection) -> (result, events)` in a write transaction;
        tell webhooks and metrics about the events once it commits."""
        result, events = await self.store.write(fn)
        for event in events:
            self.registry._emit(event)
        return result

    # Rules

    def rules(self) -> list[dict]:
        """Every rule in the order they apply: configured, then stored."""
        listed = [
            {"source": "config", "label": f"tags.rules[{i}]", "rule": asdict(rule)}
            for i, rule in enumerate(self.registry.tags.config.rules)
        ]
        for rule_id, raw in self.store.read(policy.stored_rules):
            listed.append(
                {"source": "admin", "id": rule_id, "label": f"tag rule {rule_id}",
                 "rule": asdict(tag_rule(raw, f"tag rule {rule_id}"))}
            )  # fmt: skip
        return listed

    async def add_rule(self, raw, actor: Actor) -> int:
        """Raises:
        BadRequest: the rule is not valid, naming the key that is wrong."""
        try:
            rule = tag_rule(raw, "rule")
        except ConfigError as exc:
            raise BadRequest(str(exc)) from None

        stored = asdict(rule)

        def write(c) -> tuple[int, list]:
            rule_id = policy.add_rule(c, stored, actor.subject)
            text = json.dumps(stored, separators=(",", ":"))
            event = _event("rule.add", actor, None, None, f"tag rule {rule_id}: {text}")
            audit.append(c, event)
            return rule_id, [event]

        return await self._write(write)

    async def delete_rule(self, rule_id: int, actor: Actor) -> None:
        def write(c) -> tuple[None, list]:
            if not policy.delete_rule(c, rule_id):
                raise NotFound(f"tag rule {rule_id} does not exist")
            event = _event("rule.delete", actor, None, None, f"tag rule {rule_id}")
            audit.append(c, event)
            return None, [event]

        await self._write(write)

    # Allowed names

    def allowed(self) -> list[dict]:
        return self.store.read(policy.list_allowed)

    async def allow(self, kind: str, repository: str, name: str, actor: Actor) -> None:
        """Let `name` be created although it looks like another.

        Raises:
            BadRequest: an unknown kind, or a name outside the grammar.
        """
        repository = _checked(kind, repository, name)

        def write(c) -> tuple[None, list]:
            policy.allow(c, kind, repository, name, actor.subject)
            event = _name_event("allow.add", actor, kind, repository, name)
            audit.append(c, event)
            return None, [event]

        await self._write(write)

    async def disallow(
        self, kind: str, repository: str, name: str, actor: Actor
    ) -> None:
        repository = _checked(kind, repository, name)

        def write(c) -> tuple[None, list]:
            if not policy.disallow(c, kind, repository, name):
                raise NotFound(f"{kind} {name!r} is not on the allowed list")
            event = _name_event("allow.delete", actor, kind, repository, name)
            audit.append(c, event)
            return None, [event]

        await self._write(write)

    # Held names

    def holds(
        self, state: str | None, limit: int, before: int | None = None
    ) -> list[Hold]:
        """One page of holds in `state` (None: any), newest first."""
        if state is not None and state not in policy.HOLD_STATES:
            raise BadRequest(
                f"state must be one of {', '.join(policy.HOLD_STATES)}, got {state[:20]!r}"
            )
        return self.store.read(lambda c: policy.list_holds(c, state, limit, before))

    async def reject(self, hold_id: int, actor: Actor) -> Hold:
        def write(c) -> tuple[None, list]:
            hold = _pending(c, hold_id)
            policy.decide_hold(c, hold_id, "rejected", actor.subject)
            event = _hold_event("hold.reject", actor, hold)
            audit.append(c, event)
            return None, [event]

        await self._write(write)
        return self.store.read(lambda c: policy.get_hold(c, hold_id))

    async def approve(self, hold_id: int, actor: Actor) -> Hold:
        """Allow the held name; for a tag, also point it at the held digest,
        under every other rule (immutable, signature policy) as a push would.

        Raises:
            NotFound: no such hold.
            Conflict: it was decided already.
            Denied: another rule refuses the tag move now.
        """
        hold = self.store.read(lambda c: policy.get_hold(c, hold_id))
        if hold is None:
            raise NotFound(f"hold {hold_id} does not exist")
        registry = self.registry
        if hold.kind == "repository":

            def allow_repository(c) -> tuple[None, list]:
                _pending(c, hold_id)
                policy.allow(c, "repository", "", hold.name, actor.subject)
                policy.decide_hold(c, hold_id, "approved", actor.subject)
                event = _hold_event("hold.approve", actor, hold)
                audit.append(c, event)
                return None, [event]

            await self._write(allow_repository)
        else:
            manifest = await registry.get_manifest(hold.repository, hold.digest)
            emitted: list[audit.AuditEvent] = []

            def move(c, old: str | None) -> bool:
                _pending(c, hold_id)
                if old is not None and old != manifest.digest:
                    # A hold is for a tag that did not exist; approving it
                    # must never move one that exists now.
                    raise Conflict(
                        f"{hold.repository}:{hold.name} was created since, and "
                        f"points at {old}; hold {hold_id} would move it: reject it"
                    )
                policy.allow(c, "tag", hold.repository, hold.name, actor.subject)
                registry.tags.check_move(
                    self.store,
                    c,
                    hold.repository,
                    hold.name,
                    old,
                    manifest.digest,
                    actor,
                )
                policy.decide_hold(c, hold_id, "approved", actor.subject)
                emitted.append(_hold_event("hold.approve", actor, hold))
                audit.append(c, emitted[-1])
                if old != manifest.digest:
                    action = "tag.create" if old is None else "tag.move"
                    emitted.append(audit.AuditEvent(
                        action, actor.subject, actor.client, actor.user_agent,
                        hold.repository, hold.name, old, manifest.digest,
                    ))  # fmt: skip
                    audit.append(c, emitted[-1])
                return True

            await registry._refused_if(
                actor, hold.repository, hold.name,
                registry.signing.require_for_tag,
                hold.repository, hold.name, manifest.digest,
            )  # fmt: skip
            await registry._refused_if(
                actor, hold.repository, hold.name,
                self.store.put_manifest, hold.repository, manifest,
                registry.references(manifest), hold.name, move, emitted=emitted,
            )  # fmt: skip
        return self.store.read(lambda c: policy.get_hold(c, hold_id))


def _pending(c, hold_id: int) -> Hold:
    hold = policy.get_hold(c, hold_id)
    if hold is None:
        raise NotFound(f"hold {hold_id} does not exist")
    if hold.state != "pending":
        raise Conflict(f"hold {hold_id} was {hold.state} by {hold.decided_by} already")
    return hold


def _checked(kind: str, repository: str, name: str) -> str:
    if kind not in NAME_KINDS:
        raise BadRequest(
            f"kind must be one of {', '.join(NAME_KINDS)}, got {kind[:20]!r}"
        )
    if kind == "repository":
        oci.check_name(name)
        return ""
    oci.check_name(repository)
    oci.check_tag(name)
    return repository


def _event(action: str, actor: Actor, repository, tag, detail) -> audit.AuditEvent:
    return audit.AuditEvent(
        action, actor.subject, actor.client, actor.user_agent, repository, tag,
        detail=detail,
    )  # fmt: skip


def _name_event(action, actor, kind, repository, name) -> audit.AuditEvent:
    if kind == "repository":
        return _event(action, actor, name, None, f"repository name {name!r}")
    return _event(action, actor, repository, name, f"tag name {name!r}")


def _hold_event(action: str, actor: Actor, hold: Hold) -> audit.AuditEvent:
    repository = hold.name if hold.kind == "repository" else hold.repository
    tag = None if hold.kind == "repository" else hold.name
    return audit.AuditEvent(
        action, actor.subject, actor.client, actor.user_agent, repository, tag,
        new_digest=hold.digest, detail=f"hold {hold.id}: {hold.reason}",
    )  # fmt: skip
