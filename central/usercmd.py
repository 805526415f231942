"""``siaga central user add|passwd|disable|enable|token|list --config FILE``: operator accounts,
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
    cmd("passwd", "set a new password (every session of the account ends)")
    cmd("disable", "the account can no longer log in; its sessions and API tokens stop working")
    cmd("enable", "undo disable")
    t = cmd("token", "print a new API token for the account (shown once; acts with the account's role)")
    t.add_argument("--label", default="", help="what the token is for (shown in list)")
    cmd("list", "the accounts, their roles, regions and tokens", with_name=False)


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
        return 0
    user = store.user(args.name)
    if args.user_cmd == "add":
        if user is not None:
            raise accounts.AccountError(f"account {args.name!r} exists (use passwd, enable or disable)")
        regions = sorted({o.region for o in offices.values()})
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
        elif args.user_cmd == "disable":
            user["disabled"] = True
        elif args.user_cmd == "enable":
            user["disabled"] = False
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
    else:
        print(f"{args.user_cmd}: {args.name}", file=sys.stderr)
    return 0
