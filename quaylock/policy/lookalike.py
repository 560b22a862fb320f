"""The look-alike guard: does a new tag or repository name spoof an old one?

It runs when a tag or a repository is about to be created, and compares the
new name (the candidate) with names that already matter: a repository's
protected and release tags, or the existing repository names. It answers
with the existing names the candidate could be mistaken for, each with a
short reason. An exact match is not a look-alike; re-pushes are the
caller's business.

Both names are assumed to have passed the grammars in `quaylock.oci`, and
that rules out two whole classes of spoof: neither may hold whitespace or
invisible characters, and both are ASCII, so no Unicode homoglyph (a
Cyrillic 'а' for a Latin 'a') can reach this module. What is left is
ASCII that reads alike.

Rules, in the order they are applied to each pair:

1. **Honest neighbours pass.** Releases come in series: ``1.2.3`` and
   ``1.2.4``, ``2024-01-01`` and ``2024-01-02``, ``build-41`` and
   ``build-42``, ``commit-abc1234`` and ``commit-abc1235``. Such names are
   one edit apart, so any distance rule would flag them all. Each name is
   split into fields (words, numbers, hex ids of seven or more characters,
   separators; a ``v`` before a number is ignored). When both names have
   the same fields, words and separators equal, and differ only in the
   value of numbers or hex ids, they are distinct versions and never
   flagged. ``1.10`` and ``1.1`` are such a pair: both are valid, distinct
   versions. A differing number must not be zero-padded unless both have
   the same width (``01`` vs ``02`` in a date is fine; ``01`` vs ``2`` is
   not honest and falls through to the rules below).

2. **Same name once normalised.** Each name is normalised once into a key,
   step by step; if the keys are equal, the steps that brought the two
   names together are the reason. The steps, and the spoof each undoes:

   - *case*: ``Latest`` for ``latest`` (tags may hold capitals);
   - *'v' prefix*: ``v1.2.3`` for ``1.2.3``, either way;
   - *zero padding*: ``1.02.3`` for ``1.2.3``, ``01`` for ``1``;
   - *separators*: ``release_1`` for ``release-1``, ``my-org/app`` for
     ``myorg/app``, ``library-app`` for ``library/app``: ``.``, ``_``,
     ``__``, runs of ``-`` and, in repository names, ``/`` are read alike.
     A separator between two digits (or letters that pass for digits) is
     kept, so that ``1.2.3`` and ``12.3`` stay different numbers;
   - *look-alike characters*: ``0``/``o``, ``1``/``l``/``i`` (and so
     ``I``, once lower-cased), ``5``/``s``, ``rn``/``m``, ``vv``/``w``.

3. **Small edit distance.** Typos and near-typos (``lates``, ``latset``,
   ``libary/ubuntu``) are caught by optimal string alignment distance,
   which counts a swap of adjacent characters as one edit: at most 1 for
   names of 4 to 9 characters, 2 from 10 characters, nothing below 4
   (``v1`` and ``v2``, ``a`` and ``b`` are too short for a distance to
   mean anything). The distance is taken both between the lower-case
   names and between them with look-alikes folded, so that a typo combined
   with a look-alike (``1atset``) is caught too. Names that differ in
   structure fall here even when both are versions: ``12.3`` is one edit
   from ``1.2.3`` and is flagged.

   The one difference between the kinds is the length measured. For a
   repository it is the part after the leading path components the two
   share: ``acme/app`` and ``acme/api`` are compared as ``app`` and
   ``api``, too short to flag (both belong to one namespace, and short
   words one letter apart are usually different words), while
   ``library/ubuntu`` and ``library/ubuntv`` are compared as six
   characters and flagged.

Decided and not flagged: ``acme-app/app`` next to ``acme/app``. It adds a
whole word in another namespace, which no reader takes for a typo; keeping
namespaces apart is the access rules' job.

Speed: each step of the normalisation runs once over all existing names
joined into one string, not once a name, and the distance screen runs in
rapidfuzz's compiled `process.extract`; only the few names that come
through are looked at in Python. 10,000 existing names take about 10 ms
on an idle machine (the test prints the time).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rapidfuzz import process
from rapidfuzz.distance import OSA, Levenshtein

KINDS = frozenset({"tag", "repository"})

# Shortest name, and shortest name allowed two edits, for the distance rule.
_MIN_LENGTH = 4
_LONG_LENGTH = 10
_MAX_EDITS = 2
_EDITS = {1: "one edit", 2: "two edits"}

# Hex runs this long are commit or digest ids (a short git sha has 7).
_HEX_MIN_LENGTH = 7

# Each pattern opens with a character, not a lookbehind, so that the
# engine can skip ahead to it: several times faster over many names.
_V_PREFIX_RE = re.compile(r"[vV](?<![A-Za-z0-9][vV])(?=[0-9])")
_PADDING_RE = re.compile(r"0(?<![0-9]0)0*(?=[0-9])")
# Separators between digits, or letters that pass for digits.
_DIGIT_SEPARATOR_RE = re.compile(r"[._/-](?<=[0-9oils][._/-])[._/-]*(?=[0-9oils])")
_SEPARATOR_TABLE = str.maketrans("\0", ".", "._/-")
# ASCII only: the grammars admit no other character, so no Unicode
# homoglyph, whitespace or invisible character can reach this table.
_LOOKALIKE_TABLE = str.maketrans("01i5", "olls")

_RUN_RE = re.compile(r"[A-Za-z0-9]+|[._/-]+")
_PIECE_RE = re.compile(r"[A-Za-z]+|[0-9]+")
_DIGITS_RE = re.compile(r"[0-9]+")
_HEX_RE = re.compile(r"[0-9a-fA-F]*[0-9][0-9a-fA-F]*")


@dataclass(frozen=True, slots=True)
class LookAlike:
    """An existing name that a candidate could be mistaken for."""

    existing: str
    reason: str


def find_lookalikes(
    candidate: str, existing: Iterable[str], kind: str = "tag"
) -> list[LookAlike]:
    """Existing names that `candidate` could be mistaken for; empty if none.

    An exact match is not a look-alike (the caller handles re-pushes).
    Matches come closest first: same-once-normalised, then by edit
    distance, then in the order of `existing`; duplicates count once.

    Args:
        candidate: the tag or repository name about to be created.
        existing: the names to protect (protected and release tags, or
            repository names).
        kind: ``"tag"`` or ``"repository"``.

    Raises:
        ValueError: `kind` is neither ``"tag"`` nor ``"repository"``.
    """
    return NameIndex(existing, kind).find(candidate)


class NameIndex:
    """Names to protect, normalised once, for many candidates: normalising
    10,000 long names costs tens of milliseconds, screening a candidate
    against them in one compiled pass a few.

    Raises:
        ValueError: `kind` is neither ``"tag"`` nor ``"repository"``.
    """

    def __init__(self, existing: Iterable[str], kind: str = "tag"):
        if kind not in KINDS:
            raise ValueError(f"kind must be 'tag' or 'repository', not {kind!r}")
        self.kind = kind
        self.names = list(dict.fromkeys(existing))
        self._columns = _forms(self.names) if self.names else ([], [], [])

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str) -> None:
        """Protect one more name."""
        if name in self.names:
            return
        self.names.append(name)
        for column, form in zip(self._columns, _forms_of(name)):
            column.append(form)

    def find(self, candidate: str) -> list[LookAlike]:
        """Names that `candidate` could be mistaken for; see `find_lookalikes`."""
        names, columns = self.names, self._columns
        if not names:
            return []
        # Screen: keys by equality, lower-case and folded forms by distance
        # in one compiled pass each.
        ours = _forms_of(candidate)
        near = {i for i, key in enumerate(columns[2]) if key == ours[2]}
        for query, choices in zip(ours[:2], columns[:2]):
            hits = process.extract(
                query, choices, scorer=OSA.distance, score_cutoff=_MAX_EDITS,
                limit=None,
            )  # fmt: skip
            near.update(index for _, _, index in hits)

        # Judge the few that came through, closest first.
        found = []
        for index in sorted(near):
            if names[index] == candidate:
                continue
            theirs = tuple(column[index] for column in columns)
            verdict = _judge(candidate, ours, names[index], theirs, self.kind)
            if verdict is not None:
                found.append((verdict[0], index, verdict[1]))
        found.sort(key=lambda item: item[:2])
        return [lookalike for _, _, lookalike in found]


# A name's forms: lower-cased, with look-alikes folded, and fully normalised
# (the key). Kept as columns of plain strings: 10,000 objects cost more than
# the normalisation itself.
_Forms = tuple[str, str, str]


def _forms_of(name: str) -> _Forms:
    lower = name.lower()
    return lower, _fold_lookalikes(lower), _key(lower)


def _forms(names: list[str]) -> tuple[list[str], list[str], list[str]]:
    """The lower-case, folded and key columns for `names`."""
    # One pass of each step over all names joined by newlines costs a
    # fraction of a pass per name. No name in the grammar holds a newline;
    # should one come anyway, go name by name.
    text = "\n".join(names)
    if text.count("\n") != len(names) - 1:
        rows = [_forms_of(name) for name in names]
        return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    lower = text.lower()
    return (
        lower.split("\n"),
        _fold_lookalikes(lower).split("\n"),
        _key(lower).split("\n"),
    )


def _judge(
    candidate: str, ours: _Forms, existing: str, theirs: _Forms, kind: str
) -> tuple[int, LookAlike] | None:
    """How close `candidate` is to `existing` and why, or None if not close."""
    if _honest_neighbours(candidate, existing):
        return None
    lower, folded, key = ours
    other_lower, other_folded, other_key = theirs
    if key == other_key:
        return 0, LookAlike(existing, _same_key_reason(candidate, existing))

    allowed = _allowed_edits(candidate, existing, kind)
    by_lower = OSA.distance(lower, other_lower)
    by_folded = OSA.distance(folded, other_folded)
    if by_lower <= allowed:
        reason = _edit_reason(lower, other_lower, existing)
        return by_lower, LookAlike(existing, reason)
    if by_folded <= allowed:
        edits = _EDITS[by_folded]
        reason = f"{edits} from {existing!r} once look-alikes are folded"
        return by_folded, LookAlike(existing, reason)
    return None


# -- Rule 1: honest neighbours ------------------------------------------------


def _fields(name: str) -> tuple[tuple[str, str], ...]:
    """Split a name into ("word" | "number" | "hex" | "sep", text) fields."""
    fields = []
    for run in _RUN_RE.findall(name):
        if run[0] in "._/-":
            fields.append(("sep", run))
        elif _DIGITS_RE.fullmatch(run):
            fields.append(("number", run))
        elif len(run) >= _HEX_MIN_LENGTH and _HEX_RE.fullmatch(run):
            fields.append(("hex", run))
        else:
            pieces = _PIECE_RE.findall(run)
            # "v1" is version 1: the 'v' is a convention, not a field.
            if len(pieces) > 1 and pieces[0] in ("v", "V"):
                pieces = pieces[1:]
            fields.extend(("number" if p[0].isdigit() else "word", p) for p in pieces)
    return tuple(fields)


def _honest_neighbours(a: str, b: str) -> bool:
    """Same structure, differing only in the value of numbers or hex ids."""
    fields_a, fields_b = _fields(a), _fields(b)
    if len(fields_a) != len(fields_b):
        return False
    differ = False
    for (kind_a, text_a), (kind_b, text_b) in zip(fields_a, fields_b):
        if kind_a != kind_b:
            return False
        if text_a == text_b:
            continue
        if kind_a in ("word", "sep"):
            return False
        if kind_a == "hex":
            # Same id in other letters' case is a respelling, not a new id.
            if text_a.lower() == text_b.lower():
                return False
        elif int(text_a) == int(text_b):
            return False  # same number, padded differently
        elif _padded(text_a) or _padded(text_b):
            # Fixed-width fields (dates, build 0041) may both be padded.
            if len(text_a) != len(text_b):
                return False
        differ = True
    return differ


def _padded(number: str) -> bool:
    return len(number) > 1 and number[0] == "0"


# -- Rule 2: the same name once normalised ------------------------------------


def _lower(name: str) -> str:
    return name.lower()


def _drop_v_prefix(name: str) -> str:
    return _V_PREFIX_RE.sub("", name)


def _unpad(name: str) -> str:
    return _PADDING_RE.sub("", name)


def _join_separators(name: str) -> str:
    # Mark separators between digits, then drop the others and keep the
    # marks as one '.', in one translate.
    return _DIGIT_SEPARATOR_RE.sub("\0", name).translate(_SEPARATOR_TABLE)


def _fold_lookalikes(name: str) -> str:
    return name.replace("rn", "m").replace("vv", "w").translate(_LOOKALIKE_TABLE)


# The normalisation, step by step, with the name of what each step undoes.
_STEPS: tuple[tuple[str, Callable[[str], str]], ...] = (
    ("case", _lower),
    ("'v' prefix", _drop_v_prefix),
    ("zero padding", _unpad),
    ("separators", _join_separators),
    ("look-alike characters", _fold_lookalikes),
)


def _key(lower: str) -> str:
    """The name with every step applied (`lower` is already lower-case)."""
    return _fold_lookalikes(_join_separators(_unpad(_drop_v_prefix(lower))))


def _same_key_reason(candidate: str, existing: str) -> str:
    """Say which normalisation steps brought the two names together.

    A step counts when it shortens the Levenshtein distance between the
    two names as normalised so far.
    """
    a, b = candidate, existing
    steps = []
    for label, step in _STEPS:
        next_a, next_b = step(a), step(b)
        if Levenshtein.distance(next_a, next_b) < Levenshtein.distance(a, b):
            # Which name the step changed more: did the candidate add or drop?
            grew = len(a) - len(next_a) > len(b) - len(next_b)
            steps.append((label, grew))
        a, b = next_a, next_b

    if len(steps) > 1:
        labels = [label for label, _ in steps]
        listed = ", ".join(labels[:-1]) + " and " + labels[-1]
        return f"differs from {existing!r} only in {listed}"
    label, grew = steps[0] if steps else ("look-alike characters", False)
    if label == "case":
        return f"differs only in case from {existing!r}"
    if label == "'v' prefix":
        if grew:
            return f"same as {existing!r} with a 'v' added"
        return f"same as {existing!r} without the 'v'"
    if label == "zero padding":
        if grew:
            return f"zero-padded version of {existing!r}"
        return f"unpadded version of {existing!r}"
    if label == "separators":
        return f"differs only in separators from {existing!r}"
    ours, theirs = _difference(candidate, existing)
    # '1' for 'L' reads alike only once lower-cased, so case differs too;
    # a capital I reads as an l by itself.
    capitals = (ours + theirs).replace("I", "")
    if capitals.lower() != capitals:
        return f"differs from {existing!r} only in case and look-alike characters"
    if len(ours) == 2 and ours == theirs[::-1]:
        # "bulid" for "build": a swap, that folding 'i' and 'l' hides.
        return _swap_reason(ours, theirs, existing)
    if max(len(ours), len(theirs)) <= 3:
        return f"{ours!r} for {theirs!r} in {existing!r}"
    return f"same as {existing!r} with look-alike characters"


# -- Rule 3: small edit distance ----------------------------------------------


def _allowed_edits(candidate: str, existing: str, kind: str) -> int:
    """Edits that still count as a look-alike, by the compared length."""
    if kind == "repository":
        # Compare what follows the shared leading path components.
        ours, theirs = candidate.split("/"), existing.split("/")
        shared = 0
        for a, b in zip(ours[:-1], theirs[:-1]):
            if a != b:
                break
            shared += 1
        length = min(len("/".join(ours[shared:])), len("/".join(theirs[shared:])))
    else:
        length = min(len(candidate), len(existing))
    if length < _MIN_LENGTH:
        return 0
    return 1 if length < _LONG_LENGTH else 2


def _edit_reason(lower: str, other_lower: str, existing: str) -> str:
    edits = OSA.distance(lower, other_lower)
    if edits == 1 and Levenshtein.distance(lower, other_lower) == 2:
        return _swap_reason(*_difference(lower, other_lower), existing)
    return f"{_EDITS[edits]} from {existing!r}"


def _swap_reason(ours: str, theirs: str, existing: str) -> str:
    return f"{theirs!r} swapped to {ours!r} in {existing!r}"


def _difference(a: str, b: str) -> tuple[str, str]:
    """The parts of `a` and `b` left once their common ends are cut off."""
    shortest = min(len(a), len(b))
    start = 0
    while start < shortest and a[start] == b[start]:
        start += 1
    end = 0
    while end < shortest - start and a[-1 - end] == b[-1 - end]:
        end += 1
    return a[start : len(a) - end], b[start : len(b) - end]
