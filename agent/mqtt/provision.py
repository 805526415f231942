"""``siaga provision``: accounts on the central Mosquitto broker (docs/broker.md).

* ``siaga provision SITE --password-file PASSWD``: adds an office. The MQTT username is the site
  id (docs/mqtt.md; agent/wire.py), checked by the very validator of ``site.id`` in
  agent/config.py. A random password (256 bits) is hashed into PASSWD in Mosquitto 2.0's own
  format, so provisioning needs no mosquitto installed. The office's bundle (``--out``) holds
  what goes to its Pi: ``mqtt.password`` (0600), ``mqtt.yaml`` (the ``mqtt:`` section of its site
  config, validated against ``MqttConfig``), ``ca.crt`` and, with ``--ca-key``, a client
  certificate whose CN is the site id. ``--rotate`` replaces a password, ``--revoke`` removes
  the account.
* ``siaga provision --coordinator NAME``: the coordinator's account, and its ``user NAME`` block
  in the ACL file.
* ``siaga provision --init-ca DIR --broker-host H``: a private CA (kept when DIR has one) and a
  new server certificate for the broker.

Password hash (verified against mosquitto_passwd 2.0.11 and a running mosquitto 2.0.11, see
tests/mqtt/test_broker_acl.py): ``USER:$7$ITER$SALT$HASH`` with SALT = base64 of 12 random bytes,
HASH = base64 of PBKDF2-HMAC-SHA512(password, raw salt bytes, ITER), 64 bytes, standard base64
with padding. ITER is 101, mosquitto_passwd's own count: the broker computes it on every CONNECT
(thousands of offices reconnect at once after a regional outage) and a 256-bit random password
cannot be guessed whatever the count. ``$7$`` is read by mosquitto 2.0 and 2.1 alike (2.1's
mosquitto_passwd defaults to argon2id, which 2.0 cannot read).

Certificates are made with ``cryptography`` rather than the openssl CLI: keys are generated in
process and written once with 0600 (never on a command line or in a temporary file), the
extensions are exact and checked by tests, and the same code makes the tests' CA. Keys are EC
P-256 (small and fast on a Pi). ``not_valid_before`` is backdated a day: a Pi without an RTC
boots with the time it last saved, and must still accept a server certificate renewed since.

Security: secrets are written atomically (temporary file in the same directory, created 0600,
fsync, rename); an existing password or ACL file keeps its mode and owner, a new password file
is ``root:mosquitto 0640`` when run as root (mosquitto 2.0 drops to user ``mosquitto`` before
reading it; verified: a root-only file makes it exit) and 0600 otherwise. The password is printed
only with ``--show-password``. Everything is checked before anything is written, and the broker's
password file is written last, so a failure never leaves an account whose password nobody has.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import getpass
import grp
import hashlib
import hmac
import ipaddress
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
PASSWORD_BYTES = 32
DEFAULT_COORDINATOR = "central"
CERT_DAYS = 3 * 365
CA_DAYS = 20 * 365
BACKDATE = datetime.timedelta(days=1)
PI_DIR = "/etc/siaga"  # where the bundle's files go on the Pi (firmware_config/site-example.yaml)
PASSWORD_NAME = "mqtt.password"
CA_NAME = "ca.crt"
CLIENT_CERT_NAME = "mqtt-client.crt"
CLIENT_KEY_NAME = "mqtt-client.key"
SNIPPET_NAME = "mqtt.yaml"


class ProvisionError(Exception):
    """A problem the operator can fix; the message says how."""


# ---- names and hashes -----------------------------------------------------------------------

def check_name(name: str, what: str = "site id") -> str:
    """``name`` if it is a valid site id (the ``site.id`` rule of agent/config.py, which also
    keeps ``+ # / :`` and the reserved ``_central`` out of usernames and topics)."""
    from pydantic import ValidationError

    from agent.config import SiteInfo  # late, like every import here: `siaga --help` stays quick

    try:
        SiteInfo.__pydantic_validator__.validate_assignment(SiteInfo.model_construct(), "id", name)
    except ValidationError as e:
        raise ProvisionError(f"invalid {what} {name!r}: {e.errors()[0]['msg']} "
                             "(the rule of site.id in the site config)") from None
    return name


def mosquitto_hash(password: str, *, salt: bytes | None = None,
                   iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto 2.0's ``$7$`` (PBKDF2-HMAC-SHA512) hash of ``password``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def check_mosquitto_hash(password: str, hashed: str) -> bool:
    """True when ``hashed`` (``$7$...``) is the hash of ``password``."""
    try:
        _, kind, iterations, salt, dk = hashed.split("$")
        if kind != "7":
            return False
        want = base64.b64decode(dk, validate=True)
        raw_salt = base64.b64decode(salt, validate=True)
        got = hashlib.pbkdf2_hmac("sha512", password.encode(), raw_salt, int(iterations))
    except ValueError:  # wrong shape, bad base64 (binascii.Error), bad count
        return False
    return hmac.compare_digest(got, want)


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)  # 43 characters of [A-Za-z0-9_-]


# ---- files ------------------------------------------------------------------------------------

def write_private(path: Path, data: bytes, mode: int = 0o600, *,
                  like: os.stat_result | None = None) -> None:
    """Replace ``path`` atomically with ``data``; the file never exists with looser permissions
    than ``mode``. ``like``: keep that mode and owner instead (an existing file's)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            if like is not None:
                if os.geteuid() == 0:
                    os.fchown(f.fileno(), like.st_uid, like.st_gid)
                mode = like.st_mode & 0o777
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


class PasswordFile:
    """A Mosquitto password file (``user:hash`` lines); other lines are kept as they are."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.stat = _stat(self.path)
        if self.stat is None and not self.path.parent.is_dir():
            raise ProvisionError(f"{self.path.parent} does not exist (password file {self.path})")
        try:
            text = self.path.read_text() if self.stat is not None else ""
        except (OSError, UnicodeDecodeError) as e:
            raise ProvisionError(f"cannot read the password file {self.path}: {e}") from None
        self.lines = text.splitlines()

    def _index(self, user: str) -> int | None:
        for i, line in enumerate(self.lines):
            if not line.startswith("#") and line.partition(":")[0] == user:
                return i
        return None

    def __contains__(self, user: str) -> bool:
        return self._index(user) is not None

    def hash_of(self, user: str) -> str | None:
        i = self._index(user)
        return None if i is None else self.lines[i].partition(":")[2]

    def set(self, user: str, hashed: str) -> None:
        i = self._index(user)
        if i is None:
            self.lines.append(f"{user}:{hashed}")
        else:
            self.lines[i] = f"{user}:{hashed}"

    def remove(self, user: str) -> None:
        i = self._index(user)
        if i is not None:
            del self.lines[i]

    def save(self) -> None:
        data = ("\n".join(self.lines) + "\n").encode() if self.lines else b""
        if self.stat is not None:
            write_private(self.path, data, like=self.stat)
            return
        write_private(self.path, data, 0o600)
        if os.geteuid() == 0:  # the broker reads it as user mosquitto
            try:
                gid = grp.getgrnam("mosquitto").gr_gid
            except KeyError:
                return
            os.chown(self.path, 0, gid)
            os.chmod(self.path, 0o640)


def acl_blocks(acl_text: str) -> dict[str, list[str]]:
    """The users with their own block in an ACL file (the coordinators): name -> its ``topic``
    lines (those after ``user NAME`` up to the next ``user``; ``pattern`` lines are global)."""
    blocks: dict[str, list[str]] = {}
    rules: list[str] | None = None
    for line in acl_text.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "user":
            rules = blocks.setdefault(words[1], [])
        elif rules is not None and words[:1] == ["topic"]:
            rules.append(" ".join(words))
    return blocks


def _acl_path(acl_file: Path | None, password_file: Path) -> Path | None:
    if acl_file is not None:
        if not Path(acl_file).is_file():
            raise ProvisionError(f"ACL file {acl_file} does not exist")
        return Path(acl_file)
    beside = Path(password_file).with_name("acl")  # deploy/mosquitto layout: passwd + acl
    return beside if beside.is_file() else None


def _coordinators(acl: Path | None) -> set[str]:
    return set(acl_blocks(acl.read_text())) if acl is not None else {DEFAULT_COORDINATOR}


# ---- certificates -----------------------------------------------------------------------------

def _x509():  # imported late: only the central host's provisioning needs cryptography
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise ProvisionError("certificates need the Python package cryptography: "
                             "pip install -e '.[central]'") from None
    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def _key_pem(key) -> bytes:
    _, _, serialization, *_ = _x509()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _sign(subject_cn: str, public_key, issuer_name, issuer_key, days: int, *, ca: bool = False,
          server_names: list[str] = (), client: bool = False, issuer_cert=None):
    x509, hashes, serialization, ec, EKU, NameOID = _x509()
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    b = (x509.CertificateBuilder().subject_name(subject)
         .issuer_name(issuer_name if issuer_name is not None else subject)
         .public_key(public_key).serial_number(x509.random_serial_number())
         .not_valid_before(now - BACKDATE).not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
         .add_extension(x509.KeyUsage(
             digital_signature=not ca, content_commitment=False, key_encipherment=False,
             data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
             encipher_only=False, decipher_only=False), critical=True))
    if issuer_cert is not None:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                            critical=False)
    if server_names:
        sans = []
        for n in server_names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([EKU.SERVER_AUTH]), critical=False)
    if client:
        b = b.add_extension(x509.ExtendedKeyUsage([EKU.CLIENT_AUTH]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _read_ca_cert(ca_cert: Path):
    x509 = _x509()[0]
    try:
        return x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
    except (OSError, ValueError) as e:
        raise ProvisionError(f"cannot read the CA certificate {ca_cert}: {e}") from None


def _load_ca(ca_cert: Path, ca_key: Path):
    serialization = _x509()[2]
    cert = _read_ca_cert(ca_cert)
    try:
        data = Path(ca_key).read_bytes()
    except OSError as e:
        raise ProvisionError(f"cannot read the CA key {ca_key}: {e}") from None
    try:
        key = serialization.load_pem_private_key(data, None)
    except TypeError:  # encrypted: ask, never take it from argv or the environment
        if not sys.stdin.isatty():
            raise ProvisionError(f"the CA key {ca_key} is encrypted: run on a terminal") from None
        key = serialization.load_pem_private_key(
            data, getpass.getpass(f"passphrase for {ca_key}: ").encode())
    except ValueError as e:
        raise ProvisionError(f"cannot read the CA key {ca_key}: {e}") from None
    if key.public_key().public_bytes(serialization.Encoding.DER,
                                     serialization.PublicFormat.SubjectPublicKeyInfo) != \
            cert.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo):
        raise ProvisionError(f"{ca_key} is not the key of {ca_cert}")
    return cert, key


def issue_cert(ca_cert: Path, ca_key: Path, cn: str, *, days: int = CERT_DAYS,
               server_names: list[str] = ()) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) signed by the CA: a client certificate (CN = ``cn``), or with
    ``server_names`` a server certificate for those DNS names / IP addresses."""
    x509, hashes, serialization, ec, *_ = _x509()
    cert, key = _load_ca(ca_cert, ca_key)
    new_key = ec.generate_private_key(ec.SECP256R1())
    new = _sign(cn, new_key.public_key(), cert.subject, key, days, server_names=list(server_names),
                client=not server_names, issuer_cert=cert)
    return new.public_bytes(serialization.Encoding.PEM), _key_pem(new_key)


@dataclass
class CaFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def init_ca(out_dir: Path, broker_hosts: list[str], *, name: str = "Siaga MQTT CA",
            days: int = CA_DAYS, server_days: int = CERT_DAYS) -> CaFiles:
    """A private CA (unless ``out_dir`` holds one: it is kept, every office trusts it) and a new
    server certificate for the broker, signed by it (so running it again renews that one)."""
    x509, hashes, serialization, ec, *_ = _x509()
    if not broker_hosts:
        raise ProvisionError("--init-ca needs --broker-host (the names the offices connect to)")
    out_dir = Path(out_dir)
    files = CaFiles(out_dir / "ca.crt", out_dir / "ca.key", out_dir / "server.crt",
                    out_dir / "server.key")
    if files.ca_cert.exists() != files.ca_key.exists():
        raise ProvisionError(f"{out_dir} holds only one of ca.crt and ca.key")
    if not files.ca_cert.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _sign(name, key.public_key(), None, key, days, ca=True)
        write_private(files.ca_key, _key_pem(key), 0o600)
        write_private(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    crt, k = issue_cert(files.ca_cert, files.ca_key, broker_hosts[0], days=server_days,
                        server_names=broker_hosts)
    write_private(files.server_key, k, 0o600)
    write_private(files.server_cert, crt, 0o644)
    return files


# ---- provisioning -----------------------------------------------------------------------------

@dataclass
class Provisioned:
    name: str
    password: str | None  # None for --revoke
    password_file: Path
    bundle: Path | None = None
    written: list[Path] = field(default_factory=list)
    acl_updated: Path | None = None

    def put(self, path: Path, data: bytes, mode: int) -> None:
        write_private(path, data, mode)
        self.written.append(path)


def _bundle(name: str, password_file: Path, out_dir: Path) -> Provisioned:
    """A new password and the bundle directory (0700) holding it (0600)."""
    bundle = Path(out_dir) / name
    bundle.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(bundle, 0o700)  # also when it existed
    done = Provisioned(name, new_password(), Path(password_file), bundle)
    done.put(bundle / PASSWORD_NAME, (done.password + "\n").encode(), 0o600)
    return done


def _snippet(site: str, host: str, port: int, pi_dir: str, ca: bool, cert: bool) -> str:
    import yaml

    from agent.config import MqttConfig

    pi = pi_dir.rstrip("/")
    mqtt: dict = {"enabled": True, "host": host, "port": port}
    if ca or cert:
        tls: dict = {}
        if ca:
            tls["ca_file"] = f"{pi}/{CA_NAME}"
        if cert:
            tls["cert_file"] = f"{pi}/{CLIENT_CERT_NAME}"
            tls["key_file"] = f"{pi}/{CLIENT_KEY_NAME}"
        mqtt["tls"] = tls
    mqtt["password_file"] = f"{pi}/{PASSWORD_NAME}"
    MqttConfig.model_validate(mqtt)  # the snippet is always a valid mqtt: section
    return (f"# mqtt: section for site {site} (written by siaga provision). The MQTT username is "
            f"the site id.\n# Copy the bundle's files to {pi}/ on the Pi: {PASSWORD_NAME} and "
            f"{CLIENT_KEY_NAME} with mode 0600.\n"
            + yaml.safe_dump({"mqtt": mqtt}, sort_keys=False))


def _check_account(pw: PasswordFile, name: str, rotate: bool) -> None:
    if name in pw and not rotate:
        raise ProvisionError(f"{name!r} already has an account in {pw.path}: use --rotate to give "
                             "it a new password (the old one stops working)")
    if rotate and name not in pw:
        raise ProvisionError(f"--rotate: {name!r} has no account in {pw.path}")


def provision_office(site: str, password_file: Path, *, out_dir: Path, rotate: bool = False,
                     broker_host: str = "localhost", broker_port: int = 8883,
                     ca_cert: Path | None = None, ca_key: Path | None = None,
                     cert_dir: Path | None = None, cert_days: int = CERT_DAYS,
                     acl_file: Path | None = None, pi_dir: str = PI_DIR) -> Provisioned:
    check_name(site)
    acl = _acl_path(acl_file, password_file)
    if site in _coordinators(acl):
        raise ProvisionError(f"{site!r} is a coordinator account (user {site} in "
                             f"{acl or 'the default ACL'}), not a site id an office may use")
    if ca_key is not None and ca_cert is None:
        raise ProvisionError("--ca-key needs --ca-cert (the CA that signs the office certificate)")
    pw = PasswordFile(password_file)
    _check_account(pw, site, rotate)
    cert = None
    if ca_key is not None:
        cert = issue_cert(ca_cert, ca_key, site, days=cert_days)
    elif ca_cert is not None:
        _read_ca_cert(ca_cert)  # fail now, not after writing half a bundle
    done = _bundle(site, password_file, out_dir)
    if ca_cert is not None:
        done.put(done.bundle / CA_NAME, Path(ca_cert).read_bytes(), 0o644)
    if cert is not None:
        cdir = Path(cert_dir) if cert_dir is not None else done.bundle
        cdir.mkdir(parents=True, exist_ok=True)
        done.put(cdir / CLIENT_KEY_NAME, cert[1], 0o600)
        done.put(cdir / CLIENT_CERT_NAME, cert[0], 0o644)
    done.put(done.bundle / SNIPPET_NAME, _snippet(site, broker_host, broker_port, pi_dir,
                                                  ca_cert is not None, cert is not None).encode(),
             0o644)
    pw.set(site, mosquitto_hash(done.password))
    pw.save()  # last: the account exists only once its password is in the bundle
    return done


def provision_coordinator(name: str, password_file: Path, *, out_dir: Path,
                          rotate: bool = False, acl_file: Path | None = None) -> Provisioned:
    check_name(name, "coordinator name")
    acl = _acl_path(acl_file, password_file)
    if acl is None:
        raise ProvisionError("--coordinator needs the ACL file (--acl-file), to give the account "
                             "the coordinator's rules")
    pw = PasswordFile(password_file)
    text = acl.read_text()
    blocks = acl_blocks(text)
    if name in pw and name not in blocks:
        raise ProvisionError(f"{name!r} is an office account in {pw.path}, not a coordinator")
    _check_account(pw, name, rotate)
    template = blocks.get(DEFAULT_COORDINATOR) or next(iter(blocks.values()), None)
    if name not in blocks and not template:
        raise ProvisionError(f"{acl} has no coordinator block (user {DEFAULT_COORDINATOR} and "
                             f"its topic lines) to copy for {name!r}: start from "
                             "deploy/mosquitto/acl")
    done = _bundle(name, password_file, out_dir)
    if name not in blocks:  # the same rules as the existing coordinator
        block = "\n".join([f"user {name}", *template])
        write_private(acl, (text.rstrip("\n") + f"\n\n# coordinator, added by siaga provision "
                            f"(the rules of the one above)\n{block}\n").encode(), like=acl.stat())
        done.acl_updated = acl
    pw.set(name, mosquitto_hash(done.password))
    pw.save()
    return done


def revoke(name: str, password_file: Path) -> Provisioned:
    pw = PasswordFile(password_file)
    if name not in pw:
        raise ProvisionError(f"{name!r} has no account in {pw.path}")
    pw.remove(name)
    pw.save()
    return Provisioned(name, None, Path(password_file))


# ---- command line -----------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``siaga provision`` (agent/cli.py adds the subcommand)."""
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("site", nargs="?", metavar="SITE", help="site id of the office to add")
    what.add_argument("--coordinator", metavar="NAME", help="add the coordinator's account instead "
                      f"(the usual name is {DEFAULT_COORDINATOR})")
    what.add_argument("--init-ca", metavar="DIR", type=Path, help="make a private CA in DIR "
                      "(kept if DIR has one) and a new server certificate for --broker-host")
    p.add_argument("--password-file", type=Path, metavar="PASSWD", help="the broker's Mosquitto "
                   "password file (created if missing)")
    p.add_argument("--acl-file", type=Path, metavar="ACL", help="the broker's ACL file (default: "
                   "'acl' beside the password file, when there is one)")
    change = p.add_mutually_exclusive_group()
    change.add_argument("--rotate", action="store_true", help="replace the password of an "
                        "existing account (the old password stops working once mosquitto reloads)")
    change.add_argument("--revoke", action="store_true", help="remove the account")
    p.add_argument("--out", type=Path, default=Path("provisioned"), metavar="DIR",
                   help="where the bundle for the Pi goes: DIR/SITE/ (default ./provisioned)")
    p.add_argument("--broker-host", action="append", metavar="HOST", help="the broker's name as "
                   "the offices reach it (for mqtt.yaml; with --init-ca, repeat for every name/IP "
                   "in the server certificate)")
    p.add_argument("--broker-port", type=int, default=8883, metavar="PORT")
    p.add_argument("--ca-cert", type=Path, metavar="CA.pem", help="the CA certificate the Pi "
                   "verifies the broker with (copied into the bundle)")
    p.add_argument("--ca-key", type=Path, metavar="CA.key", help="also issue a client "
                   "certificate for the office (CN = site id), signed by this CA key")
    p.add_argument("--cert-dir", type=Path, metavar="DIR", help="write the client certificate "
                   "and key here instead of the bundle")
    p.add_argument("--cert-days", type=int, default=CERT_DAYS, metavar="DAYS")
    p.add_argument("--pi-dir", default=PI_DIR, metavar="DIR", help="the directory of the files "
                   f"on the Pi, as written in mqtt.yaml (default {PI_DIR})")
    p.add_argument("--show-password", action="store_true", help="also print the new password")


