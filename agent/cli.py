"""``siaga`` command line. Names are stable: tests, docs and deployments rely on them."""

from __future__ import annotations

import argparse
import sys


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line. With ``argv``, the options of ``provision`` and ``central user``
    are only added when ``argv`` is for that command (or asks for help): they import the
    coordinator's code, 2 MB that ``siaga run`` on a Pi would otherwise carry for good."""

    def wanted(cmd: str) -> bool:
        return argv is None or not argv or argv[0] in ("-h", "--help") or cmd.startswith(argv[0])

    p = argparse.ArgumentParser(prog="siaga", description="Siaga power-continuity agent")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run the agent (hardware per the config: real or simulated)")
    r.add_argument("--config", required=True, metavar="FILE")
    r.add_argument("--log-level", default="INFO")

    c = sub.add_parser("check-config", help="validate a site config: exit 0, or print each problem and exit 1")
    c.add_argument("file", metavar="FILE")

    s = sub.add_parser("simulate", help="run a scenario in simulated time through the real controller")
    s.add_argument("scenario", metavar="SCENARIO.yaml")
    s.add_argument("--json", action="store_true", help="one JSON object: timeline and summary")

    u = sub.add_parser("ups", help="UPS tools: probe a real UPS, or run the UPS simulator on a pty")
    usub = u.add_subparsers(dest="ups_cmd", required=True, metavar="UPS_COMMAND")
    pr = usub.add_parser("probe", help="one read of a UPS for a technician")
    pr.add_argument("--port", required=True, metavar="URL", help="device path or pyserial URL (socket://, rfc2217://)")
    pr.add_argument("--protocol", choices=("megatec", "apcsmart", "auto"), default="auto")
    pr.add_argument("--json", action="store_true", help="the reading with NUT variable names")
    pr.add_argument("--timeout", type=float, default=3.0, metavar="S", help="give up after this long (default 3 s)")
    usub.add_parser("sim", help="a UPS simulator on a pty (see --help)", add_help=False)

    from agent.ctl import help_listing

    k = sub.add_parser("ctl", help="talk to a running agent (same language as the serial console)",
                       epilog=help_listing(), formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("--socket", default=None, metavar="PATH", help="default: console.ctl_socket of --config, else /run/siaga/ctl.sock")
    k.add_argument("--config", default=None, metavar="FILE")
    # REMAINDER: the command's own flags (status --json, ups shutdown-return --yes) are its words
    k.add_argument("words", nargs=argparse.REMAINDER, metavar="COMMAND")

    n = sub.add_parser("nut", help="NUT server tools (docs/nut-server.md)")
    nsub = n.add_subparsers(dest="nut_cmd", required=True, metavar="NUT_COMMAND")
    hp = nsub.add_parser("hash-password", help="read a NUT user's password (stdin, or a prompt) and "
                         "print the password_hash line for nut.users in the site config")
    hp.add_argument("--pin", action="store_true", help="hash the console's enable PIN (4 to 12 digits) "
                    "for console.enable_pin_hash instead")
    hp.add_argument("--allow-short", action="store_true", help="accept a NUT password under 8 characters "
                    "(only for an appliance whose password is fixed, e.g. a NAS)")

    z = sub.add_parser("central", help="run the central coordinator (fleet, incidents, advisories, dashboard, "
                       "JSON API); `siaga central user ...`: operator accounts")
    z.add_argument("--config", metavar="FILE")
    z.add_argument("--log-level", default="INFO")
    zsub = z.add_subparsers(dest="central_cmd", metavar="user")
    zuser = zsub.add_parser("user", help="operator accounts: add, passwd, disable, enable, token, list")
    if wanted("central"):
        from central.usercmd import add_arguments as user_arguments

        user_arguments(zuser)

    d = sub.add_parser("demo", help="the whole system on this machine (broker, simulated offices, coordinator, "
                       "dashboard, public page) playing the founding story")
    d.add_argument("--fast", action="store_true", help="play the story in about a minute")
    d.add_argument("--keep", action="store_true", help="leave the fleet running after the story (Ctrl-C stops it)")
    d.add_argument("--port", type=int, default=8080, metavar="N",
                   help="the coordinator's web address 127.0.0.1:N (default 8080; 0: any free port)")
    d.add_argument("--keep-state", action="store_true", help="keep the state directory (configs, logs, stores)")

    w = sub.add_parser("wire-schema", help="write the JSON Schema of every MQTT payload (docs/mqtt.md)")
    w.add_argument("--out", default="docs/wire-schema", metavar="DIR")

    v = sub.add_parser("provision", help="central broker accounts: add an office (its site id), "
                       "rotate/revoke one, the coordinator, a private CA (docs/broker.md)")
    if wanted("provision"):
        from agent.mqtt.provision import add_arguments as provision_arguments

        provision_arguments(v)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["ups", "sim"]:  # its own options and stdin control language
        from agent.sim.ups_sim import main as sim_main

        return sim_main(argv[2:])
    args = build_parser(argv).parse_args(argv)
    if args.cmd == "check-config":
        from agent.config import check_config_main

        return check_config_main(args.file)
    if args.cmd == "simulate":
        from agent.nut.shutdown import ShutdownSequencer
        from agent.sim.simulate import main as simulate_main

        # The simulator may not import agent.nut (import layers): the real sequencer is handed in.
        return simulate_main(args.scenario, args.json, sys.stdout, sequencer=ShutdownSequencer)
    if args.cmd == "run":
        from agent.runtime import main as run_main

        return run_main(args.config, args.log_level)
    if args.cmd == "ups" and args.ups_cmd == "probe":
        from agent.ups.link import probe_main

        return probe_main(args.port, args.protocol, args.json, args.timeout)
    if args.cmd == "provision":
        from agent.mqtt.provision import main as provision_main

        return provision_main(args)
    if args.cmd == "central" and args.central_cmd == "user":
        from central.usercmd import main as user_main

        return user_main(args)
    if args.cmd == "central":
        if not args.config:
            print("siaga central: --config FILE is required", file=sys.stderr)
            return 2
        from central.main import main as central_main

        return central_main(args.config, args.log_level)
    if args.cmd == "demo":
        from agent.demo.main import main as demo_main

        return demo_main(fast=args.fast, keep=args.keep, port=args.port, keep_state=args.keep_state)
    if args.cmd == "wire-schema":
        from agent.wire import schema_main

        return schema_main(args.out)
    if args.cmd == "nut" and args.nut_cmd == "hash-password":
        from agent.nut.auth import hash_password_main

        return hash_password_main(pin=args.pin, allow_short=args.allow_short)
    if args.cmd == "ctl":
        from agent.ctl import client_main

        if not args.words:
            print("siaga ctl: name a command, e.g. `siaga ctl help`", file=sys.stderr)
            return 2
        return client_main(args.socket, args.config, args.words)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
