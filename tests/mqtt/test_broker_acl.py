"""The central broker's access rules and ``siaga provision``, against a real Mosquitto 2.

Every broker here loads deploy/mosquitto/acl itself (never a copy of its rules) and a password
file written by agent/mqtt/provision.py (so a real mosquitto proves it accepts our ``$7$`` hashes).
Clients are paho-mqtt 2.x, CallbackAPIVersion.VERSION2, MQTT 5, QoS 1: only MQTT 5 makes a denied
publish visible (PUBACK reason code 135; MQTT 3.1.1 acknowledges it as a success, notes 3.3).
"""

from __future__ import annotations

import base64
import datetime
import grp
import hashlib
import io
import os
import queue
import shutil
import ssl
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

from agent.demo.broker import render
from agent.mqtt import provision
from agent.cli import main as cli_main
from agent.config import MqttConfig
from mosquitto_helpers import Broker, TlsFiles, free_port, require_mosquitto, start_broker
from waiting import until

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "mosquitto"
ACL = DEPLOY / "acl"
SUCCESS = (0, 16)  # 16 "No matching subscribers" is an accepted publish too
NOT_AUTHORIZED = 135
WAIT = 30.0  # for what must come (a CONNACK, PUBACK, message): returns as soon as it does
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"  # Debian package mosquitto


class Probe:
    """A paho client that records what the broker answered: CONNACK, PUBACK and SUBACK reason
    codes and delivered messages (callbacks only record; the test thread waits)."""

    def __init__(self, name: str) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{name}",
                             protocol=mqtt.MQTTv5)
        self.connack: queue.Queue = queue.Queue()
        self.acks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.messages: queue.Queue = queue.Queue()
        self.disconnected = threading.Event()
        self._cv = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = self._on_subscribe

    def _on_connect(self, c, u, flags, rc, props) -> None:
        if rc.is_failure:
            c.disconnect()  # no reconnect attempts: the test looks at this refusal
        self.connack.put((rc.value, flags.session_present))

    def _on_publish(self, c, u, mid, rc, props) -> None:
        with self._cv:
            self.acks[mid] = rc.value
            self._cv.notify_all()

    def _on_subscribe(self, c, u, mid, rcs, props) -> None:
        with self._cv:
            self.subacks[mid] = [r.value for r in rcs]
            self._cv.notify_all()

    def connect(self, port: int, username: str | None = None, password: str | None = None, *,
                ca: Path | None = None, cert: Path | None = None, key: Path | None = None,
                tls: bool = False, clean_start: bool = True, session_expiry_s: int = 0,
                timeout: float = WAIT) -> int | None:
        """CONNACK reason code (0 = accepted; None = no CONNACK within ``timeout``); the network
        loop keeps running when accepted."""
        if username is not None:
            self.c.username_pw_set(username, password)
        if tls or ca is not None:
            self.c.tls_set(ca_certs=str(ca) if ca else None, certfile=str(cert) if cert else None,
                           keyfile=str(key) if key else None)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = session_expiry_s
        self.c.connect("127.0.0.1", port, keepalive=30, clean_start=clean_start, properties=props)
        self.c.loop_start()
        try:
            rc, self.session_present = self.connack.get(timeout=timeout)
        except queue.Empty:  # e.g. the broker closed the TLS connection: no CONNACK at all
            self.close()
            return None
        if rc != 0:
            self.close()
        return rc

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def _wait(self, table: dict, mid: int, what: str):
        with self._cv:
            if not self._cv.wait_for(lambda: mid in table, WAIT):
                pytest.fail(f"no {what} within {WAIT} s")
            return table[mid]

    def publish(self, topic: str, payload: str = "{}", *, retain: bool = False) -> int:
        """QoS 1 publish: the PUBACK reason code."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        return self._wait(self.acks, info.mid, f"PUBACK for {topic}")

    def subscribe(self, topic: str) -> int:
        rc, mid = self.c.subscribe(topic, qos=1)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return self._wait(self.subacks, mid, f"SUBACK for {topic}")[0]

    def receive(self, timeout: float = WAIT) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no message within {timeout} s")

    def topics_until(self, marker: str) -> list[str]:
        """Topics delivered before the message on ``marker``. "Nothing arrives" is proved
        without sleeping: mosquitto handles packets in order on one thread, so once a marker
        published after the PUBACK of the message in question is delivered, that message would
        have been delivered before it."""
        got = []
        while (topic := self.receive().topic) != marker:
            got.append(topic)
        return got


@pytest.fixture(autouse=True)
def _cwd_in_tmp(tmp_path, monkeypatch):
    """`siaga provision` writes ./provisioned/ by default: never into the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def probes():
    made: list[Probe] = []

    def make(name: str) -> Probe:
        made.append(Probe(name))
        return made[-1]

    yield make
    for p in made:  # all at once: each network thread takes up to a second to notice
        p.c.disconnect()
    for p in made:
        p.c.loop_stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> provision.CaFiles:
    """A private CA and a server certificate for 127.0.0.1 (``siaga provision --init-ca``)."""
    d = tmp_path_factory.mktemp("pki") / "ca"
    assert cli_main(["provision", "--init-ca", str(d), "--broker-host", "127.0.0.1",
                     "--broker-host", "localhost"]) == 0
    return provision.CaFiles(d / "ca.crt", d / "ca.key", d / "server.crt", d / "server.key")


