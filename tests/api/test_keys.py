"""The admin API for keys (/v1/keys) and the operator's `jaga keys` and `jaga tenants` commands."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from api.core.auth import create_key, hash_key
from api.core.models import ApiKey, Tenant
from tests.api.key_factory import scoped_key


@pytest.fixture
def admin(db_session) -> dict[str, str]:
    return scoped_key(db_session, "admin")[1]


def _create(client, headers, **body):
    return client.post("/v1/keys", headers=headers, json={"name": "ci", **body})


def test_create_returns_the_secret_once(client, admin, db_session):
    r = _create(client, admin, scope="read", rate_limit_per_minute=30)
    assert r.status_code == 201, r.text
    created = r.json()
    assert r.headers["location"] == f"/v1/keys/{created['id']}"
    assert r.headers["cache-control"] == "no-store"
    assert created["scope"] == "read"
    assert created["rate_limit_per_minute"] == 30
    assert created["revoked_at"] is None
    secret = created["secret"]
    assert secret.startswith("jaga_")
    assert len(secret) > 40
    with db_session() as s:
        row = s.get(ApiKey, created["id"])
        assert row.key_hash == hash_key(secret)
        assert secret not in {row.key_hash, row.name}  # only its hash is stored
    shown = client.get(f"/v1/keys/{created['id']}", headers=admin)
    listed = client.get("/v1/keys", headers=admin)
    for text in (shown.text, listed.text):
        assert secret not in text
        assert hash_key(secret) not in text
    assert "secret" not in shown.json()
    assert "key_hash" not in shown.json()
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {secret}"}).status_code == 200


def test_create_defaults_to_write(client, admin):
    created = _create(client, admin).json()
    assert created["scope"] == "write"
    assert created["rate_limit_per_minute"] is None
    headers = {"Authorization": f"Bearer {created['secret']}"}
    assert client.post("/v1/jobs", headers=headers, json={"kind": "fly"}).status_code == 422  # past the scope check


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "scope": "root"}, "scope"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"scope": "read"}, "name"),
        ({"name": "x", "rate_limit_per_minute": 0}, "rate_limit_per_minute"),
        ({"name": "x", "rate_limit_per_minute": "10"}, "rate_limit_per_minute"),
        ({"name": "x", "rate_limit_per_minute": 601}, "rate_limit_per_minute"),  # above the service's 600
        ({"name": "x", "is_admin": True}, "is_admin"),
        ({"name": "a\0b"}, "name"),  # PostgreSQL cannot store a NUL
    ],
)
def test_bad_create_bodies_are_422_naming_the_field(client, admin, db_session, body, field):
    with db_session() as s:
        before = len(list(s.scalars(select(ApiKey.id))))
    r = client.post("/v1/keys", headers=admin, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in r.json()["errors"]]
    with db_session() as s:
        assert len(list(s.scalars(select(ApiKey.id)))) == before


def test_rate_limit_past_a_32_bit_integer_is_422_without_a_service_limit(make_settings, db_session):
    """With the service's limit off (0), only the column's range bounds a key's own limit."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    _, headers = scoped_key(db_session, "admin")
    with TestClient(create_app(make_settings(rate_limit_per_minute=0), make_session=db_session)) as client:
        r = _create(client, headers, rate_limit_per_minute=2**31)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "rate_limit_per_minute"
        assert _create(client, headers, rate_limit_per_minute=2**31 - 1).status_code == 201


@pytest.mark.parametrize("after", ["\0", "key_\0", "x" * 5000])
def test_list_cursor_that_is_not_an_id_is_422_naming_after(client, admin, after):
    r = client.get("/v1/keys", params={"after": after}, headers=admin)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "after"


