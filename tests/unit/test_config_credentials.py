"""Consumers' credentials in the declarative file: keyauth_credentials,
basicauth_credentials, jwt_secrets, hmacauth_credentials and acls (Kong 3.x daos.lua)."""

import os
import re
import threading
import time

import bcrypt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from guichet import passwords
from guichet.config import build
from guichet.config.loader import load_config_text
from guichet.config.references import entity_uuid
from guichet.errors import ConfigError

HEAD = '_format_version: "3.0"\n'
ALICE_ID = "2b0c8e9a-6d1f-4f5e-9a3b-7c1d2e3f4a5b"
RANDOM_SECRET = re.compile(r"[A-Za-z0-9]{32}")


class AnyPlugin:
    no_consumer = False

    def validate(self, config):
        return dict(config), []


class AuthPlugin(AnyPlugin):
    no_consumer = True


PLUGINS = {"key-auth": AuthPlugin(), "rate-limiting": AnyPlugin()}


def load(text: str, **kwargs):
    return load_config_text(text, "kong.yml", plugin_schemas=PLUGINS, **kwargs)


def issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text)
    return [str(issue) for issue in info.value.issues]


def indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else line for line in text.splitlines(True))


def public_pem(private_key) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.fixture(scope="module")
def keys():
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {
        "rsa": public_pem(rsa_key),
        "rsa_private": rsa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode(),
        "p256": public_pem(ec.generate_private_key(ec.SECP256R1())),
        "p384": public_pem(ec.generate_private_key(ec.SECP384R1())),
        "p521": public_pem(ec.generate_private_key(ec.SECP521R1())),
        "ed25519": public_pem(ed25519.Ed25519PrivateKey.generate()),
    }


def jwt_file(algorithm: str, pem: str | None) -> str:
    text = HEAD + f"consumers: [{{username: alice}}]\njwt_secrets:\n- consumer: alice\n" \
                  f"  algorithm: {algorithm}\n"
    if pem is not None:
        text += "  rsa_public_key: |\n" + indent(pem, 4)
    return text


# -- both forms --------------------------------------------------------------------------

NESTED = HEAD + f"""consumers:
- username: alice
  id: {ALICE_ID}
  keyauth_credentials:
  - key: alice-key
    ttl: 1900000000
    tags: [mobile]
  basicauth_credentials:
  - username: alice
    password: s3cret
  jwt_secrets:
  - key: alice-issuer
    secret: alice-jwt-secret
  hmacauth_credentials:
  - username: alice-hmac
    secret: alice-hmac-secret
  acls:
  - group: admins
  - group: staff
- username: bob
  acls:
  - group: admins
"""

FLAT = HEAD + f"""consumers:
- username: alice
  id: {ALICE_ID}
- username: bob
keyauth_credentials:
- consumer: alice
  key: alice-key
  ttl: 1900000000
  tags: [mobile]
basicauth_credentials:
- consumer: {ALICE_ID}
  username: alice
  password: s3cret
jwt_secrets:
- consumer: {{id: {ALICE_ID.upper()}}}
  key: alice-issuer
  secret: alice-jwt-secret
hmacauth_credentials:
- consumer: {{username: alice}}
  username: alice-hmac
  secret: alice-hmac-secret
acls:
- consumer: alice
  group: admins
- consumer: alice
  group: staff
- consumer: bob
  group: admins
"""

KINDS = ("keyauth_credentials", "basicauth_credentials", "jwt_secrets",
         "hmacauth_credentials", "acls")


def test_nested_credentials_belong_to_their_consumer():
    config = load(NESTED)
    alice, bob = config.consumers
    assert alice.id == ALICE_ID
    (key,) = config.keyauth_credentials
    assert (key.consumer_id, key.key, key.ttl, key.tags) == (ALICE_ID, "alice-key",
                                                             1900000000, ("mobile",))
    (basic,) = config.basicauth_credentials
    assert (basic.consumer_id, basic.username) == (ALICE_ID, "alice")
    (jwt,) = config.jwt_secrets
    assert (jwt.consumer_id, jwt.key, jwt.secret, jwt.algorithm, jwt.rsa_public_key) == \
        (ALICE_ID, "alice-issuer", "alice-jwt-secret", "HS256", None)
    (hmac_,) = config.hmacauth_credentials
    assert (hmac_.consumer_id, hmac_.username, hmac_.secret) == \
        (ALICE_ID, "alice-hmac", "alice-hmac-secret")
    assert [(a.consumer_id, a.group) for a in config.acls] == \
        [(ALICE_ID, "admins"), (ALICE_ID, "staff"), (bob.id, "admins")]


