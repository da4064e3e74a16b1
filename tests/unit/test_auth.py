"""The pure parts of authentication: tokens, users, quotas, redaction, binding, settings; and
the token store on a real SQLite database."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config import LOOPBACK_HOSTS, Settings
from agent.core.auth import (
    LOCAL_USER,
    TOKEN_PATTERN,
    Quota,
    User,
    bind_refusal,
    can_see,
    check_user_name,
    hash_token,
    new_token,
    owner_scope,
    redact_env,
    shown_prefix,
    well_formed,
)
from agent.core.errors import QueueFull, TrainyardError
from agent.db.engine import Database
from agent.db.migrate import upgrade
from agent.db.tokens import TokenStore


def test_tokens_are_long_random_and_well_formed() -> None:
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    for token in tokens:
        assert TOKEN_PATTERN.fullmatch(token)
        assert well_formed(token)
        assert len(token) == 46  # ty_ + 43 characters: 256 random bits
    assert not well_formed("ty_short")
    assert not well_formed("xx_" + "A" * 43)
    assert not well_formed("ty_" + "A" * 43 + "\n")
    assert not well_formed("ty_" + "A" * 5000)


def test_only_the_hash_is_kept_and_it_is_sha256() -> None:
    token = new_token()
    assert hash_token(token) == hashlib.sha256(token.encode()).hexdigest()
    assert len(hash_token(token)) == 64
    assert hash_token("\ud800") == hashlib.sha256(b"\xed\xa0\x80").hexdigest()  # never fails
    assert shown_prefix(token) == token[:10]


@pytest.mark.parametrize("name", ["alice", "a", "bob.smith", "x@example.com", "ci-bot_2", "A" * 64])
def test_user_names_accepted(name: str) -> None:
    assert check_user_name(name) == name


@pytest.mark.parametrize("name", ["", " alice", "a b", "-lead", "A" * 65, "al/ice", "ål"])
def test_user_names_refused(name: str) -> None:
    with pytest.raises(TrainyardError, match="user name"):
        check_user_name(name)


def test_who_sees_what() -> None:
    alice = User("alice", admin=False, token_id="t1")
    root = User("root", admin=True, token_id="t2")
    assert (owner_scope(alice), owner_scope(root), owner_scope(None)) == ("alice", None, None)
    assert owner_scope(LOCAL_USER) is None  # single-user mode: the local admin
    assert can_see(alice, "alice") and not can_see(alice, "bob") and not can_see(alice, None)
    assert can_see(root, "bob") and can_see(None, "bob")
    assert (alice.actor, root.actor, LOCAL_USER.actor) == ("alice", "root", "api")


def test_env_values_are_redacted_keys_kept() -> None:
    assert redact_env({"A": "secret", "B": ""}) == {"A": "***", "B": "***"}
    assert redact_env({}) == {}


def test_queued_quota() -> None:
    quota = Quota(max_queued=3, max_gpus=None)
    assert quota.refusal("alice", queued=2, running_gpus=99, gpus=8) is None
    refusal = quota.refusal("alice", queued=3, running_gpus=0, gpus=0)
    assert refusal is not None
    assert "alice has 3 jobs queued" in refusal
    assert "limit is 3 (TRAINYARD_QUOTA_QUEUED)" in refusal


def test_gpu_quota() -> None:
    quota = Quota(max_queued=None, max_gpus=4)
    assert quota.refusal("bob", queued=10_000, running_gpus=3, gpus=1) is None
    assert quota.refusal("bob", queued=0, running_gpus=9, gpus=0) is None  # CPU jobs pass
    refusal = quota.refusal("bob", queued=0, running_gpus=3, gpus=2)
    assert refusal == (
        "quota: user bob has 3 GPUs in starting or running jobs, this job asks for 2, and the "
        "per-user limit is 4 (TRAINYARD_QUOTA_GPUS); try again when some have finished"
    )
    assert Quota(None, 0).refusal("bob", queued=0, running_gpus=0, gpus=1) is not None


def test_quota_exceeded_is_a_429() -> None:
    from agent.core.auth import InvalidToken, QuotaExceeded, UnsafeBind  # noqa: PLC0415

    assert isinstance(QuotaExceeded("x"), QueueFull)
    assert QuotaExceeded("x").status_code == 429
    assert InvalidToken().status_code == 401
    assert isinstance(UnsafeBind("x"), TrainyardError)


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_loopback_needs_no_token(host: str) -> None:
    assert bind_refusal(host, LOOPBACK_HOSTS, tokens_exist=False) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "gpu-box.example"])
def test_beyond_loopback_needs_a_token(host: str) -> None:
    refusal = bind_refusal(host, LOOPBACK_HOSTS, tokens_exist=False)
    assert refusal is not None
    assert refusal.startswith(f"refusing to listen on {host}: no API token exists")
    assert "python run.py token create --user NAME" in refusal
    assert bind_refusal(host, LOOPBACK_HOSTS, tokens_exist=True) is None


# --- settings -------------------------------------------------------------------------------


def test_trusted_hosts_default_to_loopback_and_the_bind_address() -> None:
    assert Settings(allowed_hosts="").trusted_hosts == ["127.0.0.1", "localhost", "::1", "[::1]"]
    public = Settings(host="10.0.0.5", allow_public_bind=True, allowed_hosts="")
    assert public.trusted_hosts[-1] == "10.0.0.5"
    every = Settings(host="0.0.0.0", allow_public_bind=True, allowed_hosts="")
    assert "0.0.0.0" not in every.trusted_hosts
    v6 = Settings(host="fd00::5", allow_public_bind=True, allowed_hosts="")
    assert v6.trusted_hosts[-1] == "[fd00::5]"  # as the Host header carries it
    extra = Settings(allowed_hosts=" Trainyard.Example.com , *.corp.example ")
    assert extra.trusted_hosts[-2:] == ["trainyard.example.com", "*.corp.example"]


@pytest.mark.parametrize("value", ["exa*mple.com", "*example.com", "*.*.example", "a/b", "a b"])
def test_bad_allowed_hosts_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="TRAINYARD_ALLOWED_HOSTS"):
        Settings(allowed_hosts=value)


def test_cors_origins_are_exact() -> None:
    assert Settings().cors_origin_list == []
    settings = Settings(cors_origins="https://dash.example.com/, http://localhost:3000")
    assert settings.cors_origin_list == ["https://dash.example.com", "http://localhost:3000"]


@pytest.mark.parametrize("value", ["*", "dash.example.com", "https://x.example/path", "ftp://x"])
def test_bad_cors_origins_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="TRAINYARD_CORS_ORIGINS"):
        Settings(cors_origins=value)


def test_quota_settings() -> None:
    settings = Settings()
    assert (settings.quota_queued, settings.quota_gpus) == (1000, None)
    assert Settings(quota_gpus=0).quota_gpus == 0
    with pytest.raises(ValidationError):
        Settings(quota_queued=0)


def test_public_bind_message_names_both_steps() -> None:
    with pytest.raises(ValidationError) as error:
        Settings(host="0.0.0.0")
    message = error.value.errors()[0]["msg"]
    assert "TRAINYARD_ALLOW_PUBLIC_BIND=1" in message
    assert "python run.py token create" in message


# --- the token store ------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TokenStore]:
    url = f"sqlite:///{tmp_path / 'trainyard.db'}"
    upgrade(url)
    db = Database(url)
    yield TokenStore(db)
    db.dispose()


def test_store_creates_verifies_and_revokes(store: TokenStore) -> None:
    assert not store.any()
    info, secret = store.create("alice")
    assert store.any()
    assert store.user(secret) == User("alice", admin=False, token_id=info.id)
    assert store.user(secret + "x") is None
    assert store.user("ty_" + "A" * 43) is None
    assert info.prefix == secret[:10] and info.active
    assert all(secret not in repr(token) for token in store.list())
    revoked, was_active = store.revoke(info.id)
    assert was_active and not revoked.active
    assert store.user(secret) is None
    assert store.revoke(info.id)[1] is False
    assert store.any()  # a revoked token keeps the API locked


def test_store_names_a_token_by_id_prefix_or_secret(
    store: TokenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = iter(["abcd01", "abcd02", "abcd0"])
    monkeypatch.setattr("agent.db.tokens.new_token_id", lambda: next(ids))
    first, first_secret = store.create("alice")
    second, second_secret = store.create("bob", admin=True)
    with pytest.raises(TrainyardError, match=r"matches several tokens \(abcd01, abcd02\)"):
        store.revoke("abcd")
    assert store.revoke("abcd01")[0].id == first.id
    assert store.revoke(second_secret)[0].id == second.id
    third, third_secret = store.create("carol")
    assert store.revoke("abcd0")[0].id == third.id  # an exact id wins over longer ones
    assert store.revoke(first_secret[:10])[0].id == first.id  # the start `token list` shows
    with pytest.raises(TrainyardError, match="no token matches"):
        store.revoke("ffffffffffff")
    with pytest.raises(TrainyardError, match="at least 4"):
        store.revoke("ab")
    assert third_secret not in repr(store.list())


def test_store_refuses_bad_user_names(store: TokenStore) -> None:
    with pytest.raises(TrainyardError, match="user name"):
        store.create("a b")
    assert not store.any()
