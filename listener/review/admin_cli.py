"""``mura-review users|tokens|audit``: accounts and the audit trail from the command line.

An administrator runs these on the host, with the listener running or not (the database takes
concurrent writers). Passwords are read from the terminal without echo, or one line from stdin
with ``--password-stdin`` for provisioning scripts; never from the command line, where ``ps``
and the shell's history would show them. The actor recorded in the audit trail is
``cli:<the operating-system user>``.
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys

from listener.config import ROLES, ListenerConfig, ReviewSettings
from listener.paths import store_url
from listener.store import Store

__all__ = ["add_subcommands", "run"]


def add_subcommands(sub, parents: list[argparse.ArgumentParser]) -> None:
    users = sub.add_parser("users", parents=parents, help="named accounts: add, passwd, role, name, disable, enable, list")
    users_sub = users.add_subparsers(dest="action", required=True)
    add = users_sub.add_parser("add", parents=parents, help="add an account")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--full-name", default="", help="as the corrected SR names its verifying observer, "
                                                     "e.g. 'Doe^Jane' (DICOM person name) or 'Jane Doe'")
    _password_options(add, allow_none=True)
    passwd = users_sub.add_parser("passwd", parents=parents, help="set an account's password (ends its sessions)")
    passwd.add_argument("name")
    _password_options(passwd)
    role = users_sub.add_parser("role", parents=parents, help="change an account's role (a lower role ends its sessions)")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    name = users_sub.add_parser("name", parents=parents, help="change an account's full name")
    name.add_argument("name")
    name.add_argument("full_name")
    for action, text in (("disable", "disable an account (ends its sessions; its tokens stop working)"),
                         ("enable", "enable a disabled account")):
        users_sub.add_parser(action, parents=parents, help=text).add_argument("name")
    users_sub.add_parser("list", parents=parents, help="every account").add_argument("--json", action="store_true")

    tokens = sub.add_parser("tokens", parents=parents, help="per-user API tokens for MONAI Label's client and scripts")
    tokens_sub = tokens.add_subparsers(dest="action", required=True)
    create = tokens_sub.add_parser("create", parents=parents, help="a new token for an account, printed once")
    create.add_argument("name")
    create.add_argument("--label", default="", help="what the token is for (e.g. 'slicer on ws-12')")
    listing = tokens_sub.add_parser("list", parents=parents, help="tokens (ids and labels, never the secrets)")
    listing.add_argument("name", nargs="?")
    tokens_sub.add_parser("revoke", parents=parents, help="revoke a token by its id").add_argument("token_id")

    audit = sub.add_parser("audit", parents=parents,
                           help="the audit trail: sign-ins, studies opened, labels, exports, account changes")
    audit.add_argument("--since", help="2026-11-29, 2026-11-29T08:00, or 90m / 24h / 7d ago")
    audit.add_argument("--until", help="as --since")
    audit.add_argument("--user", help="only this user's entries")
    audit.add_argument("--event", help="only this event (e.g. study_opened, label_saved, sign_in_failed)")
    audit.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    audit.add_argument("--verify", action="store_true", help="check that no entry was changed or removed")


def _password_options(parser: argparse.ArgumentParser, allow_none: bool = False) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--password-stdin", action="store_true", help="read the password as one line from stdin")
    if allow_none:
        group.add_argument("--no-password", action="store_true",
                           help="no password: the account signs in by API token or single sign-on only")


def _read_password(args: argparse.Namespace) -> str | None:
    if getattr(args, "no_password", False):
        return None
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise ValueError("the two passwords differ")
    return first


def run(config: ListenerConfig, args: argparse.Namespace) -> int:
    from listener.review.accounts import AccountError, AccountStore, SessionStore
    from listener.review.admin import AccountAdmin, account_dict
    from listener.review.app import audit_log_path
    from listener.review.audit import AuditLog, format_entries, parse_time

    settings = config.review or ReviewSettings()
    store = Store(store_url(config))
    audit = AuditLog(store, audit_log_path(config, settings))
    accounts = AccountStore(store)
    admin = AccountAdmin(accounts, SessionStore(store, settings.session_idle_minutes * 60, settings.session_max_hours * 3600),
                         audit)
    actor = f"cli:{getpass.getuser()}"
    try:
        if args.command == "users":
            if args.action == "list":
                listed = [account_dict(a) for a in accounts.list()]
                if args.json:
                    print(json.dumps(listed, indent=1))
                else:
                    for a in listed:
                        state = "disabled" if a["disabled"] else "enabled"
                        print(f"{a['name']:<24} {a['role']:<9} {state:<9} {a['source']:<6} {a['full_name']}")
                return 0
            if args.action == "add":
                account = admin.add(actor, args.name, args.role, full_name=args.full_name, password=_read_password(args))
            elif args.action == "passwd":
                password = _read_password(args)
                assert password is not None
                account = admin.set_password(actor, args.name, password)
            elif args.action == "role":
                account = admin.set_role(actor, args.name, args.role)
            elif args.action == "name":
                account = admin.set_full_name(actor, args.name, args.full_name)
            elif args.action == "disable":
                account = admin.disable(actor, args.name)
            else:
                account = admin.enable(actor, args.name)
            state = "disabled" if account.disabled else "enabled"
            print(f"{account.name}: {account.role}, {state}" + (f", {account.full_name}" if account.full_name else ""))
            return 0
        if args.command == "tokens":
            if args.action == "create":
                token, secret = admin.create_token(actor, args.name, args.label)
                print(secret)
                print(f"token {token.id} for {token.user_name}: shown once, keep it like a password", file=sys.stderr)
            elif args.action == "list":
                for t in accounts.tokens(args.name):
                    state = "revoked" if t.revoked_at else "active"
                    print(f"{t.id}  {t.user_name:<24} {state:<8} {t.label}")
            else:
                token = admin.revoke_token(actor, args.token_id)
                print(f"token {token.id} of {token.user_name} revoked")
            return 0
        # audit
        if args.verify:
            problems = audit.verify()
            for line in problems:
                print(line)
            print("audit trail intact" if not problems else f"{len(problems)} problem(s)", file=sys.stderr)
            return 0 if not problems else 1
        entries = audit.entries(since=parse_time(args.since) if args.since else None,
                                until=parse_time(args.until) if args.until else None, user=args.user, event=args.event)
        if args.json:
            for entry in entries:
                print(json.dumps(entry.as_dict()))
        else:
            print(format_entries(entries))
        return 0
    except (AccountError, ValueError) as exc:
        print(f"mura-review: error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
