"""normalize_path and split_target: GUARANTEES §6, Kong's normalisation, RFC 9112 forms."""

from __future__ import annotations

import pytest

from guichet.errors import BadRequest
from guichet.uri import normalize_path, split_target


@pytest.mark.parametrize("raw, expected", [
    # the four spellings of /admin from GUARANTEES §6
    ("/admin", "/admin"),
    ("/a/../admin", "/admin"),
    ("//admin", "/admin"),
    ("/%61dmin", "/admin"),
    # percent-encoding: unreserved decoded, the rest upper-cased and kept
    ("/fo%6F", "/foo"),
    ("/foo%3a", "/foo%3A"),
    ("/a%2fb", "/a%2Fb"),                 # an encoded slash is not a separator
    ("/a%2Fb/../c", "/c"),
    ("/%7e%2D%5f%2e", "/~-_."),
    ("/%20x", "/%20x"),                   # "other" characters stay encoded
    ("/%25", "/%25"),
    ("/%2541", "/%2541"),                 # decoded once, never twice
    # dot segments (RFC 3986 §5.2.4) and merged slashes
    ("/foo/./bar/../baz", "/foo/baz"),
    ("/foo//bar", "/foo/bar"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/..", "/"),
    ("/../../x", "/x"),
    ("/.", "/"),
    ("/a/..//b", "/b"),
    ("/%2e%2E/admin", "/admin"),          # encoded dots are dots
    ("/a/%2e/b", "/a/b"),
    ("/.well-known/x", "/.well-known/x"), # a dot that starts a name is not a segment
    ("/a./..b/...", "/a./..b/..."),
    ("///", "/"),
    ("/a/", "/a/"),
    # characters that are neither unreserved nor reserved get encoded
    ("/caf\u00e9", "/caf%C3%A9"),
    ("/a b", "/a%20b"),
    ("/{x}|\"", "/%7Bx%7D%7C%22"),
    ("/a?b#c", "/a%3Fb%23c"),
    # reserved characters are left as they are
    ("/a:b@c!$&'()*+,;=[]", "/a:b@c!$&'()*+,;=[]"),
])
def test_normalize_path(raw, expected):
    assert normalize_path(raw) == expected


@pytest.mark.parametrize("raw", ["/admin", "/", "/api/v1/users/123/profile",
                                 "/a-b_c~d.e", "/a:b@c;d=e,f"])
def test_fast_path_returns_the_same_object(raw):
    assert normalize_path(raw) is raw


@pytest.mark.parametrize("raw", ["/a%zz", "/a%4", "/a%", "/%g0", "a/b", "", "*", "%2Fadmin"])
def test_normalize_rejects(raw):
    with pytest.raises(BadRequest):
        normalize_path(raw)


@pytest.mark.parametrize("raw", ["/a/../admin", "//admin", "/%61dmin", "/x/%2e%2e/admin/",
                                 "/./admin", "/admin/."])
def test_normalisation_is_idempotent(raw):
    once = normalize_path(raw)
    assert normalize_path(once) == once


@pytest.mark.parametrize("target, expected", [
    (b"/", ("/", "")),
    (b"/p", ("/p", "")),
    (b"/p?", ("/p", "")),
    (b"/p?a=1&b=2", ("/p", "a=1&b=2")),
    (b"/p?a=1?b", ("/p", "a=1?b")),
    (b"/p%2F?q%20", ("/p%2F", "q%20")),            # split only, no normalisation here
    (b"/a/../b", ("/a/../b", "")),
    (b"http://example.com/p?q", ("/p", "q")),
    (b"HTTPS://example.com:8443/p", ("/p", "")),
    (b"http://example.com", ("/", "")),
    (b"http://example.com?x=1", ("/", "x=1")),
    (b"ws://h/chat", ("/chat", "")),
    (b"*", ("*", "")),
    (b"/caf\xc3\xa9?q=\xc3\xa9", ("/caf%C3%A9", "q=%C3%A9")),
    (b"/{a}", ("/{a}", "")),
])
def test_split_target(target, expected):
    assert split_target(target) == expected


@pytest.mark.parametrize("target", [
    b"", b"p", b"example.com:443", b"ftp://h/p", b"http://user@h/p", b"http:/h/p",
    b"/a#frag", b"/a?b#frag", b"/a b", b"/a\x00", b"/a\tb", b"/a?\x7f", b"**",
    b"http://a b/p", b"http://h#x/p", b"http://h\r\n/p",
])
def test_split_target_rejects(target):
    with pytest.raises(BadRequest):
        split_target(target)


def test_absolute_form_authority_is_dropped():
    # the host of an absolute-form target never reaches the router: only the path is kept
    path, _ = split_target(b"http://internal-admin.local/status")
    assert path == "/status" and "internal" not in path


def test_split_then_normalise():
    path, query = split_target(b"//%61dmin/./x/..?k=%2e")
    assert normalize_path(path) == "/admin/" and query == "k=%2e"


def test_parse_target_matches_split_and_normalize_and_is_bounded():
    from guichet import uri

    for target in (b"/a/../admin?x=1", b"//admin", b"/%61dmin", b"/plain", b"*"):
        raw, query = uri.split_target(target)
        expected = (raw, query, raw if raw == "*" else uri.normalize_path(raw))
        assert uri.parse_target(target) == expected
        assert uri.parse_target(target) == expected  # from the cache
    with pytest.raises(BadRequest):
        uri.parse_target(b"/a#frag")
    assert b"/a#frag" not in uri._TARGETS
    for i in range(uri._TARGET_CACHE_MAX + 10):
        uri.parse_target(b"/p/%d" % i)
    assert len(uri._TARGETS) <= uri._TARGET_CACHE_MAX