def test_top_level_credentials_by_username_id_and_mappings_equal_nested_ones():
    nested, flat = load(NESTED), load(FLAT)
    for kind in KINDS:
        assert getattr(flat, kind) == getattr(nested, kind), kind


def test_ids_follow_kongs_scheme():
    config = load(NESTED)
    bob_id = config.consumers[1].id
    assert config.basicauth_credentials[0].id == \
        entity_uuid("basicauth_credentials", "basicauth_credentials:*:alice")
    assert config.hmacauth_credentials[0].id == \
        entity_uuid("hmacauth_credentials", "hmacauth_credentials:*:alice-hmac")
    assert config.jwt_secrets[0].id == entity_uuid("jwt_secrets", "jwt_secrets:*:alice-issuer")
    assert [a.id for a in config.acls] == [
        entity_uuid("acls", f"acls:*:{ALICE_ID}:admins"),
        entity_uuid("acls", f"acls:*:{ALICE_ID}:staff"),
        entity_uuid("acls", f"acls:*:{bob_id}:admins")]


def test_key_auth_id_never_derives_from_the_key():
    one = load(HEAD + "consumers: [{username: a, keyauth_credentials: [{key: k1}]}]\n")
    two = load(HEAD + "consumers: [{username: a, keyauth_credentials: [{key: k2}]}]\n")
    consumer_id = one.consumers[0].id
    assert one.keyauth_credentials[0].id == two.keyauth_credentials[0].id == \
        entity_uuid("keyauth_credentials", f"keyauth_credentials:*:{consumer_id}:#0")


def test_keyless_ids_count_per_consumer_so_other_consumers_do_not_shift_them():
    text = HEAD + "consumers:\n- username: a\n" \
        "  keyauth_credentials: [{key: a1}, {key: a2}]\n  jwt_secrets: [{}, {key: iss}, {}]\n"
    before = load(text)
    a_id = before.consumers[0].id
    assert [c.id for c in before.keyauth_credentials] == [
        entity_uuid("keyauth_credentials", f"keyauth_credentials:*:{a_id}:#{n}")
        for n in (0, 1)]
    assert [c.id for c in before.jwt_secrets] == [
        entity_uuid("jwt_secrets", f"jwt_secrets:*:{a_id}:#0"),
        entity_uuid("jwt_secrets", "jwt_secrets:*:iss"),
        entity_uuid("jwt_secrets", f"jwt_secrets:*:{a_id}:#2")]
    other_first = load(text.replace("consumers:\n", "consumers:\n- username: z\n"
                                    "  keyauth_credentials: [{key: z1}]\n"
                                    "  jwt_secrets: [{}]\n"))
    assert [c.id for c in other_first.keyauth_credentials][1:] == \
        [c.id for c in before.keyauth_credentials]
    assert [c.id for c in other_first.jwt_secrets][1:] == [c.id for c in before.jwt_secrets]


def test_explicit_ids_are_kept():
    cred_id = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    config = load(HEAD + f"consumers: [{{username: a}}]\nacls:\n- consumer: a\n"
                         f"  group: g\n  id: {cred_id.upper()}\n")
    assert config.acls[0].id == cred_id


def test_hash_and_ids_are_stable_across_loads():
    first, second = load(NESTED), load(NESTED)
    assert first.hash == second.hash
    for kind in KINDS:
        assert [c.id for c in getattr(first, kind)] == [c.id for c in getattr(second, kind)]
    assert first.basicauth_credentials == second.basicauth_credentials


# -- references ---------------------------------------------------------------------------

def test_top_level_credential_needs_a_consumer():
    assert issues(HEAD + "consumers: [{username: a}]\nkeyauth_credentials:\n- key: k\n"
                  "acls:\n- group: g\n") == [
        "kong.yml:4:3: keyauth_credentials[0].consumer: required field missing",
        "kong.yml:6:3: acls[0].consumer: required field missing",
    ]


def test_reference_to_an_unknown_consumer():
    assert issues(HEAD + "consumers: [{username: a}]\nbasicauth_credentials:\n"
                  "- consumer: nobody\n  username: u\n  password: p\n") == [
        "kong.yml:4:13: basicauth_credentials[0].consumer: invalid reference "
        "'consumer: nobody' (no such entry in 'consumers')"]


