"""Format 1.1/2.1 -> 3.0 migration (guichet.config.migrate), Kong's route_path rules."""

import pytest

from guichet.config.migrate import is_plain_path, migrate_document, migrate_path


@pytest.mark.parametrize("path, expected", [
    ("/prefix", "/prefix"),
    ("/", "/"),
    ("/with-dash_and.dot~tilde", "/with-dash_and.dot~tilde"),
    ("/a//b/../c/./d", "/a/c/d"),          # plain paths are normalised
    ("/encoded%7euser", "/encoded~user"),   # unreserved %XX decoded
    ("/keep%2fslash", "/keep%2Fslash"),     # reserved %XX kept, upper-cased
    ("/regex.+", "~/regex.+"),
    ("/users/\\d+", "~/users/\\d+"),
    ("/v(1|2)/items$", "~/v(1|2)/items$"),
    ("/items/(?<sku>[A-Z]+)", "~/items/(?<sku>[A-Z]+)"),
    ("/a b", "~/a b"),                      # anything outside the plain set is a regex
    ("/x%2E(y)", "~/x\\.(y)"),               # regex metacharacters decode escaped
    ("/x%2F(y)", "~/x%2F(y)"),               # reserved characters stay encoded
    ("/caf%C3%A9.*", "~/café.*"),
])
def test_migrate_path(path, expected):
    assert migrate_path(path) == expected


def test_plain_path_character_set():
    assert is_plain_path("/a-b_c.d~e/%20")
    assert not is_plain_path("/a*")
    assert not is_plain_path("/a?b")


def test_legacy_document_is_migrated_top_level_and_nested():
    doc = {
        "_format_version": "2.1",
        "services": [{"name": "s", "routes": [{"paths": ["/a.*", "/b"]}]}],
        "routes": [{"paths": ["/c$", "/d"]}, {"hosts": ["x"]}],
    }
    assert migrate_document(doc) is True
    assert doc["_format_version"] == "3.0"
    assert doc["services"][0]["routes"][0]["paths"] == ["~/a.*", "/b"]
    assert doc["routes"][0]["paths"] == ["~/c$", "/d"]


def test_format_3_is_left_alone():
    doc = {"_format_version": "3.0", "routes": [{"paths": ["/a.*"]}]}
    assert migrate_document(doc) is False
    assert doc["routes"][0]["paths"] == ["/a.*"]


def test_malformed_shapes_do_not_crash_migration():
    doc = {"_format_version": "1.1", "services": "oops", "routes": [None, {"paths": [3]}]}
    assert migrate_document(doc) is True
    assert doc["routes"][1]["paths"] == [3]