class Fleet:
    """Accounts made by agent/mqtt/provision.py: offices sambas and medan, the coordinator central."""

    def __init__(self, d: Path, pki: provision.CaFiles) -> None:
        self.dir, self.pki = d, pki
        self.passwd = d / "passwd"
        self.out = d / "bundles"
        self.passwords: dict[str, str] = {}
        for site in ("sambas", "medan"):
            self.add(site)
        done = provision.provision_coordinator("central", self.passwd, out_dir=self.out,
                                               acl_file=ACL)
        assert done.acl_updated is None  # central is in the deploy ACL already
        self.passwords["central"] = done.password

    def add(self, site: str, **kw) -> provision.Provisioned:
        done = provision.provision_office(site, self.passwd, out_dir=self.out, acl_file=ACL,
                                          broker_host="127.0.0.1", **kw)
        self.passwords[site] = done.password
        return done


@pytest.fixture
def fleet(tmp_path, pki) -> Fleet:
    before = ACL.read_bytes()
    yield Fleet(tmp_path, pki)
    assert ACL.read_bytes() == before, "provisioning must never rewrite deploy/mosquitto/acl"


@pytest.fixture
def central_broker(tmp_path, fleet) -> Broker:
    """Password file from provisioning + deploy/mosquitto/acl, plain and TLS listeners."""
    b = start_broker(tmp_path, anonymous=False, password_file=fleet.passwd, acl_file=ACL,
                     tls=TlsFiles(fleet.pki.ca_cert, fleet.pki.server_cert, fleet.pki.server_key))
    yield b
    b.stop()


def login(make, broker: Broker, fleet: Fleet, user: str, *, tls: bool = False) -> Probe:
    p = make(user)
    port = broker.tls_port if tls else broker.port
    rc = p.connect(port, user, fleet.passwords[user], ca=fleet.pki.ca_cert if tls else None)
    assert rc == 0, f"{user} was refused: CONNACK {rc}\n{broker.log()[-2000:]}"
    return p


# ---- the ACL ----------------------------------------------------------------------------------

OWN_TOPICS = ["siaga/sambas/status", "siaga/sambas/meta", "siaga/sambas/state/mains",
              "siaga/sambas/state/ups", "siaga/sambas/tele", "siaga/sambas/evt/mains_lost",
              "siaga/sambas/res/7f3a"]


def test_office_publishes_its_own_subtree_and_the_coordinator_reads_it(central_broker, fleet,
                                                                        probes):
    central = login(probes, central_broker, fleet, "central")
    assert central.subscribe("siaga/#") == 1  # granted QoS 1
    sambas = login(probes, central_broker, fleet, "sambas")
    for topic in OWN_TOPICS:
        assert sambas.publish(topic, '{"ok": true}') in SUCCESS, topic
    assert [central.receive().topic for _ in OWN_TOPICS] == OWN_TOPICS


