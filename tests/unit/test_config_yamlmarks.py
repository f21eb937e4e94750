"""YAML parsing with line/column marks (guichet.config.yamlmarks)."""

from guichet.config.yamlmarks import Mark, format_path, parse_path, parse_yaml


def test_values_and_marks_of_nested_paths():
    text = "services:\n- name: a\n  routes:\n  - paths: [/x, /y]\n"
    parsed = parse_yaml(text, "f.yml")
    assert parsed.issues == []
    assert parsed.data == {"services": [{"name": "a", "routes": [{"paths": ["/x", "/y"]}]}]}
    assert parsed.marks.locate(("services", 0, "routes", 0, "paths", 1)) == Mark(4, 17)
    assert parsed.marks.locate(("services", 0, "name")) == Mark(2, 9)
    assert parsed.marks.locate(("services", 0, "name"), key=True) == Mark(2, 3)


def test_missing_path_falls_back_to_enclosing_mapping():
    parsed = parse_yaml("a:\n  b: 1\n", "f")
    assert parsed.marks.locate(("a", "missing", 3)) == Mark(2, 3)


def test_crlf_and_cr_line_endings_count_one_line_each():
    parsed = parse_yaml("a: 1\r\nb:\r\n  c: 2\r\n", "f")
    assert parsed.data == {"a": 1, "b": {"c": 2}}
    assert parsed.marks.locate(("b", "c")) == Mark(3, 6)


def test_scalars_follow_yaml_1_1_like_lyaml():
    parsed = parse_yaml("a: yes\nb: 012\nc: 1.5\nd: ~\ne: 2024-01-02\nf: '80'\n1: one\n", "f")
    assert parsed.data == {"a": True, "b": 10, "c": 1.5, "d": None, "e": "2024-01-02",
                           "f": "80", "1": "one"}


def test_duplicate_key_is_an_error_at_the_second_key():
    parsed = parse_yaml("name: a\nport: 1\nname: b\n", "f.yml")
    assert [str(i) for i in parsed.issues] == [
        "f.yml:3:1: name: duplicate key 'name' (first defined at line 1)"]
    assert parsed.data["name"] == "a"


def test_merge_keys_and_aliases():
    text = "base: &b {host: h, port: 1}\nsvc:\n  <<: *b\n  port: 2\nlist: &l [1, 2]\nagain: *l\n"
    parsed = parse_yaml(text, "f")
    assert parsed.issues == []
    assert parsed.data["svc"] == {"host": "h", "port": 2}
    assert parsed.data["again"] == [1, 2]
    assert parsed.marks.locate(("svc", "port")) == Mark(4, 9)


def test_syntax_error_reports_its_line():
    parsed = parse_yaml("a: 1\nb: [1, 2\nc: 3\n", "f.yml")
    assert parsed.data is None
    (issue,) = parsed.issues
    assert issue.line == 3 and issue.message.startswith("YAML syntax error")


def test_bad_indentation_is_a_syntax_error():
    parsed = parse_yaml("services:\n  - name: a\n   host: b\n", "f")
    assert parsed.data is None and parsed.issues[0].line == 3


def test_multiple_documents_are_refused():
    parsed = parse_yaml("a: 1\n---\nb: 2\n", "f")
    (issue,) = parsed.issues
    assert issue.line == 2 and "exactly one YAML document" in issue.message


def test_empty_document_is_an_error():
    for text in ("", "\n\n", "# just a comment\n"):
        parsed = parse_yaml(text, "f")
        assert parsed.data is None
        assert "empty" in parsed.issues[0].message


def test_control_character_is_reported_with_position():
    (issue,) = parse_yaml("a: 1\nb: \x07\n", "f").issues
    assert (issue.line, issue.column) == (2, 4)


def test_unsupported_tags_and_complex_keys():
    parsed = parse_yaml("a: !!binary aGk=\nb: !custom x\n? [k]\n: v\n", "f")
    messages = [(i.line, i.message) for i in parsed.issues]
    assert messages[0] == (1, "unsupported YAML tag 'tag:yaml.org,2002:binary'")
    assert messages[1] == (2, "unsupported YAML tag '!custom'")
    assert messages[2][0] == 3 and "mapping key" in messages[2][1]


def test_recursive_alias_is_refused():
    parsed = parse_yaml("x: &a [1, *a]\n", "f")
    assert "recursive alias" in parsed.issues[0].message


def test_alias_bomb_is_stopped():
    rows = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, name in zip("abcdef", "bcdefg"):
        rows.append(f"{name}: &{name} [" + ", ".join(f"*{prev}" for _ in range(10)) + "]")
    parsed = parse_yaml("\n".join(rows) + "\n", "f")
    assert any("too many values" in i.message for i in parsed.issues)


def test_json_with_tabs_parses():
    parsed = parse_yaml('{\n\t"a": [1,\n\t\t2],\n\t"b": "x\\/y"\n}\n', "f.json")
    assert parsed.issues == [] and parsed.data == {"a": [1, 2], "b": "x/y"}
    assert parsed.marks.locate(("a", 1)) == Mark(3, 3)


def test_path_format_round_trip():
    path = ("services", 0, "routes", 12, "paths", 0)
    assert format_path(path) == "services[0].routes[12].paths[0]"
    assert parse_path(format_path(path)) == path
    assert parse_path("limits[0].minute") == ("limits", 0, "minute")
    assert format_path(()) == ""
