"""``siaga central user add|passwd|disable|enable|unlock|token|list --config FILE``: operator accounts,
written straight into the coordinator's store (it may be running: the web process sees a change
within a few seconds). Passwords are read from the terminal without echo (twice), or as one line
from standard input when it is not a terminal (scripts). Every change is written to the audit log
(who: ``cli:<login name>``)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time

from central import accounts
from central.config import ConfigError, load, store_location
from central.store import Store


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="user_cmd", required=True, metavar="USER_COMMAND")

    def cmd(name: str, help: str, with_name: bool = True) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help)
        # SUPPRESS: `siaga central --config F user ...` and `siaga central user ... --config F` both work
        c.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
        if with_name:
            c.add_argument("name", metavar="NAME")
        return c

    a = cmd("add", "a new account (asks for its password)")
    a.add_argument("--role", choices=accounts.ROLES, required=True)
    a.add_argument("--region", default=None, metavar="REGION",
                   help="act only on this region's offices (they still see every office); default: every region")
    cmd("passwd", "set a new password (every session of the account ends; lifts its login lockouts)")
    cmd("disable", "the account can no longer log in; its sessions end and its API tokens are deleted")
    cmd("enable", "undo disable (API tokens do not come back: make new ones)")
    cmd("unlock", "lift the account's login lockouts (the running coordinator sees it within seconds)")
    t = cmd("token", "print a new API token for the account (shown once; acts with the account's role)")
    t.add_argument("--label", default="", help="what the token is for (shown in list)")
    t.add_argument("--revoke", metavar="ID|LABEL", default=None,
                   help="delete the account's token with this id (from `list --tokens`) or label instead")
    lst = cmd("list", "the accounts, their roles, regions and tokens", with_name=False)
    lst.add_argument("--tokens", action="store_true", help="also every token: id, label, created")


def _password(stdin=sys.stdin) -> str:
    if stdin.isatty():
        pw = getpass.getpass("password: ")
        if getpass.getpass("again: ") != pw:
            raise accounts.AccountError("the two passwords differ")
        return pw
    return stdin.readline().rstrip("\r\n")


def main(args: argparse.Namespace) -> int:
    cfg = getattr(args, "config", None)
    if not cfg:
        print("siaga central user: --config FILE is required", file=sys.stderr)
        return 2
    try:
        loaded = load(cfg)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    try:
        store = Store(store_location(loaded))
    except Exception as e:  # noqa: BLE001 - a clear message, not a trace
        print(f"{cfg}: cannot open the store: {e}", file=sys.stderr)
        return 1
    try:
        return _run(args, store, loaded.registry.offices_by_site())
    except accounts.AccountError as e:
        print(f"siaga central user {args.user_cmd}: {e}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _run(args: argparse.Namespace, store: Store, offices: dict) -> int:
    now = time.time()
    try:
        who = f"cli:{getpass.getuser()}"
    except OSError:
        who = f"cli:uid {os.getuid()}"
    if args.user_cmd == "list":
        for u in store.users():
            print(f"{u['name']:<20} {u['role']:<9} {u.get('region') or '(every region)':<24} "
                  f"{'DISABLED' if u.get('disabled') else 'active':<9} tokens: {len(u.get('tokens', []))}")
            if args.tokens:
                for t in u.get("tokens", []):
                    made = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.get("created", 0)))
                    print(f"    token {accounts.token_id(t)}  created {made}  {t.get('label') or '(no label)'}")
        return 0
    user = store.user(args.name)
    if args.user_cmd == "add":
        if user is not None:
            raise accounts.AccountError(f"account {args.name!r} exists (use passwd, enable or disable)")
        regions = sorted({o.region for o in offices.values()})
        if args.region is not None and args.role == "admin":
            raise accounts.AccountError("an admin acts in every region: leave --region out "
                                        "(or make the account an operator of that region)")
        if args.region is not None and args.region not in regions:
            raise accounts.AccountError(f"region {args.region!r} is not in the registry ({', '.join(regions)})")
        user = accounts.new_user(args.name, args.role, args.region, _password(), now)
        detail = {"account": args.name, "role": args.role, "region": args.region}
    else:
        if user is None:
            raise accounts.AccountError(f"no account {args.name!r}")
        detail = {"account": args.name}
        if args.user_cmd == "passwd":
            user["hash"] = accounts.hash_password(_password())
            user["unlocked"] = now
        elif args.user_cmd == "disable":
            user["disabled"] = True
            detail["tokens_deleted"] = len(user.get("tokens", []))
            user["tokens"] = []
        elif args.user_cmd == "enable":
            user["disabled"] = False
        elif args.user_cmd == "unlock":
            user["unlocked"] = now
        elif args.user_cmd == "token" and args.revoke is not None:
            keep = [t for t in user.get("tokens", []) if args.revoke not in (accounts.token_id(t), t.get("label"))]
            gone = len(user.get("tokens", [])) - len(keep)
            if gone == 0:
                raise accounts.AccountError(f"{args.name} has no token with id or label {args.revoke!r} "
                                            "(see `list --tokens`)")
            if gone > 1:
                raise accounts.AccountError(f"{gone} tokens of {args.name} are labelled {args.revoke!r}: "
                                            "revoke by id (see `list --tokens`)")
            user["tokens"] = keep
            args.user_cmd, detail["revoked"] = "token_revoke", args.revoke
        elif args.user_cmd == "token":
            token = accounts.new_token()
            user.setdefault("tokens", []).append({"digest": accounts.token_digest(token), "created": now,
                                                  "label": args.label})
            detail["label"] = args.label
        user["generation"] = user.get("generation", 1) + (args.user_cmd in ("passwd", "disable"))
    store.save_user(user)
    store.audit(now, who, f"account_{args.user_cmd}", detail)
    store.commit()
    if args.user_cmd == "token":
        print(token)
        print(f"token {accounts.token_id(user['tokens'][-1])} of {args.name} "
              f"(revoke: siaga central user token {args.name} --revoke ID)", file=sys.stderr)
    else:
        print(f"{args.user_cmd}: {args.name}", file=sys.stderr)
    return 0