@pytest.mark.parametrize("topic", [
    "siaga/medan/state/mains",    # another office's subtree
    "siaga/medan/status",
    "siaga/medan/evt/mains_lost",
    "siaga/sambas/cmd/req",       # its own commands: only the coordinator sends them
    "siaga/medan/cmd/req",
    "siaga/_central/status",      # the coordinator's status
    "siaga/sambas",               # outside the listed branches
    "siaga/sambas/other",
    "homeassistant/device/siaga_sambas/config",  # not fenced by %u: not granted (see the ACL)
])
def test_office_publish_outside_its_branches_is_refused(central_broker, fleet, probes, topic):
    central = login(probes, central_broker, fleet, "central")
    assert central.subscribe("#") == 1
    sambas = login(probes, central_broker, fleet, "sambas")
    assert sambas.publish(topic) == NOT_AUTHORIZED
    assert sambas.publish("siaga/sambas/tele") in SUCCESS
    assert central.topics_until("siaga/sambas/tele") == []
    assert f"Denied PUBLISH from test-sambas" in central_broker.log()


def test_office_cannot_read_another_offices_commands(central_broker, fleet, probes):
    """Mosquitto 2.0.11's acl_file does not refuse a SUBSCRIBE (SUBACK grants QoS 1 even for
    siaga/medan/cmd/#, observed); the read rules are applied to every message it would deliver.
    So the proof is that nothing arrives (a later mosquitto answering 135 would pass too)."""
    sambas = login(probes, central_broker, fleet, "sambas")
    for topic in ("siaga/medan/cmd/#", "siaga/medan/cmd/req", "siaga/+/cmd/req", "siaga/#", "#"):
        assert sambas.subscribe(topic) in (1, NOT_AUTHORIZED), topic
    medan = login(probes, central_broker, fleet, "medan")
    assert medan.subscribe("siaga/medan/cmd/#") == 1
    central = login(probes, central_broker, fleet, "central")
    assert central.publish("siaga/medan/cmd/req", '{"id": "c1"}') == 0
    assert medan.receive().topic == "siaga/medan/cmd/req"
    assert medan.publish("siaga/medan/state/mains") in SUCCESS
    assert central.publish("siaga/_central/status", "{}") in SUCCESS  # sambas may read this
    assert sambas.topics_until("siaga/_central/status") == []  # not medan's command nor state


def test_office_receives_its_commands_and_the_coordinator_status(central_broker, fleet, probes):
    central = login(probes, central_broker, fleet, "central")
    assert central.publish("siaga/_central/status", '{"online": true}', retain=True) in SUCCESS
    sambas = login(probes, central_broker, fleet, "sambas")
    assert sambas.subscribe("siaga/sambas/cmd/#") == 1
    assert sambas.subscribe("siaga/_central/#") == 1
    m = sambas.receive()
    assert (m.topic, m.payload, m.retain) == ("siaga/_central/status", b'{"online": true}', True)
    assert central.publish("siaga/sambas/cmd/req", '{"id": "c2", "op": "rebirth"}') == 0
    m = sambas.receive()
    assert (m.topic, m.payload) == ("siaga/sambas/cmd/req", b'{"id": "c2", "op": "rebirth"}')
    assert sambas.publish("siaga/sambas/res/c2", '{"id": "c2", "status": "done"}') in SUCCESS


def test_taking_over_another_offices_client_id_reveals_no_commands(central_broker, fleet,
                                                                  probes):
    """Without use_username_as_clientid (this fixture's broker), nothing binds a client id to a
    username: sambas's credentials connect as medan's client id, close medan's connection and
    resume its session. The read rules still apply to the new user: the command queued in that
    session is not delivered to sambas. The deploy config closes the takeover itself (next test)."""
    medan = probes("medan")
    medan.c._client_id = b"siaga-medan-agent"
    assert medan.connect(central_broker.port, "medan", fleet.passwords["medan"],
                         clean_start=False, session_expiry_s=3600) == 0
    assert medan.subscribe("siaga/medan/cmd/#") == 1
    medan.close()
    central = login(probes, central_broker, fleet, "central")
    assert central.publish("siaga/medan/cmd/req", '{"id": "secret"}') == 0  # queued for medan
    thief = probes("thief")
    thief.c._client_id = b"siaga-medan-agent"
    assert thief.connect(central_broker.port, "sambas", fleet.passwords["sambas"],
                         clean_start=False, session_expiry_s=3600) == 0
    assert thief.session_present  # medan's session, subscriptions and queue included
    assert thief.subscribe("siaga/_central/#") == 1
    assert central.publish("siaga/_central/status", "{}") in SUCCESS
    assert thief.topics_until("siaga/_central/status") == []