def test_list_is_paginated_newest_first_and_tenant_only(client, admin, db_session):
    ids = [_create(client, admin, name=f"k{i}").json()["id"] for i in range(3)]
    scoped_key(db_session, "admin", tenant="globex")
    first = client.get("/v1/keys?limit=2", headers=admin).json()
    assert [k["id"] for k in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    rest = client.get(f"/v1/keys?limit=2&after={first['next_after']}", headers=admin).json()
    assert len(rest["data"]) == 2
    assert rest["has_more"] is False
    assert {k["scope"] for k in rest["data"]} == {"write", "admin"}
    keys = first["data"] + rest["data"]
    assert set(keys[0]) == {"id", "name", "scope", "rate_limit_per_minute", "created_at", "last_used_at", "revoked_at"}
    admins = client.get("/v1/keys?scope=admin", headers=admin).json()["data"]
    assert [k["scope"] for k in admins] == ["admin"]
    assert client.get("/v1/keys?scope=root", headers=admin).status_code == 422
    assert client.get("/v1/keys?limit=0", headers=admin).status_code == 422


def test_list_shows_last_use(client, admin):
    created = _create(client, admin).json()
    assert client.get(f"/v1/keys/{created['id']}", headers=admin).json()["last_used_at"] is None
    client.get("/v1/jobs", headers={"Authorization": f"Bearer {created['secret']}"})
    assert client.get(f"/v1/keys/{created['id']}", headers=admin).json()["last_used_at"] is not None


def test_another_tenants_keys_are_404(client, admin, db_session):
    foreign, _ = scoped_key(db_session, "write", tenant="globex")
    for method, path in [("GET", f"/v1/keys/{foreign.id}"), ("POST", f"/v1/keys/{foreign.id}/revoke")]:
        r = client.request(method, path, headers=admin)
        assert r.status_code == 404, (method, path)
        assert r.json()["code"] == "not_found"
    with db_session() as s:
        assert s.get(ApiKey, foreign.id).revoked_at is None
    for bad in ("nope", "job_" + "0" * 24, "key_" + "0" * 24):
        assert client.get(f"/v1/keys/{bad}", headers=admin).status_code == 404


def test_revocation_is_immediate_and_idempotent(client, admin):
    created = _create(client, admin).json()
    victim = {"Authorization": f"Bearer {created['secret']}"}
    assert client.get("/v1/jobs", headers=victim).status_code == 200
    r = client.post(f"/v1/keys/{created['id']}/revoke", headers=admin)
    assert r.status_code == 200, r.text
    revoked_at = r.json()["revoked_at"]
    assert revoked_at is not None
    denied = client.get("/v1/jobs", headers=victim)
    assert denied.status_code == 401
    assert denied.json()["code"] == "unauthorized"
    again = client.post(f"/v1/keys/{created['id']}/revoke", headers=admin)
    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked_at
    assert client.get(f"/v1/keys/{created['id']}", headers=admin).json()["revoked_at"] == revoked_at


def test_the_last_admin_key_cannot_revoke_itself(client, db_session):
    me, admin = scoped_key(db_session, "admin")
    scoped_key(db_session, "write")  # other scopes do not count
    r = client.post(f"/v1/keys/{me.id}/revoke", headers=admin)
    assert r.status_code == 409
    assert r.json()["code"] == "last_admin_key"
    assert client.get("/v1/keys", headers=admin).status_code == 200
    second = _create(client, admin, scope="admin").json()
    assert client.post(f"/v1/keys/{me.id}/revoke", headers=admin).status_code == 200  # another admin remains
    assert client.get("/v1/keys", headers=admin).status_code == 401
    other = {"Authorization": f"Bearer {second['secret']}"}
    assert client.post(f"/v1/keys/{second['id']}/revoke", headers=other).status_code == 409


def test_an_admin_key_may_revoke_another_admin_key(client, db_session):
    _, admin = scoped_key(db_session, "admin")
    other, _ = scoped_key(db_session, "admin")
    assert client.post(f"/v1/keys/{other.id}/revoke", headers=admin).status_code == 200


# --- the CLI (commits for real) ---------------------------------------------------------------------------------


@pytest.fixture
def jaga(clean_database, monkeypatch, capsys):
    """Run `jaga ARGS…` in-process on the test database; returns its standard output (``err=True``: its
    standard error)."""
    from api.cli import main
    from api.core.settings import get_settings

    monkeypatch.setenv("JAGA_DATABASE_URL", clean_database)
    get_settings.cache_clear()

    def run(*args: str, err: bool = False) -> str:
        capsys.readouterr()
        main(list(args))
        captured = capsys.readouterr()
        return captured.err if err else captured.out

    yield run
    get_settings.cache_clear()


@pytest.fixture
def committed(clean_database):
    from api.core.db import session_scope

    return lambda: session_scope(clean_database)


def test_cli_creates_lists_and_revokes_keys(jaga, committed):
    out = jaga("keys", "create", "--tenant", "acme", "--name", "ci", "--scope", "read", "--rate-limit", "30")
    secret = out.strip().splitlines()[-1]
    assert secret.startswith("jaga_")
    admin_out = jaga("keys", "create", "--tenant", "acme", "--admin")
    jaga("keys", "create", "--tenant", "globex")
    with committed() as s:
        key = s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(secret)))
        assert (key.scope, key.name, key.rate_limit_per_minute) == ("read", "ci", 30)
        assert s.scalar(select(ApiKey.scope).where(ApiKey.key_hash == hash_key(admin_out.split()[-1]))) == "admin"
    table = jaga("keys", "list", "--tenant", "acme")
    assert key.id in table
    assert "read" in table
    assert "admin" in table
    assert "globex" not in table
    assert secret not in table
    assert hash_key(secret) not in table
    listed = json.loads(jaga("keys", "list", "--json"))
    assert {k["tenant"] for k in listed} == {"acme", "globex"}
    assert all("secret" not in k and "key_hash" not in k for k in listed)
    assert "revoked key" in jaga("keys", "revoke", key.id)
    assert "already revoked" in jaga("keys", "revoke", key.id)
    assert json.loads(jaga("keys", "list", "--tenant", "acme", "--json"))[0]["revoked_at"] is not None
    with pytest.raises(SystemExit, match="no key"):
        jaga("keys", "revoke", "key_" + "0" * 24)


