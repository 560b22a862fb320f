"""The look-alike guard: spoofs it must catch, honest neighbours it must pass."""

from __future__ import annotations

import dataclasses

import pytest

from quaylock.oci import check_name, check_tag
from quaylock.policy.lookalike import LookAlike, find_lookalikes

# id, candidate, existing, flagged, substring of the reason (flagged only)
TAGS = [
    # Small edit distance, and swapped neighbours.
    ("tag-missing-letter", "lates", "latest", True, "one edit from 'latest'"),
    ("tag-extra-letter", "latests", "latest", True, "one edit from 'latest'"),
    ("tag-swapped-letters", "latset", "latest", True, "swapped"),
    ("tag-swapped-in-word", "bulid-41", "build-41", True, "swapped"),
    ("tag-long-two-edits", "relase-candidat", "release-candidate", True, "two edits"),
    ("tag-long-one-edit-in-word", "comit-abc1234", "commit-abc1234", True, "one edit"),
    ("tag-typo-and-lookalike", "1atset", "latest", True, "look-alikes are folded"),
    ("tag-version-structure-differs", "12.3", "1.2.3", True, "one edit"),
    # Look-alike characters.
    ("tag-zero-for-o", "dem0", "demo", True, "'0' for 'o' in 'demo'"),
    ("tag-o-for-zero", "v1.o", "v1.0", True, "'o' for '0' in 'v1.0'"),
    ("tag-one-for-l", "1atest", "latest", True, "'1' for 'l' in 'latest'"),
    ("tag-capital-i-for-l", "Iatest", "latest", True, "'I' for 'l' in 'latest'"),
    ("tag-l-for-one", "l.2.3", "1.2.3", True, "'l' for '1'"),
    ("tag-five-for-s", "5table", "stable", True, "'5' for 's' in 'stable'"),
    ("tag-rn-for-m", "rnain", "main", True, "'rn' for 'm' in 'main'"),
    ("tag-vv-for-w", "vvheezy", "wheezy", True, "'vv' for 'w' in 'wheezy'"),
    ("tag-l-in-hex-id", "commit-abcl234", "commit-abc1234", True, "'l' for '1'"),
    # Case, separators, 'v' prefix, zero padding.
    ("tag-lower-for-capital", "latest", "Latest", True, "only in case from 'Latest'"),
    ("tag-all-capitals", "LATEST", "latest", True, "only in case"),
    ("tag-hex-id-in-capitals", "commit-ABC1234", "commit-abc1234", True, "case"),
    ("tag-underscore-for-dash", "release_1", "release-1", True, "separators"),
    ("tag-short-separator-swap", "rc_1", "rc-1", True, "separators"),
    ("tag-date-dots-for-dashes", "2024.01.01", "2024-01-01", True, "separators"),
    ("tag-v-dropped", "1.2.3", "v1.2.3", True, "same as 'v1.2.3' without the 'v'"),
    ("tag-v-added", "v1.2.3", "1.2.3", True, "with a 'v' added"),
    ("tag-padded-minor", "1.02.3", "1.2.3", True, "zero-padded version of '1.2.3'"),
    ("tag-padded-short", "01", "1", True, "zero-padded version of '1'"),
    ("tag-padding-dropped", "1.2.3", "1.02.3", True, "unpadded version of '1.02.3'"),
    ("tag-padded-build", "build-0042", "build-42", True, "zero-padded"),
    ("tag-v-and-padding", "V01.2.3", "1.2.3", True, "'v' prefix and zero padding"),
    # Honest neighbours: distinct versions, dates, builds and ids.
    ("tag-patch-bump", "1.2.4", "1.2.3", False, None),
    ("tag-minor-bump", "1.3.0", "1.2.3", False, None),
    ("tag-major-bump-with-v", "v3", "v2", False, None),
    ("tag-1.10-is-not-1.1", "1.10", "1.1", False, None),
    ("tag-1.1-is-not-1.10", "1.1", "1.10", False, None),
    ("tag-1.10.0-is-not-1.1.0", "1.10.0", "1.1.0", False, None),
    ("tag-next-day", "2024-01-02", "2024-01-01", False, None),
    ("tag-padded-date-fields", "2024-01-10", "2024-01-01", False, None),
    ("tag-compact-date", "20240102", "20240101", False, None),
    ("tag-next-build", "build-42", "build-41", False, None),
    ("tag-fixed-width-build", "build-0042", "build-0041", False, None),
    ("tag-release-candidate", "1.2.3-rc2", "1.2.3-rc1", False, None),
    ("tag-base-image-version", "3.12-alpine", "3.11-alpine", False, None),
    ("tag-other-commit", "commit-abc1235", "commit-abc1234", False, None),
    ("tag-other-commit-letter", "commit-abd1234", "commit-abc1234", False, None),
    ("tag-other-sha", "sha-1a2b3c4e", "sha-1a2b3c4d", False, None),
    ("tag-next-version-other-v-style", "v1.2.4", "1.2.3", False, None),
    ("tag-short-letters", "a", "b", False, None),
    ("tag-short-versions", "v1", "v2", False, None),
    ("tag-short-words", "dev", "deb", False, None),
    ("tag-unrelated", "stable", "latest", False, None),
    ("tag-more-fields", "1.2.3.4", "1.2.3", False, None),
]