def test_deploy_conf_binds_the_client_id_to_the_account(tmp_path, fleet, probes):
    """deploy/mosquitto/siaga.conf (use_username_as_clientid): an office using another office's
    client id gets a session of its own; the victim stays connected and gets its commands."""
    require_mosquitto()
    root = Path(tempfile.mkdtemp(prefix="siaga-broker-"))
    try:
        plain, tls = two_ports()
        b = Broker(render_deploy_conf(root, fleet, plain, tls), plain, tls)
        b.start()
        with b:
            medan = probes("medan")
            medan.c._client_id = b"siaga-medan-agent"
            assert medan.connect(tls, "medan", fleet.passwords["medan"], ca=fleet.pki.ca_cert,
                                 clean_start=False, session_expiry_s=3600) == 0
            assert medan.subscribe("siaga/medan/cmd/#") == 1
            thief = probes("thief")
            thief.c._client_id = b"siaga-medan-agent"
            assert thief.connect(tls, "sambas", fleet.passwords["sambas"], ca=fleet.pki.ca_cert,
                                 clean_start=False, session_expiry_s=3600) == 0
            assert not thief.session_present  # not medan.s session
            central = login(probes, b, fleet, "central")
            assert central.publish("siaga/medan/cmd/req", '{"id": "for-medan"}') == 0
            assert medan.receive().payload == b'{"id": "for-medan"}'  # still connected
            assert not medan.disconnected.is_set()
            # A message over max_packet_size (64 KiB) disconnects its sender; 60 KiB is accepted.
            assert medan.publish("siaga/medan/tele", "x" * 60_000) in SUCCESS
            medan.c.publish("siaga/medan/tele", b"x" * 70_000, qos=1)
            assert medan.disconnected.wait(WAIT)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_coordinator_cannot_forge_what_an_office_reports(central_broker, fleet, probes):
    central = login(probes, central_broker, fleet, "central")
    for topic in ("siaga/sambas/state/mains", "siaga/sambas/status", "siaga/sambas/evt/x",
                  "siaga/sambas/cmd/other", "homeassistant/device/siaga_sambas/config"):
        assert central.publish(topic) == NOT_AUTHORIZED, topic


@pytest.mark.parametrize("who", ["anonymous", "wrong password", "unknown user",
                                 "another office's password"])
def test_anonymous_and_wrong_password_are_refused(central_broker, fleet, probes, who):
    user, password = {"anonymous": (None, None),
                      "wrong password": ("sambas", "not-the-password"),
                      "unknown user": ("jakarta", fleet.passwords["sambas"]),
                      "another office's password": ("sambas", fleet.passwords["medan"])}[who]
    assert probes(who.replace(" ", "-")).connect(central_broker.port, user, password) \
        == NOT_AUTHORIZED


# ---- TLS --------------------------------------------------------------------------------------