def test_cli_may_revoke_the_last_admin_key_and_says_so(jaga, committed):
    jaga("keys", "create", "--tenant", "acme", "--scope", "admin")
    with committed() as s:
        key_id = s.scalar(select(ApiKey.id))
    assert "no active admin key left" in jaga("keys", "revoke", key_id, err=True)
    with committed() as s:
        assert s.get(ApiKey, key_id).revoked_at is not None


def test_cli_refuses_bad_key_options(jaga):
    for args in (
        ["--scope", "root"],
        ["--scope", "read", "--admin"],
        ["--rate-limit", "-1"],
        ["--rate-limit", "2147483648"],
    ):
        with pytest.raises(SystemExit):
            jaga("keys", "create", "--tenant", "acme", *args)


def test_cli_sets_and_lists_quotas(jaga, committed):
    jaga("keys", "create", "--tenant", "acme")
    assert "max_active_jobs 3" in jaga("tenants", "set-quota", "acme", "--max-active-jobs", "3")
    jaga("tenants", "set-quota", "acme", "--max-stored-bytes", "0")
    with committed() as s:
        tenant = s.scalar(select(Tenant).where(Tenant.name == "acme"))
        assert (tenant.max_active_jobs, tenant.max_stored_bytes) == (3, 0)
    (listed,) = json.loads(jaga("tenants", "list", "--json"))
    assert listed["effective"] == {"max_active_jobs": 3, "max_stored_bytes": 0}
    assert listed["usage"] == {"active_jobs": 0, "stored_bytes": 0}
    assert "active jobs 0 of 3" in jaga("tenants", "list")
    for option, past_the_column in (("--max-active-jobs", 2**31), ("--max-stored-bytes", 2**63)):
        with pytest.raises(SystemExit):
            jaga("tenants", "set-quota", "acme", option, str(past_the_column))
    jaga("tenants", "set-quota", "acme", "--max-stored-bytes", str(2**63 - 1))
    jaga("tenants", "set-quota", "acme", "--max-active-jobs", "default")
    (listed,) = json.loads(jaga("tenants", "list", "--json"))
    assert listed["own"]["max_active_jobs"] is None
    assert listed["effective"]["max_active_jobs"] == 20
    with pytest.raises(SystemExit, match="no tenant"):
        jaga("tenants", "set-quota", "nobody", "--max-active-jobs", "1")
    with pytest.raises(SystemExit):
        jaga("tenants", "set-quota", "acme", "--max-active-jobs", "-2")
    with pytest.raises(SystemExit):
        jaga("tenants", "set-quota", "acme")


def test_create_key_refuses_unknown_scopes(db_session):
    with db_session() as s, pytest.raises(ValueError, match="unknown scope"):
        create_key(s, tenant_name="acme", scope="root")


@pytest.mark.parametrize("raw", [b"{not json", b"[" * 100_000])
def test_a_body_that_is_not_json_is_a_400_like_everywhere(client, admin, raw):
    r = client.post("/v1/keys", headers={**admin, "Content-Type": "application/json"}, content=raw)
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "malformed_json"
    assert r.json()["errors"][0]["field"] == "body"
