"""key-auth, basic-auth and hmac-auth through a real gateway and a real upstream.

Identity headers set on success and stripped when forged, 401 answers with
WWW-Authenticate and the JSON error body, hide_credentials, the anonymous fallback, two
authentication plugins combined with anonymous (logical OR) and without (logical AND),
basic-auth refusing as slowly for an unknown user as for a wrong password, answering a
repeated wrong pair at once and a flood of guesses with 503 within a bounded time,
non-ASCII keys, usernames and signed headers as the bytes sent, and configurations whose
realm or identity values cannot go into a header refused at start.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import statistics
import time
from email.utils import formatdate

import pytest

from support import declarative
from support.gateway import Gateway, GatewayStartError

ALICE_KEY = "alice-key-0123456789"
ALICE_PASSWORD = "open sesame"
HMAC_SECRET = "alice-hmac-secret"
LI_KEY = "clé-密钥-0123456789"  # the key of the consumer 李雷
LI_HMAC_SECRET = "sécret-李"
FORGED = {"X-Consumer-ID": "forged", "X-Consumer-Username": "mallory",
          "X-Consumer-Custom-ID": "forged", "X-Credential-Identifier": "forged",
          "X-Anonymous-Consumer": "false"}


def route(name: str, *plugins: dict) -> dict:
    return {"name": name, "paths": [f"/{name}"], "strip_path": False,
            "plugins": [dict(p) for p in plugins]}


def plugin(name: str, **config) -> dict:
    return {"name": name, "config": config}


def auth_config(upstream_url: str) -> str:
    return declarative(
        services=[{"name": "svc", "url": upstream_url, "routes": [
            route("key", plugin("key-auth")),
            route("key-hide", plugin("key-auth", hide_credentials=True, realm="kong",
                                     key_names=["apikey", "x-api-key"])),
            route("key-body", plugin("key-auth", key_in_body=True)),
            route("key-body-hide", plugin("key-auth", key_in_body=True, hide_credentials=True)),
            route("basic", plugin("basic-auth")),
            route("basic-hide", plugin("basic-auth", hide_credentials=True, realm="api")),
            route("hmac", plugin("hmac-auth", enforce_headers=["date", "@request-target"])),
            route("hmac-body", plugin("hmac-auth", validate_request_body=True,
                                      hide_credentials=True, realm="signed")),
            route("anon", plugin("key-auth", anonymous="guest")),
            route("either", plugin("key-auth", anonymous="guest"),
                  plugin("basic-auth", anonymous="guest")),
            route("both", plugin("key-auth"), plugin("basic-auth")),
            route("ghost", plugin("key-auth", anonymous="ghost")),
        ]}],
        consumers=[
            {"username": "alice", "custom_id": "cust-alice",
             "keyauth_credentials": [{"key": ALICE_KEY}],
             "basicauth_credentials": [{"username": "alice-basic",
                                        "password": ALICE_PASSWORD}],
             "hmacauth_credentials": [{"username": "alice-hmac", "secret": HMAC_SECRET}]},
            {"username": "guest"},
            {"username": "李雷", "keyauth_credentials": [{"key": LI_KEY}],
             "hmacauth_credentials": [{"username": "zoë-hmac", "secret": LI_HMAC_SECRET}]},
        ],
    )


@pytest.fixture(scope="module")
def gw(module_gateway_factory, upstream_servers):
    return module_gateway_factory(auth_config(upstream_servers[0].url))


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def assert_refused(response, message: str, www_authenticate: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == www_authenticate
    body = response.json()
    assert body["message"] == message
    assert body["request_id"]


def identity(recorded) -> dict[str, str | None]:
    return {name: recorded.header(name) for name in (
        "x-consumer-id", "x-consumer-username", "x-consumer-custom-id",
        "x-credential-identifier", "x-anonymous-consumer")}


# ---- key-auth ---------------------------------------------------------------------------
def test_key_auth_success_sets_identity_and_strips_forged_headers(gw, http, upstream):
    response = http.get(gw.url + "/key", headers={"apikey": ALICE_KEY, **FORGED})
    assert response.status_code == 200, response.text
    sent = identity(upstream.requests[-1])
    assert sent["x-consumer-username"] == "alice"
    assert sent["x-consumer-custom-id"] == "cust-alice"
    assert sent["x-consumer-id"] not in (None, "forged")
    credential_id = sent["x-credential-identifier"]
    assert credential_id not in (None, "forged", ALICE_KEY)  # the credential's id
    assert sent["x-anonymous-consumer"] is None
    assert upstream.requests[-1].header_values("x-consumer-id") == [sent["x-consumer-id"]]
    assert upstream.requests[-1].header("apikey") == ALICE_KEY  # not hidden by default
    # the same key in the query string
    assert http.get(gw.url + "/key", params={"apikey": ALICE_KEY}).status_code == 200


def test_key_auth_refusals(gw, http, upstream):
    assert_refused(http.get(gw.url + "/key"), "No API key found in request", "Key")
    assert_refused(http.get(gw.url + "/key", headers={"apikey": ALICE_KEY[:-1] + "X"}),
                   "Unauthorized", "Key")
    assert_refused(http.get(gw.url + "/key?apikey=a&apikey=b"), "Duplicate API key found", "Key")
    assert_refused(http.get(gw.url + "/key-hide", headers={"apikey": "wrong"}),
                   "Unauthorized", 'Key realm="kong"')
    assert upstream.requests == []


def test_key_auth_hide_credentials(gw, http, upstream):
    response = http.get(gw.url + "/key-hide?x=1&x-api-key=" + ALICE_KEY + "&y=2")
    assert response.status_code == 200, response.text
    recorded = upstream.requests[-1]
    assert recorded.target.endswith("/key-hide?x=1&y=2")
    assert http.get(gw.url + "/key-hide", headers={"X-API-Key": ALICE_KEY}).status_code == 200
    recorded = upstream.requests[-1]
    assert recorded.header("x-api-key") is None
    assert recorded.header("x-consumer-username") == "alice"


def test_key_auth_key_in_body(gw, http, upstream):
    form = f"note=hi&apikey={ALICE_KEY}".encode()
    response = http.post(gw.url + "/key-body", content=form,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    recorded = upstream.requests[-1]
    assert recorded.body == form  # the body read for the key is still sent whole
    assert recorded.header("x-consumer-username") == "alice"
    json_body = b'{"apikey": "%s"}' % ALICE_KEY.encode()
    response = http.post(gw.url + "/key-body", content=json_body,
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 200 and upstream.requests[-1].body == json_body
    wrong = http.post(gw.url + "/key-body", content=b'{"apikey": "nope"}',
                      headers={"Content-Type": "application/json"})
    assert_refused(wrong, "Unauthorized", "Key")


def test_key_auth_hide_credentials_removes_the_key_from_the_body(gw, http, upstream):
    form = f"note=hi&apikey={ALICE_KEY}&x=1".encode()
    response = http.post(gw.url + "/key-body-hide", content=form,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    recorded = upstream.requests[-1]
    assert recorded.body == b"note=hi&x=1"
    assert recorded.header("content-length") == str(len(b"note=hi&x=1"))
    assert recorded.header("x-consumer-username") == "alice"
    json_body = b'{"apikey": "%s", "keep": 1}' % ALICE_KEY.encode()
    def chunks():
        yield json_body[:10]
        yield json_body[10:]
    response = http.post(gw.url + "/key-body-hide", content=chunks(),
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    recorded = upstream.requests[-1]
    assert ALICE_KEY.encode() not in recorded.body and b'"keep"' in recorded.body
    assert recorded.header("transfer-encoding") is None  # re-framed with Content-Length


# ---- basic-auth -------------------------------------------------------------------------
def test_basic_auth_success_and_refusals(gw, http, upstream):
    good = basic("alice-basic", ALICE_PASSWORD)
    for _ in range(2):  # the second one is served from the verified cache
        response = http.get(gw.url + "/basic", headers={"Authorization": good, **FORGED})
        assert response.status_code == 200, response.text
        sent = identity(upstream.requests[-1])
        assert sent["x-consumer-username"] == "alice"
        assert sent["x-credential-identifier"] == "alice-basic"  # the credential's username
        assert sent["x-anonymous-consumer"] is None
        assert upstream.requests[-1].header("authorization") == good
    upstream.clear()
    www = 'Basic realm="service"'
    assert_refused(http.get(gw.url + "/basic"), "Unauthorized", www)
    assert_refused(http.get(gw.url + "/basic", headers={"Authorization": basic("alice-basic", "no")}),
                   "Unauthorized", www)
    assert_refused(http.get(gw.url + "/basic", headers={"Authorization": basic("nobody", "x")}),
                   "Unauthorized", www)
    assert_refused(http.get(gw.url + "/basic", headers={"Authorization": "Basic %%%"}),
                   "Unauthorized", www)
    assert upstream.requests == []


def test_basic_auth_hide_credentials(gw, http, upstream):
    response = http.get(gw.url + "/basic-hide",
                        headers={"Authorization": basic("alice-basic", ALICE_PASSWORD)})
    assert response.status_code == 200, response.text
    assert upstream.requests[-1].header("authorization") is None
    assert upstream.requests[-1].header("x-consumer-username") == "alice"
    assert_refused(http.get(gw.url + "/basic-hide"), "Unauthorized", 'Basic realm="api"')


def test_basic_auth_unknown_user_is_refused_as_slowly_as_a_wrong_password(gw, http):
    def refusal_time(username: str, password: str) -> float:
        start = time.perf_counter()
        response = http.get(gw.url + "/basic",
                            headers={"Authorization": basic(username, password)})
        elapsed = time.perf_counter() - start
        assert response.status_code == 401
        return elapsed

    wrong_password = statistics.median(refusal_time("alice-basic", f"guess{i}") for i in range(5))
    unknown_user = statistics.median(refusal_time(f"nobody{i}", "guess") for i in range(5))
    # a bcrypt verification at cost 10 takes tens of milliseconds; a plain lookup would not
    assert wrong_password > 0.01
    assert unknown_user > wrong_password / 3


# ---- hmac-auth --------------------------------------------------------------------------
def hmac_headers(method: str, target: str, signed: list[str],
                 extra: dict[str, str | bytes] | None = None,
                 secret: str = HMAC_SECRET, username: str = "alice-hmac",
                 algorithm: str = "hmac-sha256", date: str | None = None) -> dict:
    headers = {"Date": date or formatdate(usegmt=True), **(extra or {})}
    lower = {k.lower(): v for k, v in headers.items()}
    lines: list[bytes] = []  # what is signed: the bytes sent
    for name in signed:
        if name == "@request-target":
            lines.append(f"@request-target: {method.lower()} {target}".encode())
        else:
            value = lower[name]
            lines.append(f"{name}: ".encode() + (value if isinstance(value, bytes)
                                                   else value.encode()))
    digestmod = {"hmac-sha256": hashlib.sha256, "hmac-sha512": hashlib.sha512,
                 "hmac-sha1": hashlib.sha1}[algorithm]
    signature = base64.b64encode(
        hmac.new(secret.encode(), b"\n".join(lines), digestmod).digest()).decode()
    headers["Authorization"] = (f'hmac username="{username}", algorithm="{algorithm}", '
                                f'headers="{" ".join(signed)}", signature="{signature}"'
                                ).encode()
    return headers


def test_hmac_auth_success(gw, http, upstream):
    target = "/hmac/orders?id=7"
    headers = hmac_headers("GET", target, ["date", "@request-target"], algorithm="hmac-sha512")
    response = http.get(gw.url + target, headers={**headers, **FORGED})
    assert response.status_code == 200, response.text
    sent = identity(upstream.requests[-1])
    assert sent["x-consumer-username"] == "alice"
    assert sent["x-credential-identifier"] == "alice-hmac"
    assert upstream.requests[-1].header("authorization") == headers["Authorization"].decode()


def test_hmac_auth_refusals(gw, http, upstream):
    target = "/hmac/orders"
    assert_refused(http.get(gw.url + target), "Unauthorized", "hmac")
    wrong_secret = hmac_headers("GET", target, ["date", "@request-target"], secret="nope")
    assert_refused(http.get(gw.url + target, headers=wrong_secret),
                   "HMAC signature does not match", "hmac")
    other_target = hmac_headers("GET", "/hmac/other", ["date", "@request-target"])
    assert_refused(http.get(gw.url + target, headers=other_target),
                   "HMAC signature does not match", "hmac")
    unsigned_target = hmac_headers("GET", target, ["date"])  # enforce_headers not met
    assert_refused(http.get(gw.url + target, headers=unsigned_target),
                   "HMAC signature cannot be verified", "hmac")
    stale = hmac_headers("GET", target, ["date", "@request-target"],
                         date=formatdate(time.time() - 3600, usegmt=True))
    assert_refused(http.get(gw.url + target, headers=stale),
                   "HMAC signature cannot be verified, a valid date or x-date header is "
                   "required for HMAC Authentication", "hmac")
    assert upstream.requests == []


def test_hmac_auth_body_digest_and_hide_credentials(gw, http, upstream):
    target = "/hmac-body"
    body = b'{"amount": 10}'
    digest = "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode()
    headers = hmac_headers("POST", target, ["date", "digest"], extra={"Digest": digest})
    response = http.post(gw.url + target, content=body, headers=headers)
    assert response.status_code == 200, response.text
    recorded = upstream.requests[-1]
    assert recorded.body == body
    assert recorded.header("authorization") is None  # hidden
    assert recorded.header("x-consumer-username") == "alice"
    upstream.clear()
    tampered = http.post(gw.url + target, content=b'{"amount": 1000}', headers=headers)
    assert_refused(tampered, "HMAC signature does not match", 'hmac realm="signed"')
    assert upstream.requests == []


# ---- anonymous and combinations ---------------------------------------------------------
def test_anonymous_fallback(gw, http, upstream):
    response = http.get(gw.url + "/anon", headers={"apikey": "wrong", **FORGED})
    assert response.status_code == 200, response.text
    sent = identity(upstream.requests[-1])
    assert sent["x-consumer-username"] == "guest"
    assert sent["x-anonymous-consumer"] == "true"
    assert sent["x-credential-identifier"] is None
    assert sent["x-consumer-custom-id"] is None
    response = http.get(gw.url + "/anon", headers={"apikey": ALICE_KEY})
    assert response.status_code == 200
    sent = identity(upstream.requests[-1])
    assert sent["x-consumer-username"] == "alice" and sent["x-anonymous-consumer"] is None


def test_two_auth_plugins_with_anonymous_is_a_logical_or(gw, http, upstream):
    by_key = http.get(gw.url + "/either", headers={"apikey": ALICE_KEY})
    assert by_key.status_code == 200
    assert identity(upstream.requests[-1])["x-credential-identifier"] not in (None, "alice-basic")
    by_password = http.get(gw.url + "/either",
                           headers={"Authorization": basic("alice-basic", ALICE_PASSWORD)})
    assert by_password.status_code == 200
    sent = identity(upstream.requests[-1])
    assert (sent["x-consumer-username"], sent["x-credential-identifier"]) == \
        ("alice", "alice-basic")
    neither = http.get(gw.url + "/either")
    assert neither.status_code == 200
    assert identity(upstream.requests[-1])["x-anonymous-consumer"] == "true"


def test_two_auth_plugins_without_anonymous_is_a_logical_and(gw, http, upstream):
    only_key = http.get(gw.url + "/both", headers={"apikey": ALICE_KEY})
    assert_refused(only_key, "Unauthorized", 'Basic realm="service"')
    only_password = http.get(gw.url + "/both",
                             headers={"Authorization": basic("alice-basic", ALICE_PASSWORD)})
    assert_refused(only_password, "No API key found in request", "Key")
    assert upstream.requests == []
    both = http.get(gw.url + "/both", headers={
        "apikey": ALICE_KEY, "Authorization": basic("alice-basic", ALICE_PASSWORD)})
    assert both.status_code == 200
    # basic-auth (priority 1100) runs after key-auth (1250): its credential is the last set
    assert identity(upstream.requests[-1])["x-credential-identifier"] == "alice-basic"


def test_anonymous_naming_no_consumer_answers_500(gw, http, upstream):
    response = http.get(gw.url + "/ghost")
    assert response.status_code == 500
    assert response.json()["message"] == "anonymous consumer ghost is configured but doesn't exist"
    assert http.get(gw.url + "/ghost", headers={"apikey": ALICE_KEY}).status_code == 200


# ---- bytes beyond ASCII -----------------------------------------------------------------
def test_non_ascii_key_matches_from_a_header_and_from_the_query(gw, http, upstream):
    response = http.get(gw.url + "/key", headers={"apikey": LI_KEY.encode("utf-8")})
    assert response.status_code == 200, response.text
    recorded = upstream.requests[-1]
    assert recorded.header("x-consumer-username").encode("latin-1") == "李雷".encode("utf-8")
    response = http.get(gw.url + "/key", params={"apikey": LI_KEY})  # percent-encoded UTF-8
    assert response.status_code == 200, response.text
    latin1 = http.get(gw.url + "/key", headers={"apikey": "clé".encode("latin-1")})
    assert_refused(latin1, "Unauthorized", "Key")


def test_hmac_signature_over_non_ascii_header_bytes(gw, http, upstream):
    target = "/hmac/orders"
    headers = hmac_headers("GET", target, ["date", "@request-target", "x-note"],
                           extra={"X-Note": "Zoë 李".encode("utf-8")},
                           secret=LI_HMAC_SECRET, username="zoë-hmac")
    response = http.get(gw.url + target, headers=headers)
    assert response.status_code == 200, response.text
    sent = upstream.requests[-1].header("x-credential-identifier")
    assert sent.encode("latin-1") == "zoë-hmac".encode("utf-8")
    tampered = {**headers, "X-Note": "Zoë 李".encode("utf-8").replace(b"\xc3\xab", b"\xeb")}
    assert_refused(http.get(gw.url + target, headers=tampered),
                   "HMAC signature does not match", "hmac")


# ---- basic-auth cost under load ---------------------------------------------------------
def test_basic_auth_repeated_wrong_pair_is_answered_without_verifying(gw, http):
    def refusal_time(username: str) -> float:
        start = time.perf_counter()
        response = http.get(gw.url + "/basic", headers={"Authorization": basic(username, "same")})
        assert response.status_code == 401
        return time.perf_counter() - start

    for username in ("alice-basic", "nobody-repeat"):  # known user or not: the same way
        first = refusal_time(username)
        repeats = statistics.median(refusal_time(username) for _ in range(5))
        assert first > 0.01  # a bcrypt verification
        assert repeats < first / 3, (username, first, repeats)


def raw_basic_request(username: str, password: str) -> bytes:
    return (f"GET /basic HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
            f"Authorization: {basic(username, password)}\r\n\r\n").encode()


def read_answer(sock: socket.socket) -> bytes:
    answer = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return answer
        answer += chunk


def test_basic_auth_flood_is_answered_503_and_does_not_starve_a_login(gw, http):
    """200 concurrent guesses with unknown usernames: at most 64 wait for a verification
    (in the one worker), the others are answered 503 at once; a legitimate first login
    is told to retry at once or waits at most for that queue (64 x ~50 ms / 2 threads),
    not for the whole flood (which took 14 s when verifications were unbounded)."""
    flood = []
    try:
        for i in range(200):
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=15)
            sock.sendall(raw_basic_request(f"flood{i}", "guess"))
            flood.append(sock)
        start = time.perf_counter()
        login = http.get(gw.url + "/basic",
                         headers={"Authorization": basic("alice-basic", "first-try")},
                         timeout=15)
        waited = time.perf_counter() - start
        assert login.status_code in (401, 503), login.text
        assert waited < 4.0, waited
        answers = [read_answer(sock) for sock in flood]
    finally:
        for sock in flood:
            sock.close()
    statuses = [answer.split(b" ", 2)[1] for answer in answers]
    assert set(statuses) <= {b"401", b"503"}, set(statuses)
    assert statuses.count(b"503") >= 100, statuses.count(b"503")
    assert statuses.count(b"401") >= 10, statuses.count(b"401")
    busy = next(answer for answer in answers if answer.startswith(b"HTTP/1.1 503"))
    head, _, body = busy.partition(b"\r\n\r\n")
    assert b"\r\nretry-after: 1\r\n" in head.lower() + b"\r\n"
    assert b"www-authenticate" not in head.lower()
    answer = json.loads(body)
    assert answer["message"] == "Too many authentication attempts in progress"
    assert answer["request_id"]
    # once the flood is answered, logins are verified again
    ok = http.get(gw.url + "/basic",
                  headers={"Authorization": basic("alice-basic", ALICE_PASSWORD)})
    assert ok.status_code == 200


# ---- values that cannot go into a header refuse the configuration ---------------------------
@pytest.mark.parametrize("config, where", [
    ({"plugins": [{"name": "basic-auth", "config": {"realm": "李"}}]}, "realm"),
    ({"plugins": [{"name": "key-auth", "config": {"realm": 'a"b'}}]}, "realm"),
    ({"consumers": [{"username": "evil\r\nX-Consumer-ID: admin"}]}, "consumers[0].username"),
    ({"consumers": [{"username": "u", "acls": [{"group": "g\x00"}]}]},
     "consumers[0].acls[0].group"),
])
def test_configuration_with_header_breaking_values_does_not_start(tmp_path, upstream,
                                                                   config, where):
    text = declarative(services=[{"name": "svc", "url": upstream.url, "routes": [
        {"name": "r", "paths": ["/r"]}]}], **config)
    gateway = Gateway(text, tmp_path)
    with pytest.raises(GatewayStartError) as info:
        gateway.start()  # stopped by start() when it fails
    message = str(info.value)
    assert "gateway.yml:" in message  # the error names the file and line
    assert where in message and ("printable ASCII" in message
                                 or "must not contain control characters" in message), message


def test_no_secret_reaches_the_log_even_at_debug_level(gateway_factory, upstream, http):
    """GUARANTEES §14: keys, passwords and signatures are never written to the log,
    whether the attempt succeeds or fails."""
    gw = gateway_factory(auth_config(upstream.url), extra_args=("--log-level", "debug"))
    wrong_key, wrong_password = "wrong-key-5f3a9c", "wrong-password-8d2e"
    http.get(gw.url + "/key", headers={"apikey": ALICE_KEY})
    http.get(gw.url + "/key", headers={"apikey": wrong_key})
    http.get(gw.url + "/key?apikey=" + wrong_key)
    http.get(gw.url + "/basic", headers={"Authorization": basic("alice-basic", ALICE_PASSWORD)})
    http.get(gw.url + "/basic", headers={"Authorization": basic("alice-basic", wrong_password)})
    http.get(gw.url + "/basic", headers={"Authorization": basic("nobody", wrong_password)})
    http.get(gw.url + "/ghost", headers={"apikey": wrong_key})  # the 500 path logs
    time.sleep(0.5)
    log = gw.stderr_text(limit=10_000_000)
    assert "DEBUG" in log or "INFO" in log  # the log was captured at all
    for secret in (ALICE_KEY, wrong_key, ALICE_PASSWORD, wrong_password, HMAC_SECRET,
                   basic("alice-basic", ALICE_PASSWORD).split()[1]):
        assert secret not in log, f"a secret reached the log: {secret[:4]}..."