def test_tls_listener_with_a_private_ca(central_broker, fleet, probes):
    sambas = login(probes, central_broker, fleet, "sambas", tls=True)
    assert sambas.publish("siaga/sambas/status", '{"online": true}') in SUCCESS
    assert sambas.publish("siaga/medan/status") == NOT_AUTHORIZED  # same rules over TLS
    # Without the private CA the client rejects the server's certificate.
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        probes("no-ca").connect(central_broker.tls_port, "sambas", fleet.passwords["sambas"],
                                tls=True)
    # A CA that did not sign the server certificate is no better.
    other = provision.init_ca(fleet.dir / "other-ca", ["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError):
        probes("wrong-ca").connect(central_broker.tls_port, "sambas", fleet.passwords["sambas"],
                                   ca=other.ca_cert)


# ---- siaga provision: the bundle works ---------------------------------------------------------

def client_from_bundle(make, bundle: Path, site: str, port: int) -> tuple[Probe, int]:
    """Connect the way an agent reads its config: the mqtt: section of mqtt.yaml, username =
    site id, password from password_file, TLS files from tls:."""
    cfg = MqttConfig.model_validate(yaml.safe_load((bundle / "mqtt.yaml").read_text())["mqtt"])
    assert cfg.enabled and cfg.username is None and cfg.host == "127.0.0.1"
    password = Path(cfg.password_file).read_text().strip()
    p = make(f"bundle-{site}")
    tls = cfg.tls
    return p, p.connect(port, site, password, ca=Path(tls.ca_file),
                        cert=tls.cert_file and Path(tls.cert_file),
                        key=tls.key_file and Path(tls.key_file))


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    from agent.cli import build_parser
    from agent.mqtt.provision import main as provision_main
    args = build_parser().parse_args(["provision", *argv])
    return provision_main(args, out, err), out.getvalue(), err.getvalue()


def test_provisioned_office_with_certificate_connects(tmp_path, fleet, probes):
    """`siaga provision SITE --ca-cert --ca-key` -> a bundle that passes a broker that requires
    a client certificate signed by the CA, and the account's ACL is the site's."""
    pki = fleet.pki
    rc, out, err = run_cli("kapuas", "--password-file", str(fleet.passwd), "--acl-file", str(ACL),
                           "--out", str(tmp_path / "out"), "--broker-host", "127.0.0.1",
                           "--ca-cert", str(pki.ca_cert), "--ca-key", str(pki.ca_key),
                           "--pi-dir", str(tmp_path / "out" / "kapuas"))
    assert (rc, err) == (0, "")
    bundle = tmp_path / "out" / "kapuas"
    password = (bundle / "mqtt.password").read_text().strip()
    assert len(password) >= 40 and password not in out  # printed only with --show-password
    b = start_broker(tmp_path, anonymous=False, password_file=fleet.passwd, acl_file=ACL,
                     tls=TlsFiles(pki.ca_cert, pki.server_cert, pki.server_key,
                                  require_certificate=True))
    with b:
        kapuas, rc = client_from_bundle(probes, bundle, "kapuas", b.tls_port)
        assert rc == 0, b.log()[-2000:]
        assert kapuas.publish("siaga/kapuas/status", '{"online": true}') in SUCCESS
        assert kapuas.publish("siaga/sambas/status") == NOT_AUTHORIZED
        # The same password without the client certificate: the broker ends the TLS handshake
        # (tls_version tlsv1.2), so there is no CONNACK at all, or the handshake raises.
        try:
            rc = probes("kapuas-no-cert").connect(b.tls_port, "kapuas", password, ca=pki.ca_cert,
                                                  timeout=1.0)
        except (ssl.SSLError, OSError):
            rc = None
        assert rc is None
        until("the broker's log line", lambda: "peer did not return a certificate" in b.log())  # written after the alert
    # The certificate says who it is for.
    from cryptography import x509
    cert = x509.load_pem_x509_certificate((bundle / "mqtt-client.crt").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=kapuas"
    assert x509.ExtendedKeyUsageOID.CLIENT_AUTH in \
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()))


def test_certificate_cn_is_the_mqtt_identity(tmp_path, fleet, probes):
    """mTLS without passwords (use_identity_as_username): the CN = site id is the ACL's %u."""
    pki = fleet.pki
    fleet.add("ketapang", ca_cert=pki.ca_cert, ca_key=pki.ca_key)
    bundle = fleet.out / "ketapang"
    b = start_broker(tmp_path, anonymous=False, password_file=fleet.passwd, acl_file=ACL,
                     tls=TlsFiles(pki.ca_cert, pki.server_cert, pki.server_key,
                                  require_certificate=True, use_identity_as_username=True))
    with b:
        p = probes("ketapang-mtls")
        assert p.connect(b.tls_port, ca=pki.ca_cert, cert=bundle / "mqtt-client.crt",
                         key=bundle / "mqtt-client.key") == 0
        assert p.publish("siaga/ketapang/tele") in SUCCESS
        assert p.publish("siaga/sambas/tele") == NOT_AUTHORIZED


def test_rotate_invalidates_the_old_password(central_broker, fleet, probes):
    old = fleet.passwords["sambas"]
    sambas = login(probes, central_broker, fleet, "sambas")
    rc, out, err = run_cli("sambas", "--password-file", str(fleet.passwd), "--acl-file", str(ACL),
                           "--out", str(fleet.out), "--rotate", "--show-password")
    assert rc == 0, err
    new = (fleet.out / "sambas" / "mqtt.password").read_text().strip()
    assert new != old and f"password: {new}" in out  # asked for with --show-password
    central_broker.reload()
    # mosquitto re-checks connected clients on reload: the old session is thrown out ...
    assert sambas.disconnected.wait(WAIT)
    assert probes("sambas-old").connect(central_broker.port, "sambas", old) == NOT_AUTHORIZED
    assert probes("sambas-new").connect(central_broker.port, "sambas", new) == 0
    assert probes("medan").connect(central_broker.port, "medan", fleet.passwords["medan"]) == 0


def test_revoke_removes_the_account(central_broker, fleet, probes):
    medan = login(probes, central_broker, fleet, "medan")
    rc, out, err = run_cli("medan", "--password-file", str(fleet.passwd), "--revoke")
    assert rc == 0 and "medan: account removed" in out, err
    assert "medan:" not in fleet.passwd.read_text()
    central_broker.reload()
    assert medan.disconnected.wait(WAIT)  # thrown out at the reload, not at its next connect
    assert probes("medan").connect(central_broker.port, "medan",
                                   fleet.passwords["medan"]) == NOT_AUTHORIZED
    assert probes("sambas").connect(central_broker.port, "sambas",
                                    fleet.passwords["sambas"]) == 0


@pytest.mark.parametrize("site", ["Sambas", "s", "_central", "sambas/cmd", "+", "#", "a:b",
                                  "x" * 64, "sam bas"])
def test_bad_site_id_is_a_clear_error_and_writes_nothing(tmp_path, site):
    passwd = tmp_path / "passwd"
    rc, out, err = run_cli(site, "--password-file", str(passwd), "--out", str(tmp_path / "out"))
    assert rc == 1 and out == ""
    assert f"invalid site id {site!r}" in err and "site.id" in err
    assert not passwd.exists() and not (tmp_path / "out").exists()


def test_existing_site_needs_rotate_and_names_are_not_shared(fleet):
    before = fleet.passwd.read_bytes()
    rc, out, err = run_cli("sambas", "--password-file", str(fleet.passwd), "--acl-file", str(ACL))
    assert rc == 1 and "already has an account" in err and "--rotate" in err
    rc, out, err = run_cli("central", "--password-file", str(fleet.passwd), "--acl-file", str(ACL))
    assert rc == 1 and "coordinator" in err  # an office cannot take the coordinator's name
    rc, out, err = run_cli("--coordinator", "medan", "--password-file", str(fleet.passwd),
                           "--acl-file", str(ACL))
    assert rc == 1 and "office" in err
    rc, out, err = run_cli("pontianak", "--password-file", str(fleet.passwd), "--rotate")
    assert rc == 1 and "has no account" in err
    assert fleet.passwd.read_bytes() == before


def test_another_coordinator_name_gets_the_coordinators_rules(tmp_path, fleet, probes):
    acl = tmp_path / "acl"
    shutil.copy2(ACL, acl)
    rc, out, err = run_cli("--coordinator", "hq", "--password-file", str(fleet.passwd),
                           "--acl-file", str(acl), "--out", str(tmp_path / "out"))
    assert rc == 0, err
    added = acl.read_text().removeprefix(ACL.read_text().rstrip("\n"))
    assert "user hq\ntopic read siaga/#\n" in added
    assert provision.acl_blocks(acl.read_text())["hq"] == provision.acl_blocks(ACL.read_text())[
        "central"]
    hq_password = (tmp_path / "out" / "hq" / "mqtt.password").read_text().strip()
    with start_broker(tmp_path, anonymous=False, password_file=fleet.passwd, acl_file=acl) as b:
        hq = probes("hq")
        assert hq.connect(b.port, "hq", hq_password) == 0
        assert hq.subscribe("siaga/#") == 1
        sambas = login(probes, b, fleet, "sambas")
        assert sambas.subscribe("siaga/sambas/cmd/#") == 1
        assert hq.publish("siaga/sambas/cmd/req", '{"id": "h1"}') == 0
        assert sambas.receive().payload == b'{"id": "h1"}'
        assert sambas.publish("siaga/sambas/state/mains") in SUCCESS
        assert [hq.receive().topic for _ in range(2)] == ["siaga/sambas/cmd/req",
                                                          "siaga/sambas/state/mains"]
        assert hq.publish("siaga/sambas/state/mains") == NOT_AUTHORIZED
    # Again: the block is there, nothing is added twice.
    rc, out, err = run_cli("--coordinator", "hq", "--rotate", "--password-file", str(fleet.passwd),
                           "--acl-file", str(acl), "--out", str(tmp_path / "out"))
    assert rc == 0 and acl.read_text().count("user hq") == 1


def test_file_permissions(tmp_path):
    passwd = tmp_path / "passwd"
    out = tmp_path / "out"
    provision.provision_office("sambas", passwd, out_dir=out)
    bundle = out / "sambas"
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)
    assert mode(bundle) == 0o700
    assert mode(bundle / "mqtt.password") == 0o600
    if os.geteuid() == 0:  # the broker reads it after dropping to user mosquitto
        assert (mode(passwd), passwd.stat().st_uid) == (0o640, 0)
        assert passwd.stat().st_gid == grp.getgrnam("mosquitto").gr_gid
    else:
        assert mode(passwd) == 0o600
    os.chmod(passwd, 0o600)  # an existing file keeps the mode the operator gave it
    provision.provision_office("medan", passwd, out_dir=out)
    assert mode(passwd) == 0o600
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")] == []


