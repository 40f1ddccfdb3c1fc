"""Tokens: only the key's holder can mint them, they expire, and a distributor reads only itself."""

from __future__ import annotations

import pytest

from streams.api import auth

KEY = "k" * 32


def test_distributor_token_reads_only_its_own_data() -> None:
    p = auth.verify(KEY, auth.issue(KEY, auth.DISTRIBUTOR, "u1", 60, now=1000), now=1001)
    assert (p.role, p.subject) == ("distributor", "u1")
    assert p.may_read("u1") and not p.may_read("u2")


def test_operator_reads_everyone() -> None:
    p = auth.verify(KEY, auth.issue(KEY, auth.OPERATOR, None, 60, now=1000), now=1001)
    assert p.may_read("u1") and p.may_read("anyone")


@pytest.mark.parametrize(
    ("token", "now", "message"),
    [
        (None, 1001, "missing token"),
        ("", 1001, "missing token"),
        ("garbage", 1001, "malformed"),
        ("fx1.a.b.c", 1001, "malformed"),
        ("fx2.x.y", 1001, "malformed"),
    ],
)
def test_bad_tokens_are_refused(token: str | None, now: float, message: str) -> None:
    with pytest.raises(auth.AuthError, match=message):
        auth.verify(KEY, token, now=now)


def test_expired_token_is_refused() -> None:
    t = auth.issue(KEY, auth.DISTRIBUTOR, "u1", 60, now=1000)
    with pytest.raises(auth.AuthError, match="expired"):
        auth.verify(KEY, t, now=1060)


def test_token_signed_with_another_key_is_refused() -> None:
    t = auth.issue("other-key", auth.OPERATOR, None, 60, now=1000)
    with pytest.raises(auth.AuthError, match="signature"):
        auth.verify(KEY, t, now=1001)


def test_tampered_claims_are_refused() -> None:
    t = auth.issue(KEY, auth.DISTRIBUTOR, "u1", 60, now=1000)
    forged = auth.issue("attacker", auth.OPERATOR, None, 60, now=1000).split(".")[1]
    prefix, _, sig = t.split(".")
    with pytest.raises(auth.AuthError, match="signature"):
        auth.verify(KEY, f"{prefix}.{forged}.{sig}", now=1001)


def test_error_messages_never_echo_the_token() -> None:
    t = auth.issue("other", auth.OPERATOR, None, 60, now=1000)
    with pytest.raises(auth.AuthError) as e:
        auth.verify(KEY, t, now=1001)
    assert t not in str(e.value) and t.split(".")[1] not in str(e.value)


def test_token_command_names_the_operator_for_the_audit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams import cli, names
    from streams.settings import get_settings

    monkeypatch.setenv(names.ENV_TOKEN_KEY, KEY)
    get_settings.cache_clear()
    try:
        assert cli.main(["token", "--role", "operator", "--subject", "alice"]) == 0
        op = auth.verify(KEY, capsys.readouterr().out.strip())
        assert (op.role, op.subject) == ("operator", "alice")
        assert cli.main(["token", "--role", "distributor", "--subject", "u9"]) == 0
        d = auth.verify(KEY, capsys.readouterr().out.strip())
        assert (d.role, d.subject) == ("distributor", "u9") and not d.may_read("u1")
        assert cli.main(["token", "--operator"]) == 0
        assert auth.verify(KEY, capsys.readouterr().out.strip()).subject is None
        assert cli.main(["token", "--role", "distributor"]) != 0
        assert "--subject" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
