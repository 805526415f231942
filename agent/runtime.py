"""``siaga run --config FILE``: assemble the agent and run it until SIGTERM/SIGINT.

``hardware: real``: lgpio pins. ``hardware: simulated``: MockFactory pins wired to the plant
simulator by ``agent.sim.world.SimWorld``, a thread that steps the plant in real time and plays
the wiring.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
from typing import TYPE_CHECKING, Callable

from agent.config import ConfigError, SiteConfig, amf_settings, config_warnings, load_config
from agent.control import amf_types
from agent.control.clock import MonotonicClock, SystemWall
from agent.control.core import Call, Core, Record
from agent.control.store import Store, StoreError
from agent.console import service as console
from agent.ctl import CtlServer
from agent.mqtt.link import start_mqtt
from agent.nut.server import NutServer
from agent.nut.shutdown import CLIENTS_KEY as NUT_CLIENTS_KEY, STATE_KEY as SHUTDOWN_STATE_KEY, ShutdownSequencer, nut_data
from agent.pins import CRANK_CUTOFF_S, Pins, make_pin_factory
from agent.probes import ProbeRunner
from agent.sdnotify import Notifier
from agent.ups.derive import RuntimeModel
from agent.ups.link import UpsLink

if TYPE_CHECKING:  # imported where used: a Pi (hardware real) never loads the simulator
    from agent.sim.ups_sim import UpsSimulator
    from agent.sim.world import SimWorld

log = logging.getLogger("siaga")
WDIOF_CARDRESET = 0x0020  # linux/watchdog.h: "card previously reset the CPU"


def watchdog_reset_detected(path: str = "/sys/class/watchdog/watchdog0/bootstatus") -> bool:
    """True when the kernel says the last reset came from the hardware watchdog. Drivers that do
    not report it (or no watchdog at all) read as False: the alarm is a hint, not a guarantee."""
    try:
        with open(path) as f:
            return bool(int(f.read().strip() or "0", 0) & WDIOF_CARDRESET)
    except (OSError, ValueError):
        return False


def main(config_path: str, log_level: str = "INFO") -> int:
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    rc = 0
    try:
        _run(cfg, config_path)
    except BaseException:  # whatever it was: log it, and still leave the relays as decided
        log.exception("siaga stopped by an unexpected error")
        rc = 1
    # Exit without running atexit handlers, on every path: gpiozero's would close every output
    # device, and on lgpio closing re-claims the line as a floating input, which (with most relay
    # boards) drops the start relay. A restart of the agent must not stop a generator that
    # carries the load: the kernel keeps the lines at their last level until the next agent
    # claims them with the resumed values (docs/amf.md, "Wiring decision").
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def _open_store(cfg: SiteConfig) -> tuple[Store, str | None]:
    """The configured store, or (SD card gone read-only, disk full) one in memory, seeded from
    what the file still lets us read: controlling the generator matters more than the journal,
    which is held until the file can be opened again (``_reopen_store_later``)."""
    try:
        return Store.open(cfg.storage.path, cfg.storage.synchronous), None
    except Exception as e:
        log.error("cannot open the store %s (%s): running with a store in memory", cfg.storage.path, e)
        return Store.open_held(cfg.storage.path), str(e)


def _trim_heap() -> None:
    """Hand the memory freed during start-up (pydantic builds its validators from large
    temporary schemas) back to the kernel: about 1 MB of the agent's resident size on glibc
    (bench/bench_agent_idle.py). Elsewhere (musl) nothing happens."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


STORE_REOPEN_S = 30.0


def _reopen_store_later(cfg: SiteConfig, core: Core, then: Callable[[], None]) -> threading.Event:
    """After a start on a store in memory: every STORE_REOPEN_S try the file again (checked on
    this thread, so the core never waits on a slow check); once it opens, the core moves what
    it held into it (``Core.adopt_store``), the storage_failed alarm clears and ``then()`` runs
    (the MQTT link starts again, with its outbox, which queues everything held). Set the
    returned event to stop trying."""
    stop, path = threading.Event(), cfg.storage.path

    def adopt(c: Core) -> int | Exception:
        try:
            return c.adopt_store(Store.open(path, cfg.storage.synchronous, check=False))
        except Exception as e:  # still not writable: next time
            return e

    def loop() -> None:
        while not stop.wait(STORE_REOPEN_S):
            try:
                Store.open(path, cfg.storage.synchronous).close()  # the full check, off the core
            except Exception:
                continue
            box: queue.SimpleQueue = queue.SimpleQueue()
            core.post(Call(adopt, box.put))
            try:
                moved = box.get(timeout=120)
            except queue.Empty:
                continue
            if isinstance(moved, Exception):
                continue
            log.warning("store %s writable again: %d journal rows held in memory moved into it", path, moved)
            core.post(Record("store_reopened", {"path": path, "rows_moved": moved}))
            then()
            core.post(amf_types.ExternalAlarm("storage_failed", False))
            return

    threading.Thread(target=loop, name="siaga-store-reopen", daemon=True).start()
    return stop