def test_nested_credential_may_only_name_its_own_consumer():
    found = issues(HEAD + "consumers:\n- username: a\n- username: b\n  acls:\n"
                   "  - group: g\n    consumer: a\n  - group: h\n    consumer: b\n")
    assert found == ["kong.yml:7:15: consumers[1].acls[0].consumer: 'consumer' must be "
                     "omitted inside consumers (it is implied) or name the enclosing one"]


def test_credentials_nest_only_in_consumers():
    found = issues(HEAD + "services:\n- host: h\n  acls: [{group: g}]\n")
    assert found == ["kong.yml:4:3: services[0].acls: unknown field"]


def test_oauth2_entities_stay_refused():
    found = issues(HEAD + "consumers: [{username: a}]\noauth2_credentials:\n"
                   "- {consumer: a, name: app}\n")
    assert found == ["kong.yml:3:1: oauth2_credentials: 'oauth2_credentials' (entities of "
                     "the oauth2 plugin) is not supported by guichet yet"]


# -- fields -------------------------------------------------------------------------------

@pytest.mark.parametrize("snippet, expected", [
    ("keyauth_credentials: [{key: k, ttl: -1}]",
     "consumers[0].keyauth_credentials[0].ttl: value should be between 0 and"),
    ("keyauth_credentials: [{key: k, ttl: '60'}]",
     "consumers[0].keyauth_credentials[0].ttl: expected an integer"),
    ("keyauth_credentials: [{key: ''}]",
     "consumers[0].keyauth_credentials[0].key: length must be at least 1"),
    ("basicauth_credentials: [{username: u}]",
     "consumers[0].basicauth_credentials[0].password: required field missing"),
    ("hmacauth_credentials: [{secret: s}]",
     "consumers[0].hmacauth_credentials[0].username: required field missing"),
    ("acls: [{}]", "consumers[0].acls[0].group: required field missing"),
    ("acls: [{group: g, created_at: 1}]", "consumers[0].acls[0].created_at: unknown field"),
    ("jwt_secrets: [{algorithm: HS1}]",
     "consumers[0].jwt_secrets[0].algorithm: expected one of: HS256, HS384, HS512, RS256, "
     "RS384, RS512, ES256, ES384, ES512, PS256, PS384, PS512, EdDSA"),
    ("jwt_secrets: [{algorithm: none}]",
     "consumers[0].jwt_secrets[0].algorithm: expected one of: HS256"),
])
def test_field_rules(snippet, expected):
    found = issues(HEAD + "consumers:\n- username: a\n  " + snippet + "\n")
    assert len(found) == 1 and found[0].split(": ", 1)[1].startswith(expected), found
    assert found[0].startswith("kong.yml:4:"), found


# -- values sent to the upstream in identity headers ---------------------------------------

CONTROL = "must not contain control characters"


@pytest.mark.parametrize("snippet, where, shown", [
    ('username: "evil\\r\\nX-Consumer-ID: admin"', "consumers[0].username", "CR"),
    ('username: u\n  custom_id: "a\\nb"', "consumers[0].custom_id", "LF"),
    ('username: "nul\\0x"', "consumers[0].username", "NUL"),
    ('username: "tab\\there"', "consumers[0].username", "TAB"),
    ('username: "del\\x7f"', "consumers[0].username", "DEL"),
    ('username: u\n  acls: [{group: "admins\\r\\n"}]', "consumers[0].acls[0].group", "CR"),
    ('username: u\n  basicauth_credentials: [{username: "b\\x1b", password: p}]',
     "consumers[0].basicauth_credentials[0].username", "U+001B"),
    ('username: u\n  hmacauth_credentials: [{username: "h\\x01"}]',
     "consumers[0].hmacauth_credentials[0].username", "U+0001"),
    ('username: u\n  jwt_secrets: [{key: "iss\\n"}]', "consumers[0].jwt_secrets[0].key", "LF"),
])
def test_identity_values_refuse_control_characters(snippet, where, shown):
    found = issues(HEAD + "consumers:\n- " + snippet + "\n")
    assert len(found) == 1, found
    line, message = found[0].split(": ", 1)
    assert line.startswith("kong.yml:") and line.split(":")[1] in ("3", "4"), found
    assert message == f"{where}: {CONTROL} (found {shown}): it is sent to the upstream " \
                      "in a header"