REPOSITORIES = [
    ("repo-u-to-v", "library/ubuntv", "library/ubuntu", True, "one edit"),
    ("repo-u-to-zero", "library/ubunt0", "library/ubuntu", True, "one edit"),
    ("repo-namespace-missing-letter", "libary/ubuntu", "library/ubuntu", True, "one"),
    ("repo-namespace-one-letter", "acne/app", "acme/app", True, "one edit"),
    ("repo-swapped-letters", "acme/backedn", "acme/backend", True, "swapped"),
    ("repo-rn-for-m", "library/rnariadb", "library/mariadb", True, "'rn' for 'm'"),
    ("repo-one-for-i", "library/red1s", "library/redis", True, "'1' for 'i'"),
    ("repo-dash-in-namespace", "my-org/app", "myorg/app", True, "separators"),
    ("repo-dash-for-slash", "library-app", "library/app", True, "separators"),
    ("repo-dash-for-underscore", "acme/web-app", "acme/web_app", True, "separators"),
    ("repo-dot-for-double-underscore", "acme/web.app", "acme/web__app", True, "sep"),
    ("repo-extra-namespace-word", "acme-app/app", "acme/app", False, None),
    ("repo-short-last-component", "acme/api", "acme/app", False, None),
    ("repo-python-version", "library/python3.12", "library/python3.11", False, None),
    ("repo-service-version", "team/service-v2", "team/service-v1", False, None),
    ("repo-unrelated", "library/debian", "library/ubuntu", False, None),
    ("repo-deeper-path", "acme/app/x", "acme/app", False, None),
]


def _table(rows, kind):
    return [pytest.param(kind, *row[1:], id=row[0]) for row in rows]


@pytest.mark.parametrize(
    "kind, candidate, existing, flagged, reason",
    _table(TAGS, "tag") + _table(REPOSITORIES, "repository"),
)
def test_lookalike_table(kind, candidate, existing, flagged, reason):
    # Every row is a name the grammar admits, or the case would be moot.
    check = check_tag if kind == "tag" else check_name
    check(candidate)
    check(existing)

    found = find_lookalikes(candidate, [existing], kind=kind)

    if flagged:
        assert [f.existing for f in found] == [existing]
        assert reason in found[0].reason
    else:
        assert found == []


def test_table_covers_enough_pairs_of_each_kind():
    assert len(TAGS) + len(REPOSITORIES) >= 40
    for rows in (TAGS, REPOSITORIES):
        assert any(row[3] for row in rows) and not all(row[3] for row in rows)
    assert len({row[0] for row in TAGS + REPOSITORIES}) == len(TAGS) + len(REPOSITORIES)


def test_no_existing_names_means_no_lookalikes():
    assert find_lookalikes("latest", []) == []
    assert find_lookalikes("library/app", [], kind="repository") == []


def test_exact_match_is_not_a_lookalike():
    assert find_lookalikes("latest", ["latest"]) == []
    assert find_lookalikes("acme/app", ["acme/app"], kind="repository") == []


def test_exact_match_does_not_hide_other_lookalikes():
    found = find_lookalikes("latest", ["latest", "Latest"])
    assert found == [LookAlike("Latest", "differs only in case from 'Latest'")]


