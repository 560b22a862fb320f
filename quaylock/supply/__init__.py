"""Checks on quaylock's own supply chain: the Python distributions it runs on.

`audit` compares pinned or installed versions with a local copy of OSV
advisories, offline, because registries often run where nothing online can be
reached.
"""