def test_identity_values_beyond_latin1_are_accepted():
    config = load(HEAD + "consumers:\n- username: 李雷\n  custom_id: 客户-1\n"
                  "  acls: [{group: 管理员}]\n"
                  "  basicauth_credentials: [{username: 韩梅梅, password: p}]\n"
                  "  hmacauth_credentials: [{username: 李, secret: s}]\n"
                  "  jwt_secrets: [{key: 發行者, secret: s}]\n")
    consumer, = config.consumers
    assert (consumer.username, consumer.custom_id) == ("李雷", "客户-1")
    assert config.acls[0].group == "管理员"
    assert config.basicauth_credentials[0].username == "韩梅梅"
    assert config.hmacauth_credentials[0].username == "李"
    assert config.jwt_secrets[0].key == "發行者"


def test_a_repeated_value_with_controls_is_shown_escaped():
    found = issues(HEAD + 'consumers:\n- username: a\n  jwt_secrets: [{key: "k\\x1b"}]\n'
                   '- username: b\n  jwt_secrets: [{key: "k\\x1b"}]\n')
    assert any("key set to 'k\\x1b' already declared" in f for f in found), found
    assert not any("\x1b" in f for f in found)


# -- uniqueness ---------------------------------------------------------------------------

def test_key_auth_keys_are_unique_across_consumers_and_never_shown():
    found = issues(HEAD + "consumers:\n- username: a\n  keyauth_credentials:\n"
                   "  - key: topsecret-key\n- username: b\nkeyauth_credentials:\n"
                   "- consumer: b\n  key: topsecret-key\n")
    assert found == ["kong.yml:9:8: keyauth_credentials[0].key: uniqueness violation: "
                     "'keyauth_credentials' entity with key set to the same value already "
                     "declared (first at line 5)"]
    assert "topsecret" not in found[0]


@pytest.mark.parametrize("kind, field, extra", [
    ("basicauth_credentials", "username", "password: p"),
    ("hmacauth_credentials", "username", "secret: s"),
    ("jwt_secrets", "key", "secret: s"),
])
def test_usernames_and_jwt_keys_are_unique_across_consumers(kind, field, extra):
    found = issues(HEAD + f"consumers:\n- username: a\n  {kind}:\n  - {field}: same\n"
                   f"    {extra}\n- username: b\n  {kind}:\n  - {field}: same\n"
                   f"    {extra}\n")
    assert found == [f"kong.yml:9:{7 + len(field)}: consumers[1].{kind}[0].{field}: "
                     f"uniqueness violation: '{kind}' entity with {field} set to 'same' "
                     f"already declared (first at line 5)"]


def test_acl_groups_are_unique_per_consumer_only():
    found = issues(HEAD + "consumers:\n- username: a\n  acls:\n  - group: g\n"
                   "- username: b\n  acls:\n  - group: g\nacls:\n- consumer: a\n  group: g\n")
    assert found == ["kong.yml:11:10: acls[0].group: uniqueness violation: 'acls' entity "
                     "with group set to 'g' already declared for this consumer "
                     "(first at line 5)"]


def test_explicit_credential_ids_are_unique():
    cred_id = "7a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    found = issues(HEAD + f"consumers: [{{username: a}}]\nacls:\n- {{consumer: a, group: g, "
                          f"id: {cred_id}}}\n- {{consumer: a, group: h, id: {cred_id}}}\n")
    assert len(found) == 1 and "acls[1].id: uniqueness violation: 'acls' entity with " \
        f"primary key set to '{cred_id}' already declared (first at line 4)" in found[0]


# -- jwt keys -----------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm, key", [
    ("RS256", "rsa"), ("RS512", "rsa"), ("PS384", "rsa"), ("ES256", "p256"),
    ("ES384", "p384"), ("ES512", "p521"), ("EdDSA", "ed25519"),
])
def test_asymmetric_algorithms_take_a_matching_public_key(keys, algorithm, key):
    (secret,) = load(jwt_file(algorithm, keys[key])).jwt_secrets
    assert secret.algorithm == algorithm
    assert secret.rsa_public_key == keys[key]
    assert secret.secret is None  # drawn only for HS* algorithms
    assert RANDOM_SECRET.fullmatch(secret.key)


@pytest.mark.parametrize("algorithm", ["RS256", "PS256", "ES256", "EdDSA"])
def test_asymmetric_algorithms_require_a_public_key(algorithm):
    assert issues(jwt_file(algorithm, None)) == [
        f"kong.yml:4:3: jwt_secrets[0].rsa_public_key: required field missing (needed when "
        f"algorithm is '{algorithm}')"]