def test_every_lookalike_is_reported_closest_first():
    found = find_lookalikes("1atest", ["stable", "latests", "Latest", "latest"])

    assert [f.existing for f in found] == ["Latest", "latest", "latests"]
    assert found[0].reason == (
        "differs from 'Latest' only in case and look-alike characters"
    )
    assert found[1].reason == "'1' for 'l' in 'latest'"
    assert "one edit from 'latests'" in found[2].reason


def test_duplicate_existing_names_are_reported_once():
    found = find_lookalikes("latset", ["latest", "latest", "latest"])
    assert [f.existing for f in found] == ["latest"]


def test_existing_names_may_be_any_iterable():
    found = find_lookalikes("latset", (name for name in ["stable", "latest"]))
    assert [f.existing for f in found] == ["latest"]


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind"):
        find_lookalikes("latest", ["latset"], kind="digest")


def test_lookalike_is_immutable():
    found = find_lookalikes("latset", ["latest"])[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        found.existing = "other"  # type: ignore[misc]


def test_kind_changes_only_the_length_compared():
    # As a tag-like string the whole name counts; as a repository only the
    # part after the shared namespace does.
    assert find_lookalikes("acme/api", ["acme/app"], kind="repository") == []
    assert find_lookalikes("acme-api", ["acme-app"], kind="tag") != []


def test_names_outside_the_grammar_do_not_break_the_guard():
    # A newline would split the joined names wrongly: they go one by one.
    found = find_lookalikes("latset", ["a\nb", "l\u0430test", "Latest"])
    assert [f.existing for f in found] == ["Latest"]


def test_capital_letters_in_repository_names_are_left_to_the_grammar():
    # "Iibrary/ubuntu" would spoof "library/ubuntu", but no repository name
    # may hold a capital, so the guard never sees it.
    with pytest.raises(Exception, match="invalid repository name"):
        check_name("Iibrary/ubuntu")


def _existing_names(count: int) -> list[str]:
    """A realistic spread of tags: versions, dates, builds, branches, ids."""
    names = ["latest", "stable", "main"]
    for i in range(count):
        shape = i % 5
        if shape == 0:
            names.append(f"{i // 500}.{i // 20 % 25}.{i % 20}")
        elif shape == 1:
            names.append(f"2024-{i % 12 + 1:02d}-{i % 28 + 1:02d}-{i}")
        elif shape == 2:
            names.append(f"build-{i}")
        elif shape == 3:
            names.append(f"feature-{i}-login-page")
        else:
            names.append(f"commit-{i * 2654435761 % 16**7:07x}")
    return names[:count]


@pytest.mark.parametrize(
    "candidate, first", [("1atest", "latest"), ("1.02.5", "1.2.5"), ("x-y-z", None)]
)
def test_ten_thousand_existing_names_are_screened_correctly(candidate, first):
    # How long it takes is measured by bench/lookalike.py, not here.
    existing = _existing_names(10_000)
    assert len(existing) == 10_000
    found = find_lookalikes(candidate, existing)
    assert (found[0].existing if found else None) == first


def test_an_index_built_once_finds_what_a_fresh_search_finds():
    from quaylock.policy.lookalike import NameIndex

    names = ["latest", "1.2.3", "stable", "release-1"]
    index = NameIndex(names[:2], "tag")
    index.add("stable")
    index.add("release-1")
    index.add("stable")  # once is enough
    assert index.names == names
    for candidate in ("lates", "v1.2.3", "stab1e", "release_1", "1.2.4", "latest"):
        assert index.find(candidate) == find_lookalikes(candidate, names, "tag")


def test_version_tags_with_long_suffixes_are_not_guarded():
    from quaylock.config import tag_rule
    from quaylock.services.tags import _guards

    rule = tag_rule({"repositories": ["**"]}, "rule")
    assert _guards(rule, "1.2.3") and _guards(rule, "2.0-alpine3.19")
    assert _guards(rule, "v1.2.3-rc1")
    # A tag of a build hash is for machines; guarding it would let anyone
    # make every push compare long names.
    assert not _guards(rule, "12.34-" + "ab" * 50)
    assert not _guards(rule, "build-latest")
