"""guichet.passwords: bcrypt/argon2 hashing and verification."""

from __future__ import annotations

import time

import bcrypt
import pytest
from argon2 import PasswordHasher

from guichet.passwords import (
    BCRYPT_DEFAULT_COST,
    hash_password,
    is_password_hash,
    verify_against_dummy,
    verify_password,
)

FAST = 4  # bcrypt's lowest cost keeps the tests quick


def test_hash_password_is_bcrypt_at_cost_10_by_default():
    hashed = hash_password("s3cret")
    assert hashed.startswith(f"$2b${BCRYPT_DEFAULT_COST:02d}$")
    assert is_password_hash(hashed)
    assert verify_password("s3cret", hashed)
    assert not verify_password("s3cre", hashed)


def test_hashes_are_salted():
    assert hash_password("same", cost=FAST) != hash_password("same", cost=FAST)


def test_unicode_and_empty_passwords():
    hashed = hash_password("pässwörd ☃", cost=FAST)
    assert verify_password("pässwörd ☃", hashed)
    assert not verify_password("passwörd ☃", hashed)
    empty = hash_password("", cost=FAST)
    assert verify_password("", empty)
    assert not verify_password(" ", empty)


def test_passwords_longer_than_72_bytes_are_refused_not_truncated():
    with pytest.raises(ValueError, match="72 bytes"):
        hash_password("x" * 73)
    hashed = hash_password("x" * 72, cost=FAST)
    assert verify_password("x" * 72, hashed)
    # bcrypt would ignore byte 73 on: such a candidate is refused instead.
    assert not verify_password("x" * 72 + "y", hashed)


def test_cost_outside_bcrypt_range_is_refused():
    with pytest.raises(ValueError):
        hash_password("x", cost=3)
    with pytest.raises(ValueError):
        hash_password("x", cost=32)


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$"])
def test_bcrypt_variants_verify(prefix):
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(FAST)).decode()
    variant = prefix + hashed[4:]
    assert is_password_hash(variant)
    assert verify_password("pw", variant)
    assert not verify_password("pW", variant)


@pytest.mark.parametrize("variant", ["argon2id", "argon2i", "argon2d"])
def test_argon2_hashes_verify(variant):
    from argon2 import Type

    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1,
                            type={"argon2id": Type.ID, "argon2i": Type.I, "argon2d": Type.D}[variant])
    hashed = hasher.hash("correct horse")
    assert hashed.startswith(f"${variant}$")
    assert is_password_hash(hashed)
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct horsE", hashed)


@pytest.mark.parametrize("value", [
    "", "plaintext", "$2x$10$" + "a" * 53, "$2b$10$short", "$2b$03$" + "a" * 53,
    "$argon2id$v=19$m=1024", "$argon3$v=19$m=1,t=1,p=1$c2FsdA$aGFzaA",
    "5baa61e4c9b93f3f0682250b6cf8331b7ee68fd8",  # Kong's sha1 form
])
def test_not_password_hashes(value):
    assert not is_password_hash(value)
    assert verify_password("password", value) is False


def test_verify_never_raises_on_malformed_hashes():
    broken_bcrypt = "$2b$10$" + "!" * 53
    assert verify_password("x", broken_bcrypt) is False
    broken_argon = "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$AAAA"
    assert is_password_hash(broken_argon)
    assert verify_password("x", broken_argon) is False
    good = hash_password("x", cost=FAST)
    assert verify_password("\ud800", good) is False  # lone surrogate


def test_dummy_verification_costs_a_real_verification():
    verify_against_dummy("warm-up")  # builds the dummy hash once
    real = hash_password("secret")  # default cost, like the dummy
    start = time.perf_counter()
    assert verify_against_dummy("guess") is False
    dummy_time = time.perf_counter() - start
    start = time.perf_counter()
    assert verify_password("guess", real) is False
    real_time = time.perf_counter() - start
    # Same algorithm, same cost: within a generous factor on a noisy machine.
    assert dummy_time > real_time / 3
    assert real_time > dummy_time / 3