RUNTIME_MODEL_KEY = "ups_runtime_model"


def runtime_model(cfg: SiteConfig, store: Store, simulated: bool) -> RuntimeModel:
    """The UPS runtime model: nominal figures from the config (or the simulated plant), and what
    recorded discharges taught it, kept in the store across restarts."""
    if simulated:
        model = RuntimeModel(nominal_runtime_s=cfg.simulation.ups_runtime_s_at_load, nominal_load_pct=cfg.simulation.load_pct)
    else:
        model = RuntimeModel(nominal_runtime_s=cfg.ups.nominal_runtime_s, nominal_load_pct=cfg.ups.nominal_load_pct)
    try:
        learned = store.get_meta(RUNTIME_MODEL_KEY)
        if learned:
            old = RuntimeModel.from_dict(learned)  # validated, then clamped to this model's limits:
            model = RuntimeModel.from_dict(dict(model.to_dict(), correction=old.correction, samples=old.samples))
    except (StoreError, ValueError) as e:
        log.warning("the learned UPS runtime model is unreadable (%s): starting from the nominal figures", e)
    return model


def _meta(store: Store, key: str) -> dict | None:
    try:
        return store.get_meta(key)
    except StoreError as e:
        log.warning("cannot read %s from the store (%s)", key, e)
        return None


def _start_ups(cfg: SiteConfig, core: Core, store: Store, world: SimWorld | None) -> tuple[UpsSimulator | None, UpsLink]:
    """The UPS link thread on the configured port, or (hardware: simulated) on the built-in UPS
    simulator's pty, driven by the simulated plant."""
    port, ups_sim = cfg.ups.port, None
    if world:
        w = world
        from agent.sim.ups_sim import UpsSimulator

        ups_sim = UpsSimulator(lambda: w.latest_ups, protocol="apcsmart" if cfg.ups.protocol == "apcsmart" else "megatec",
                               link_path=os.path.join(os.path.dirname(os.path.abspath(cfg.storage.path)), "ttyUPS"),
                               on_command=lambda cmd: w.inbox.put(("ups_cmd", cmd, None)))
        port = ups_sim.link_path or ups_sim.port
        log.info("simulated UPS on %s (%s)", ups_sim.port, port)
    link = UpsLink(port, cfg.ups.protocol, core.post, baudrate=cfg.ups.baudrate,
                   poll_interval_s=cfg.ups.poll_interval_s, stale_after_failures=cfg.ups.stale_after_failures,
                   ratings_interval_s=cfg.ups.ratings_interval_s, model=runtime_model(cfg, store, world is not None),
                   off_delay_s=int(cfg.shutdown.ups_off_delay_s), return_delay_s=int(cfg.shutdown.ups_return_delay_s),
                   battery_span_v=_battery_span(cfg, world),
                   journal=lambda name, detail: core.post(Record(name, detail)),
                   on_learned=lambda model: core.post(Call(lambda c: c.store.set_meta(RUNTIME_MODEL_KEY, model))))
    link.start()
    return ups_sim, link


def _battery_span(cfg: SiteConfig, world: SimWorld | None) -> tuple[float | None, float | None]:
    """The battery voltage span for the charge estimate: the configured one; with the simulated
    plant, by default the plant's own flat..full volts (the generic 104/120..130/120 of nominal
    reads a full battery as 100 % until it has lost a fifth of its charge: runtime too high)."""
    low, high = cfg.ups.battery_voltage_low_v, cfg.ups.battery_voltage_high_v
    if world is not None and low is None and high is None:
        return world.plant.params.battery_flat_v, world.plant.params.battery_full_v
    return low, high


def _start_nut(cfg: SiteConfig, core: Core, link: UpsLink | None, seq: ShutdownSequencer) -> NutServer | None:
    """The NUT server for the office's servers. A port it cannot bind (a stock upsd still running,
    say) is journalled and the agent runs on: the generator matters more."""
    server = NutServer(cfg.nut, lambda: nut_data(link, seq),
                       instcmd=(lambda name, value: link.instcmd(name, value, source="nut")) if link else None,
                       supported_cmds=link.supported_commands if link else (lambda: []),
                       on_event=lambda name, detail: core.post(Record(name, detail)),
                       on_alarm=lambda name, active, detail: core.post(amf_types.ExternalAlarm(name, active, detail)))
    try:
        server.start()
    except OSError as e:
        log.error("NUT server not started: %s", e)
        core.post(Record("nut_server_failed", {"error": str(e)}))
        return None
    log.info("NUT server on %s", ", ".join(f"{h}:{p}" for h, p in server.ports))
    return server