def test_init_ca_again_keeps_the_ca_and_renews_the_server_certificate(tmp_path):
    from cryptography import x509
    d = tmp_path / "ca"
    first = provision.init_ca(d, ["mqtt.example", "10.1.2.3"])
    ca, server = first.ca_cert.read_bytes(), first.server_cert.read_bytes()
    assert stat.S_IMODE(first.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(first.server_key.stat().st_mode) == 0o600
    again = provision.init_ca(d, ["mqtt.example"])
    assert again.ca_cert.read_bytes() == ca and again.server_cert.read_bytes() != server
    cert = x509.load_pem_x509_certificate(server)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mqtt.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    # Backdated a day: a Pi without RTC that boots with an old saved time still accepts it.
    age = datetime.datetime.now(datetime.timezone.utc) - cert.not_valid_before_utc
    assert age > datetime.timedelta(hours=23)
    ca_cert = x509.load_pem_x509_certificate(ca)
    for crt in (first.server_cert, again.server_cert):
        x509.load_pem_x509_certificate(crt.read_bytes()).verify_directly_issued_by(ca_cert)
    first.ca_key.unlink()
    with pytest.raises(provision.ProvisionError, match="only one of ca.crt and ca.key"):
        provision.init_ca(d, ["mqtt.example"])


def test_encrypted_ca_key_asks_for_its_passphrase(tmp_path, pki, monkeypatch):
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    enc = tmp_path / "ca-enc.key"
    enc.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(b"pass phrase")))
    kw = dict(out_dir=tmp_path / "out", ca_cert=pki.ca_cert, ca_key=enc)
    monkeypatch.setattr("sys.stdin", io.StringIO())  # no terminal: refuse, never hang
    with pytest.raises(provision.ProvisionError, match="encrypted: run on a terminal"):
        provision.provision_office("sambas", tmp_path / "passwd", **kw)
    assert not (tmp_path / "passwd").exists()
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("getpass.getpass", lambda prompt: "pass phrase")
    provision.provision_office("sambas", tmp_path / "passwd", **kw)
    assert (tmp_path / "out" / "sambas" / "mqtt-client.crt").exists()


