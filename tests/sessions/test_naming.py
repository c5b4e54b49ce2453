"""The session's names for its servers' tools: allowed characters, 64 at most, unique, stable."""

import re

from sessions_app import naming

ALLOWED = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def test_a_clean_short_name_is_the_server_prefix_and_the_tool():
    assert naming.session_name("github", "create_issue") == "github__create_issue"
    assert naming.split("github__create_issue") == ("github", "create_issue")
    assert naming.split("github__create__issue") == ("github", "create__issue")  # the first `__` ends the prefix
    assert naming.split("nodoubleunderscore") is None and naming.split("__x") is None


def test_names_models_would_refuse_are_cleaned_cut_and_hashed_stably():
    odd = "lookup.record/v2"
    long = "summarise_" + "the_quarterly_figures_" * 3
    for name in (odd, long, "ünïcode tool", "x" * 300, ""):
        given = naming.session_name("files", name)
        assert ALLOWED.match(given), given
        assert given == naming.session_name("files", name)  # stable: depends on nothing else
    assert naming.session_name("files", odd).startswith("files__lookup_record_v2_")
    # Two names that clean to the same text stay apart: the clean one keeps its form.
    names = naming.assign("files", [odd, "lookup_record_v2"])
    assert names["lookup_record_v2"] == "files__lookup_record_v2"
    assert names[odd] != names["lookup_record_v2"]


def test_a_clash_is_settled_with_a_longer_hash_for_the_hashed_name():
    odd = "lookup.record/v2"
    hashed = naming.session_name("files", odd)
    clean_twin = hashed.removeprefix("files__")  # a server that really has a tool of that name
    names = naming.assign("files", [odd, clean_twin])
    assert names[clean_twin] == hashed and names[odd] != hashed and ALLOWED.match(names[odd])
    assert len(set(names.values())) == 2


def test_prefixes_are_clean_short_unique_and_never_hold_the_separator():
    taken: set[str] = set()
    given = []
    for server in ("GitHub (work)", "GitHub work", "__weird__name__", "", "a" * 80, "a" * 80):
        prefix = naming.prefix_for(server, taken)
        taken.add(prefix)
        given.append(prefix)
        assert re.match(r"^[A-Za-z0-9-](?:[A-Za-z0-9_-]*[A-Za-z0-9-])?$", prefix) and "__" not in prefix
        assert len(prefix) <= naming.MAX_PREFIX
    assert given[:4] == ["GitHub_work", "GitHub_work_2", "weird_name", "server"]
    assert len(set(given)) == len(given)
    # A tool name with the longest prefix still fits.
    assert len(naming.session_name(given[-1], "t" * 64)) <= 64


def test_a_name_is_routed_without_the_catalogue_only_when_it_cannot_be_a_hashed_one():
    assert naming.plain_upstream("files", "read_file") == "read_file"
    hashed = naming.session_name("files", "read.file")
    assert naming.plain_upstream(*naming.split(hashed)) is None  # the catalogue says which tool it is
    assert naming.plain_upstream("files", "x" * 70) is None  # too long to be its own name