@pytest.mark.parametrize("algorithm, key, message", [
    ("RS256", None, "invalid key: expected a PEM public key (-----BEGIN PUBLIC KEY-----)"),
    ("RS256", "rsa_private", "invalid key: it is a private key: give its public key"),
    ("ES256", "rsa", "invalid key: algorithm 'ES256' needs an EC P-256 public key"),
    ("ES256", "p384", "invalid key: algorithm 'ES256' needs an EC P-256 public key"),
    ("RS256", "p256", "invalid key: algorithm 'RS256' needs an RSA public key"),
    ("EdDSA", "rsa", "invalid key: algorithm 'EdDSA' needs an Ed25519 or Ed448 public key"),
])
def test_bad_public_keys(keys, algorithm, key, message):
    pem = "-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n" \
        if key is None else keys[key]
    assert issues(jwt_file(algorithm, pem)) == [
        f"kong.yml:6:19: jwt_secrets[0].rsa_public_key: {message}"]


def test_hmac_algorithms_ignore_rsa_public_key():
    (secret,) = load(jwt_file("HS512", "not a key")).jwt_secrets
    assert secret.rsa_public_key == "not a key"
    assert RANDOM_SECRET.fullmatch(secret.secret)


# -- generated values ---------------------------------------------------------------------

def test_absent_keys_and_secrets_are_drawn_at_random():
    config = load(HEAD + "consumers:\n- username: a\n  keyauth_credentials: [{}, {}]\n"
                  "  jwt_secrets: [{}]\n  hmacauth_credentials: [{username: h}]\n")
    keys = [c.key for c in config.keyauth_credentials]
    jwt = config.jwt_secrets[0]
    drawn = keys + [jwt.key, jwt.secret, config.hmacauth_credentials[0].secret]
    assert all(RANDOM_SECRET.fullmatch(value) for value in drawn), drawn
    assert len(set(drawn)) == len(drawn)
    # distinct position-based ids
    assert len({c.id for c in config.keyauth_credentials}) == 2


def test_random_secret_uses_letters_and_digits():
    drawn = {build.random_secret() for _ in range(200)}
    assert len(drawn) == 200
    assert set("".join(drawn)) == set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                      "0123456789")


# -- basic-auth passwords -----------------------------------------------------------------

def test_plaintext_passwords_are_hashed_with_bcrypt():
    config = load(HEAD + "consumers:\n- username: a\n  basicauth_credentials:\n"
                  "  - {username: u, password: 'open sesame'}\n")
    stored = config.basicauth_credentials[0].password_hash
    assert stored.startswith("$2b$") and passwords.is_password_hash(stored)
    assert bcrypt.checkpw(b"open sesame", stored.encode())
    assert not passwords.verify_password("open sesame!", stored)
    assert "open sesame" not in repr(config)


def test_an_unchanged_password_is_not_hashed_again(monkeypatch):
    calls = []
    real = passwords.hash_password

    def counting(plain):
        calls.append(1)
        return real(plain, cost=4)
    monkeypatch.setattr(passwords, "hash_password", counting)
    text = HEAD + "consumers:\n- username: a\n  basicauth_credentials:\n" \
        "  - {username: u, password: first}\n- username: b\n  basicauth_credentials:\n" \
        "  - {username: v, password: first}\n"
    first = load(text)
    assert len(calls) == 2  # the same password, two consumers: two hashes
    second = load(text + "services: [{host: h}]\n")
    assert len(calls) == 2
    assert second.basicauth_credentials == first.basicauth_credentials
    changed = load(text.replace("{username: v, password: first}",
                                "{username: v, password: second}"))
    assert len(calls) == 3
    assert changed.basicauth_credentials[0] == first.basicauth_credentials[0]
    assert passwords.verify_password("second", changed.basicauth_credentials[1].password_hash)


def test_many_passwords_hash_in_parallel(monkeypatch):
    active, most = [0], [0]
    lock = threading.Lock()

    def slow_hash(plain):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.05)  # releases the GIL, as bcrypt does
        with lock:
            active[0] -= 1
        return bcrypt.hashpw(plain.encode(), bcrypt.gensalt(4)).decode()
    monkeypatch.setattr(passwords, "hash_password", slow_hash)
    run = build.random_secret()  # passwords no earlier load has hashed
    creds = "".join(f"  - {{username: u{i}, password: p{i}-{run}}}\n" for i in range(8))
    config = load(HEAD + "consumers:\n- username: a\n  basicauth_credentials:\n" + creds)
    assert all(passwords.verify_password(f"p{i}-{run}", c.password_hash)
               for i, c in enumerate(config.basicauth_credentials))
    assert most[0] == min(8, os.cpu_count() or 1)  # one thread per CPU, at most 8