# ---- the password hash ------------------------------------------------------------------------

def test_hash_format_is_mosquittos(tmp_path):
    require_mosquitto()
    # Ours: $7$101$<12-byte salt>$<64-byte PBKDF2-HMAC-SHA512>, standard base64 with padding.
    h = provision.mosquitto_hash("secret", salt=bytes(range(12)))
    kind, iterations, salt, dk = h.split("$")[1:]
    assert (kind, iterations, base64.b64decode(salt)) == ("7", "101", bytes(range(12)))
    assert base64.b64decode(dk) == hashlib.pbkdf2_hmac("sha512", b"secret", bytes(range(12)), 101)
    # mosquitto_passwd's own hash is checked by our reading of the format.
    pw = tmp_path / "pw"
    subprocess.run([MOSQUITTO_PASSWD, "-c", "-b", str(pw), "alice", "s3cret"], check=True)
    theirs = pw.read_text().strip().split(":", 1)[1]
    assert theirs.startswith("$7$101$")
    assert provision.check_mosquitto_hash("s3cret", theirs)
    assert not provision.check_mosquitto_hash("s3creT", theirs)
    assert provision.check_mosquitto_hash("s3cret", provision.mosquitto_hash("s3cret"))


# ---- the deploy config itself: production layout, persistence, limits ---------------------------