RELOAD = "reload the broker to apply: systemctl reload mosquitto (or kill -HUP its pid)"


def main(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        if args.init_ca is not None:
            f = init_ca(args.init_ca, args.broker_host or [])
            print(f"CA: {f.ca_cert} (give to every Pi), {f.ca_key} (0600: keep it off the broker)",
                  file=out)
            print(f"broker: {f.server_cert}, {f.server_key} -> /etc/mosquitto/certs/ (the key "
                  "root:mosquitto 0640: mosquitto reads it as user mosquitto)", file=out)
            return 0
        if args.password_file is None:
            raise ProvisionError("--password-file is required")
        name = args.coordinator or args.site
        if args.revoke:
            revoke(check_name(name, "name"), args.password_file)
            print(f"{name}: account removed from {args.password_file}; {RELOAD}", file=out)
            return 0
        if args.coordinator:
            done = provision_coordinator(args.coordinator, args.password_file, out_dir=args.out,
                                         rotate=args.rotate, acl_file=args.acl_file)
        else:
            hosts = args.broker_host or ["localhost"]
            done = provision_office(args.site, args.password_file, out_dir=args.out,
                                    rotate=args.rotate, broker_host=hosts[0],
                                    broker_port=args.broker_port, ca_cert=args.ca_cert,
                                    ca_key=args.ca_key, cert_dir=args.cert_dir,
                                    cert_days=args.cert_days, acl_file=args.acl_file,
                                    pi_dir=args.pi_dir)
    except ProvisionError as e:
        print(f"siaga provision: {e}", file=err)
        return 1
    verb = "new password for" if args.rotate else "account added for"
    print(f"{done.name}: {verb} {done.name} in {done.password_file}; {RELOAD}", file=out)
    if done.acl_updated:
        print(f"{done.name}: coordinator rules added to {done.acl_updated}", file=out)
    for path in done.written:
        print(f"  wrote {path} ({path.stat().st_mode & 0o777:04o})", file=out)
    if args.show_password:
        print(f"password: {done.password}", file=out)
    else:
        print(f"  the password is only in {done.bundle / PASSWORD_NAME} (--show-password prints "
              "it); move the bundle to the Pi and delete it here", file=out)
    return 0
