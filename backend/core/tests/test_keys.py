"""core.keys: one derivation of Fernet keys from the project's secrets."""

import base64
import hashlib

import pytest
from cryptography.fernet import Fernet, InvalidToken

from core.keys import derived_fernet


def test_the_derivation_is_the_one_stored_tokens_were_made_with():
    # Tokens stored before this module existed (webhook secrets at rest) must stay readable.
    legacy = Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"librarian-webhook-secret:s3cret").digest()))

    assert derived_fernet("webhook-secret", ["s3cret"]).decrypt(legacy.encrypt(b"x")) == b"x"


def test_the_first_secret_encrypts_and_every_one_decrypts():
    old = derived_fernet("p", ["old"])
    rotated = derived_fernet("p", ["new", "old"])

    assert rotated.decrypt(old.encrypt(b"kept")) == b"kept"
    with pytest.raises(InvalidToken):
        old.decrypt(rotated.encrypt(b"new"))


def test_purposes_do_not_share_keys():
    with pytest.raises(InvalidToken):
        derived_fernet("a", ["s"]).decrypt(derived_fernet("b", ["s"]).encrypt(b"x"))


def test_no_secret_is_refused():
    with pytest.raises(ValueError, match="non-empty secret"):
        derived_fernet("p", ["", ""])
