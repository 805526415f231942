"""``siaga`` command line. Names are stable (DESIGN.md "Control surface")."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
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

    k = sub.add_parser("ctl", help="talk to a running agent (same language as the serial console)")
    k.add_argument("--socket", default=None, metavar="PATH", help="default: console.ctl_socket of --config, else /run/siaga/ctl.sock")
    k.add_argument("--config", default=None, metavar="FILE")
    k.add_argument("words", nargs="+", metavar="COMMAND")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["ups", "sim"]:  # its own options and stdin control language
        from agent.ups_sim import main as sim_main

        return sim_main(argv[2:])
    args = _parser().parse_args(argv)
    if args.cmd == "check-config":
        from agent.config import check_config_main

        return check_config_main(args.file)
    if args.cmd == "simulate":
        from agent.simulate import main as simulate_main

        return simulate_main(args.scenario, args.json, sys.stdout)
    if args.cmd == "run":
        from agent.runtime import main as run_main

        return run_main(args.config, args.log_level)
    if args.cmd == "ups" and args.ups_cmd == "probe":
        from agent.ups_link import probe_main

        return probe_main(args.port, args.protocol, args.json, args.timeout)
    if args.cmd == "ctl":
        from agent.ctl import client_main

        return client_main(args.socket, args.config, args.words)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