def _run(cfg: SiteConfig, config_path: str | None = None) -> None:
    warnings = config_warnings(cfg)
    for w in warnings:
        log.warning("config: %s", w)
    store, store_error = _open_store(cfg)
    simulated = cfg.hardware == "simulated"
    factory = make_pin_factory("mock" if simulated else cfg.gpio.pin_factory)
    pins = Pins(cfg.gpio, factory, crank_cutoff_s=CRANK_CUTOFF_S)
    core = Core(amf_settings(cfg), store, pins, MonotonicClock(), SystemWall(cfg.site.timezone),
                resample_s=cfg.gpio.resample_interval_s, journal_keep_rows=cfg.storage.journal_keep_rows)
    for sig in (signal.SIGTERM, signal.SIGINT):  # before boot: a stop during boot is queued too
        signal.signal(sig, lambda *_: core.stop())
    extra: list[amf_types.Effect] = []
    extra += [amf_types.Note("config_warning", {"warning": w}) for w in warnings]  # journalled (and published) at boot
    if store.recovered_from_corruption:
        extra.append(amf_types.Note("store_recovered", {"corrupt_file": store.recovered_from_corruption}))
    watchdog = not simulated and watchdog_reset_detected()
    world = None
    if simulated:
        from agent.sim.world import SimWorld

        world = SimWorld(cfg, factory, core, os.path.join(os.path.dirname(os.path.abspath(cfg.storage.path)), "sim-plant.pickle"))
        world.hw.drive_inputs()  # the pins show the world before the core reads them
        core.sinks.append(world.on_effects)
    # Before boot: a controller that resumes in FSD says so at boot, and the sequencer must hear it.
    seq = ShutdownSequencer(cfg.shutdown, None, None, journal=lambda name, detail: core.post(Record(name, detail)),
                            save=lambda d: core.post(Call(lambda c: c.store.set_meta(SHUTDOWN_STATE_KEY, d))),
                            saved=_meta(store, SHUTDOWN_STATE_KEY),
                            save_clients=lambda d: core.post(Call(lambda c: c.store.set_meta(NUT_CLIENTS_KEY, d))),
                            known_clients=_meta(store, NUT_CLIENTS_KEY))
    core.sinks.append(lambda records, fx: [seq.request(e.active, e.reason) for e in fx if isinstance(e, amf_types.FsdRequest)])
    core.boot(extra)
    if watchdog:
        core.post(amf_types.ExternalAlarm("watchdog_reset", True, "the hardware watchdog reset the Pi"))
    if store_error:
        core.post(amf_types.ExternalAlarm("storage_failed", True, store_error))
    log.info("siaga %s up: boot %d, state %s", cfg.site.id, core.boot_no, core.controller.state.value)
    svc = console.build(cfg, core, config_path, world.command if world else None)  # console + siaga ctl
    ctl = None
    if cfg.console.ctl_socket:
        ctl = CtlServer(cfg.console.ctl_socket, svc)
        ctl.serve_in_thread()
    world_thread = world.start() if world else None
    ups_sim, link = _start_ups(cfg, core, store, world) if cfg.ups.enabled else (None, None)
    nut = _start_nut(cfg, core, link, seq) if cfg.nut.enabled else None
    seq.nut, seq.ups = nut, link
    seq.start()
    svc.ups, svc.shutdown, svc.nut = link, seq, nut
    probes = ProbeRunner(cfg.services, core.post, wall=lambda: core.wall.read().epoch_s)  # services: (docs/services.md)
    mqtt_args = dict(ups_reading=link.last_reading if link else None, probe_results=probes.results,
                     ups_command=(lambda name, value: link.instcmd(name, value, source="mqtt")) if link else None)
    mqtt = start_mqtt(cfg, core, store.path, **mqtt_args)
    probes.on_change = mqtt.refresh_state if mqtt else None
    probes.start()
    svc.mqtt, svc.probes = mqtt, probes

    def mqtt_on_the_file() -> None:  # the store is on disk again: the link again, with its outbox
        nonlocal mqtt
        if mqtt:
            mqtt.stop()
            mqtt = start_mqtt(cfg, core, cfg.storage.path, **mqtt_args)
            svc.mqtt = mqtt
            probes.on_change = mqtt.refresh_state if mqtt else None
    reopening = _reopen_store_later(cfg, core, mqtt_on_the_file) if store_error else None
    consoles = console.start(cfg, svc)
    systemd = Notifier()  # Type=notify + WatchdogSec (deploy/systemd/siaga-agent.service)
    if systemd.watchdog_s:
        core.set_heartbeat(systemd.watchdog_s, systemd.watchdog)  # beats only while the core turns
    systemd.ready(f"boot {core.boot_no}: {core.controller.state.value}")  # boot reconciled and committed
    _trim_heap()
    try:
        core.run_forever()
    finally:
        systemd.stopping()
        for con in consoles:
            con.stop()
        if reopening:
            reopening.set()
        if mqtt:
            mqtt.stop()  # after the core: its last records (agent_stopping) get a moment to go out
        probes.stop()
        seq.stop()
        if nut:
            nut.stop()
        if link:
            link.stop()
        if ups_sim:
            ups_sim.close()
        if world and world_thread:
            world.stop()
            world_thread.join(timeout=2.0)
        if ctl:
            ctl.close()
        pins.close(release_outputs=False)
        store.close()