def two_ports() -> tuple[int, int]:
    """Two different free loopback ports (the OS may hand the same free port out twice in a row)."""
    plain, tls = free_port(), free_port()
    while tls == plain:
        tls = free_port()
    return plain, tls


def render_deploy_conf(root: Path, fleet: Fleet, plain_port: int, tls_port: int) -> Path:
    """deploy/mosquitto/siaga.conf in a Debian-like layout under ``root`` with only its paths and
    ports replaced, by the code ``siaga demo`` uses (agent/demo/broker.py): the broker drops root to
    user mosquitto, as it does in production. Returns the directory of its mosquitto.conf."""
    return render(root, passwd=fleet.passwd, ca_cert=fleet.pki.ca_cert, server_cert=fleet.pki.server_cert,
                  server_key=fleet.pki.server_key, plain_port=plain_port, tls_port=tls_port).parent


def test_deploy_conf_keeps_office_sessions_across_a_restart(tmp_path, fleet, probes):
    require_mosquitto()
    # A world-traversable directory: the broker runs as user mosquitto, like in production.
    root = Path(tempfile.mkdtemp(prefix="siaga-broker-"))
    try:
        plain, tls = two_ports()
        b = Broker(render_deploy_conf(root, fleet, plain, tls), plain, tls)
        b.start()
        with b:
            if os.geteuid() == 0:
                assert "Error" not in b.log(), b.log()
            # The office (TLS) makes a persistent session and subscribes to its commands.
            office = probes("sambas-1")
            assert office.connect(tls, "sambas", fleet.passwords["sambas"], ca=fleet.pki.ca_cert,
                                  clean_start=False, session_expiry_s=7 * 86400) == 0
            assert office.subscribe("siaga/sambas/cmd/#") == 1
            office.close()
            b.stop()  # the broker goes down and comes back
            b.start()
            central = login(probes, b, fleet, "central")  # plain loopback listener
            assert central.publish("siaga/sambas/cmd/req", '{"id": "c9"}') == 0  # queued
            office = probes("sambas-1")
            assert office.connect(tls, "sambas", fleet.passwords["sambas"], ca=fleet.pki.ca_cert,
                                  clean_start=False, session_expiry_s=7 * 86400) == 0
            assert office.session_present
            assert office.receive().payload == b'{"id": "c9"}'
            # max_packet_size: an oversized message disconnects the sender.
            office.c.publish("siaga/sambas/tele", b"x" * 70_000, qos=1)
            assert office.disconnected.wait(WAIT)
            # allow_anonymous false holds for every listener (per_listener_settings false).
            assert probes("anon").connect(plain) == NOT_AUTHORIZED
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---- tests/support/mosquitto_helpers.py itself ----------------------------------------------------------

def test_broker_fixture_stops_and_starts_on_the_same_port(broker, probes):
    assert probes("anon-1").connect(broker.port) == 0  # anonymous, plain
    port = broker.port
    broker.stop()
    with pytest.raises(ConnectionRefusedError):
        probes("anon-2").connect(port)
    broker.start()
    assert broker.port == port and probes("anon-3").connect(port) == 0
    assert broker.log().count("mosquitto version 2.") >= 4  # "starting" and "running", twice


def test_a_broker_that_cannot_start_fails_with_its_log(tmp_path):
    with pytest.raises(pytest.fail.Exception) as e:
        start_broker(tmp_path, extra_conf="no_such_option true")
    assert "exited with status" in str(e.value) and "no_such_option" in str(e.value)