def test_password_longer_than_bcrypt_reads_is_refused():
    found = issues(HEAD + "consumers:\n- username: a\n  basicauth_credentials:\n"
                   f"  - username: u\n    password: {'x' * 73}\n")
    assert found == ["kong.yml:6:15: consumers[0].basicauth_credentials[0].password: longer "
                     "than 72 bytes, the most bcrypt can use"]


def test_transform_false_takes_hashes_as_they_are():
    bcrypt_hash = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    argon2_hash = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHRzb21lc2FsdA$" \
        "V2hhdGV2ZXJ0aGlzaGFzaGlzbm90Y2hlY2tlZGhlcmVh"
    config = load(HEAD + "_transform: false\nconsumers:\n- username: a\n"
                  f"  basicauth_credentials:\n  - username: u\n    password: '{bcrypt_hash}'\n"
                  f"  - username: v\n    password: '{argon2_hash}'\n")
    assert [c.password_hash for c in config.basicauth_credentials] == [bcrypt_hash,
                                                                       argon2_hash]
    assert passwords.verify_password("pw", config.basicauth_credentials[0].password_hash)


def test_transform_false_refuses_plaintext_and_kong_sha1_hashes():
    found = issues(HEAD + "consumers:\n- username: a\n  basicauth_credentials:\n"
                   "  - username: u\n    password: plaintext\n  - username: v\n"
                   "    password: 5baa61e4c9b93f3f0682250b6cf8331b7ee68fd8\n"
                   "_transform: false\n")
    assert found == [
        "kong.yml:6:15: consumers[0].basicauth_credentials[0].password: with _transform: "
        "false the password must already be a bcrypt ($2b$...) or argon2 ($argon2id$...) "
        "hash",
        "kong.yml:8:15: consumers[0].basicauth_credentials[1].password: with _transform: "
        "false the password must be a bcrypt or argon2 hash; Kong's unsalted SHA-1 hashes "
        "are not accepted (write the plaintext with _transform: true instead)",
    ]


def test_transform_true_hashes_even_what_looks_like_a_hash():
    bcrypt_hash = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    config = load(HEAD + "_transform: true\nconsumers:\n- username: a\n"
                  "  basicauth_credentials:\n  - username: u\n"
                  f"    password: '{bcrypt_hash}'\n")
    stored = config.basicauth_credentials[0].password_hash
    assert stored != bcrypt_hash
    assert passwords.verify_password(bcrypt_hash, stored)


# -- plugins on consumers -----------------------------------------------------------------

def test_no_consumer_plugins_cannot_be_put_on_a_consumer():
    found = issues(HEAD + "consumers:\n- username: a\n  plugins:\n  - name: key-auth\n"
                   "  - name: rate-limiting\nplugins:\n- name: key-auth\n  consumer: a\n")
    assert found == [
        "kong.yml:5:5: consumers[0].plugins[0].consumer: value must be null (plugin "
        "'key-auth' cannot be configured on a consumer)",
        "kong.yml:9:13: plugins[0].consumer: value must be null (plugin 'key-auth' cannot "
        "be configured on a consumer)",
    ]


def test_no_consumer_plugins_elsewhere_and_other_plugins_on_consumers_load():
    config = load(HEAD + "consumers:\n- username: a\n  plugins: [{name: rate-limiting}]\n"
                  "services:\n- host: h\n  plugins: [{name: key-auth}]\n"
                  "plugins: [{name: key-auth, consumer: null}]\n")
    assert [(p.name, p.consumer_id is None) for p in config.plugins] == \
        [("rate-limiting", False), ("key-auth", True), ("key-auth", True)]


def test_every_error_of_the_file_is_reported():
    found = issues(HEAD + "consumers:\n- username: a\n  acls: [{group: g}, {group: g}]\n"
                   "  jwt_secrets: [{algorithm: RS256}]\n  plugins: [{name: key-auth}]\n"
                   "keyauth_credentials: [{key: k}]\n")
    assert [issue.split(": ", 2)[1] for issue in found] == [
        "consumers[0].acls[1].group", "consumers[0].jwt_secrets[0].rsa_public_key",
        "consumers[0].plugins[0].consumer", "keyauth_credentials[0].consumer"]
