"""Configuration loading: file, environment overrides, refusals."""

from __future__ import annotations

import pytest

from quaylock import config


def test_defaults_need_no_file():
    cfg = config.load(None, env={})
    assert cfg.listen == "127.0.0.1:5000"
    assert cfg.limits.manifest_max_bytes == 4 * 1024 * 1024
    assert cfg.deletes is True


def test_file_then_environment(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("listen: 127.0.0.1:6000\nlimits:\n  page_max_entries: 50\n")
    env = {"QUAYLOCK_LIMITS__PAGE_MAX_ENTRIES": "7", "QUAYLOCK_DELETES": "false"}
    cfg = config.load(path, env=env)
    assert cfg.port == 6000
    assert cfg.limits.page_max_entries == 7
    assert cfg.deletes is False


@pytest.mark.parametrize(
    "text, message",
    [
        ("limits:\n  manifest_max_byte: 1\n", "limits.manifest_max_byte"),
        ("limits:\n  manifest_max_bytes: lots\n", "whole number"),
        ("deletes: maybe\n", "true or false"),
        ("listen: nowhere\n", "HOST:PORT"),
        ("- a list\n", "mapping"),
    ],
)
def test_bad_settings_are_refused_with_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=message):
        config.load(path, env={})


def test_ipv6_listen():
    assert config.split_listen("[::1]:5000") == ("::1", 5000)


@pytest.mark.parametrize(
    "text, message",
    [
        ("log:\n  format: txt\n", "log.format"),
        ("log:\n  level: verbose\n", "log.level"),
        ("server:\n  workers: 0\n", "server.workers"),
        ("tls:\n  cert: /x.pem\n", "tls"),
        (
            "gc:\n  retention: [{repositories: [a], tags: 'v.*', keep: 0}]\n",
            r"gc.retention\[0\].keep: expected a whole number >= 1",
        ),
        (
            "gc:\n  retention: [{repositories: [a], tags: '(', keep: 1}]\n",
            r"gc.retention\[0\].tags: '\(' is not a regular expression",
        ),
        (
            "gc:\n  retention: [{repositories: [a], tags: '(a+)+', keep: 1}]\n",
            r"gc.retention\[0\].tags: .* nests a repeat",
        ),
        (
            "gc:\n  retention: [{repositories: [], tags: 'v.*'}]\n",
            r"gc.retention\[0\].repositories: expected a non-empty list",
        ),
        (
            "gc:\n  retention: [{repositories: [a], tags: 'v.*', kept: 3}]\n",
            r"gc.retention\[0\].kept",
        ),
    ],
)
def test_values_outside_their_choices_are_refused(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=message):
        config.load(path, env={})


def test_environment_value_that_is_not_yaml_is_a_config_error():
    with pytest.raises(config.ConfigError, match="QUAYLOCK_LISTEN"):
        config.load(None, env={"QUAYLOCK_LISTEN": "[::1]:5000"})
    quoted = config.load(None, env={"QUAYLOCK_LISTEN": '"[::1]:5000"'})
    assert (quoted.host, quoted.port) == ("::1", 5000)


def test_a_token_override_by_subject_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "rate_limits:\n  overrides:\n"
        "    - {subjects: ['robot:ci-*'], class: token, per_minute: 0}\n"
    )
    with pytest.raises(config.ConfigError, match="select them by addresses"):
        config.load(path, env={})
