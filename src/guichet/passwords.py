"""Password hashing and verification for stored credentials (basic-auth passwords).

Rules implemented here:

- Passwords are stored only as slow, salted hashes: bcrypt (``$2a$``/``$2b$``/``$2y$``,
  cost 10 by default) or argon2 (``$argon2id$``/``$argon2i$``/``$argon2d$``). A plaintext
  password is never kept and never logged.
- ``hash_password`` produces bcrypt (``$2b$``). bcrypt only reads the first 72 bytes of a
  password; rather than silently truncating (which makes every password sharing those
  72 bytes valid), a password longer than 72 UTF-8 bytes is refused with ``ValueError``.
- ``verify_password`` compares in constant time (the libraries compare the recomputed
  hash with ``compare_digest``-style equality) and never raises: a malformed hash, an
  unknown scheme or a candidate longer than 72 bytes against a bcrypt hash is ``False``.
- ``verify_against_dummy`` spends the time of one real verification and returns ``False``;
  callers use it when the user is unknown, so a refusal takes as long for an unknown user
  as for a known one (no user enumeration by timing).
- Verification is CPU-bound (~50 ms at bcrypt cost 10); both libraries release the GIL, so
  asynchronous callers run it on threads, and bound how many wait: basic-auth uses a pool
  of its own with a cap on pending verifications
  (:class:`guichet.plugins.bundled.basic_auth.VerificationPool`), never the event loop's
  shared default executor, which a flood of guesses would fill for everyone.
"""

from __future__ import annotations

import re
import threading

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import Argon2Error, InvalidHashError

__all__ = [
    "BCRYPT_DEFAULT_COST",
    "BCRYPT_MAX_PASSWORD_BYTES",
    "hash_password",
    "is_password_hash",
    "verify_password",
    "verify_against_dummy",
]

BCRYPT_DEFAULT_COST = 10
BCRYPT_MAX_PASSWORD_BYTES = 72

_BCRYPT_HASH = re.compile(r"\A\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}\Z")
_ARGON2_HASH = re.compile(
    r"\A\$argon2(id|i|d)\$(v=\d+\$)?m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}\Z"
)

# argon2-cffi reads the variant and parameters from the hash itself; the hasher's own
# parameters only matter for hashing, which this module does with bcrypt.
_argon2_verifier = PasswordHasher()

_dummy_hash: bytes | None = None
_dummy_hash_lock = threading.Lock()


def hash_password(plain: str, cost: int = BCRYPT_DEFAULT_COST) -> str:
    """bcrypt hash (``$2b$<cost>$...``) of ``plain``.

    Raises ``ValueError`` for a password longer than 72 UTF-8 bytes (bcrypt would ignore
    the rest) or a cost outside bcrypt's 4..31.
    """
    encoded = plain.encode("utf-8")
    if len(encoded) > BCRYPT_MAX_PASSWORD_BYTES:
        raise ValueError(
            f"password is longer than {BCRYPT_MAX_PASSWORD_BYTES} bytes, the most bcrypt can use"
        )
    if not 4 <= cost <= 31:
        raise ValueError("bcrypt cost must be between 4 and 31")
    return bcrypt.hashpw(encoded, bcrypt.gensalt(rounds=cost)).decode("ascii")


def is_password_hash(value: str) -> bool:
    """True when ``value`` is a well-formed bcrypt or argon2 hash this module can verify."""
    return bool(_BCRYPT_HASH.match(value) or _ARGON2_HASH.match(value))


def verify_password(plain: str, hashed: str) -> bool:
    """True when ``plain`` matches ``hashed`` (bcrypt or argon2); never raises."""
    try:
        encoded = plain.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: cannot be a stored password
        return False
    if _BCRYPT_HASH.match(hashed):
        if len(encoded) > BCRYPT_MAX_PASSWORD_BYTES:
            return False
        try:
            return bcrypt.checkpw(encoded, hashed.encode("ascii"))
        except ValueError:
            return False
    if _ARGON2_HASH.match(hashed):
        try:
            return _argon2_verifier.verify(hashed, encoded)
        except (Argon2Error, InvalidHashError):
            return False
    return False


def verify_against_dummy(plain: str) -> bool:
    """Spend one bcrypt verification at the default cost on ``plain``; always ``False``.

    Used when no stored hash exists for the claimed user, so that refusing an unknown user
    costs the same as refusing a known user with a wrong password (exactly so when the
    stored hashes are bcrypt at the default cost, the form ``hash_password`` produces).
    """
    global _dummy_hash
    if _dummy_hash is None:
        with _dummy_hash_lock:
            if _dummy_hash is None:
                _dummy_hash = bcrypt.hashpw(
                    b"guichet-dummy-password", bcrypt.gensalt(rounds=BCRYPT_DEFAULT_COST)
                )
    encoded = plain.encode("utf-8", "replace")
    if len(encoded) > BCRYPT_MAX_PASSWORD_BYTES:
        return False  # as verify_password does against a bcrypt hash: no work done
    bcrypt.checkpw(encoded, _dummy_hash)
    return False
