"""Account changes, made the same way from the command line and from an admin's API calls.

Each change goes into the audit trail with who made it, and the changes that take rights away
(disable, a lower role, a new password) end the account's open sessions at once instead of
letting them run to their expiry.
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from listener.config import ROLES
from listener.review.accounts import Account, AccountError, AccountStore, ApiToken, SessionStore
from listener.review.audit import AuditLog, parse_time

__all__ = ["AccountAdmin", "admin_routes", "account_dict"]


def account_dict(account: Account) -> dict:
    return {"name": account.name, "full_name": account.full_name, "role": account.role, "disabled": account.disabled,
            "source": account.source, "created_at": account.created_at}


class AccountAdmin:
    def __init__(self, accounts: AccountStore, sessions: SessionStore, audit: AuditLog) -> None:
        self.accounts = accounts
        self.sessions = sessions
        self.audit = audit

    def add(self, actor: str, name: str, role: str, *, full_name: str = "", password: str | None = None,
            client: str | None = None) -> Account:
        account = self.accounts.add(name, role, full_name=full_name, password=password)
        self.audit.record("user_added", actor, client=client, user=name, role=role, password=password is not None)
        return account

    def set_password(self, actor: str, name: str, password: str, client: str | None = None) -> Account:
        account = self.accounts.set_password(name, password)
        ended = self.sessions.end_user(name)
        self.audit.record("password_changed", actor, client=client, user=name, sessions_ended=ended)
        return account

    def set_role(self, actor: str, name: str, role: str, client: str | None = None) -> Account:
        before = self._get(name)
        account = self.accounts.set_role(name, role)
        lowered = ROLES.index(role) < ROLES.index(before.role)
        ended = self.sessions.end_user(name) if lowered else 0
        self.audit.record("user_changed", actor, client=client, user=name, role_before=before.role, role=role,
                          sessions_ended=ended)
        return account

    def set_full_name(self, actor: str, name: str, full_name: str, client: str | None = None) -> Account:
        account = self.accounts.set_full_name(name, full_name)
        self.audit.record("user_changed", actor, client=client, user=name, full_name=full_name)
        return account

    def disable(self, actor: str, name: str, client: str | None = None) -> Account:
        account = self.accounts.disable(name)
        ended = self.sessions.end_user(name)
        self.audit.record("user_disabled", actor, client=client, user=name, sessions_ended=ended)
        return account

    def enable(self, actor: str, name: str, client: str | None = None) -> Account:
        account = self.accounts.enable(name)
        self.audit.record("user_enabled", actor, client=client, user=name)
        return account

    def create_token(self, actor: str, name: str, label: str = "", client: str | None = None) -> tuple[ApiToken, str]:
        token, secret = self.accounts.create_token(name, label)
        self.audit.record("token_created", actor, client=client, user=name, token_id=token.id, label=label)
        return token, secret

    def revoke_token(self, actor: str, token_id: str, client: str | None = None) -> ApiToken:
        token = self.accounts.revoke_token(token_id)
        self.audit.record("token_revoked", actor, client=client, user=token.user_name, token_id=token_id)
        return token

    def _get(self, name: str) -> Account:
        account = self.accounts.get(name)
        if account is None:
            raise AccountError(f"no account {name!r}")
        return account


def admin_routes(admin: AccountAdmin) -> list[Route]:
    """``/admin/users`` and ``/admin/audit`` for admins; the command line does the same."""
    from listener.review.auth import require

    async def users(request: Request) -> Response:
        require(request, "admin", "managing accounts")
        return JSONResponse({"users": [account_dict(a) for a in admin.accounts.list()]})

    async def change_user(request: Request) -> Response:
        """One change per call, as JSON: ``{"action": "add", "name": ..., "role": ..., "full_name": ...,
        "password": ...}``, ``{"action": "role" | "full_name" | "password" | "disable" | "enable", "name": ...}``."""
        who = require(request, "admin", "managing accounts")
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"detail": "the body must be JSON"}, 400)
        if not isinstance(body, dict):
            return JSONResponse({"detail": "the body must be a JSON object"}, 400)
        action, name = str(body.get("action", "")), str(body.get("name", ""))
        client = request.client.host if request.client else None
        actor = who.identity
        try:
            if action == "add":
                account = admin.add(actor, name, str(body.get("role", "")), full_name=str(body.get("full_name", "")),
                                    password=body.get("password") or None, client=client)
            elif action == "role":
                account = admin.set_role(actor, name, str(body.get("role", "")), client=client)
            elif action == "full_name":
                account = admin.set_full_name(actor, name, str(body.get("full_name", "")), client=client)
            elif action == "password":
                account = admin.set_password(actor, name, str(body.get("password", "")), client=client)
            elif action == "disable":
                if name == who.name:
                    return JSONResponse({"detail": "an admin cannot disable their own account"}, 400)
                account = admin.disable(actor, name, client=client)
            elif action == "enable":
                account = admin.enable(actor, name, client=client)
            else:
                return JSONResponse({"detail": "action must be add, role, full_name, password, disable or enable"}, 400)
        except AccountError as exc:
            return JSONResponse({"detail": str(exc)}, 400)
        return JSONResponse({"user": account_dict(account)})

    async def audit(request: Request) -> Response:
        require(request, "admin", "reading the audit trail")
        q = request.query_params
        try:
            since = parse_time(q["since"]) if q.get("since") else None
            until = parse_time(q["until"]) if q.get("until") else None
            limit = int(q.get("limit") or 1000)
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, 400)
        entries = admin.audit.entries(since=since, until=until, user=q.get("user") or None, event=q.get("event") or None,
                                      limit=limit)
        return JSONResponse({"entries": [entry.as_dict() for entry in entries]})

    return [
        Route("/admin/users", users, methods=["GET"]),
        Route("/admin/users", change_user, methods=["POST"]),
        Route("/admin/audit", audit, methods=["GET"]),
    ]
