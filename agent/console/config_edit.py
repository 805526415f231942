"""``config set/commit/revert/show``: change the site config file from the console, safely.

``config set KEY VALUE`` edits a *staged* copy of the file's text in place (the line of that key,
or a new line under its section, so comments and layout stay) and validates the whole staged
file with the same models as ``siaga check-config``. A bad value is refused with the key and the
reason, and nothing is staged. ``config commit`` writes the staged text atomically (a temporary
file in the same directory, fsync, the old file kept as ``FILE.bak``, ``os.replace``, fsync of the
directory), so a power cut or a SIGKILL at any instant leaves either the old file or the new one,
never a mix. It says "applied" when every changed key takes effect at once (``LIVE_KEYS``), else
"restart needed" with the keys. One editor per agent, shared by every console session and
``siaga ctl``: the stage belongs to the site, not to a terminal.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import threading
import types
import typing
from typing import Any, Callable

import yaml
from pydantic import BaseModel

from agent.config import ConfigError, SiteConfig, parse_config, read_yaml_lines
from agent.console.i18n import t

# Keys the running agent picks up at commit; everything else needs a restart.
LIVE_KEYS = frozenset({"console.language", "console.enable_pin_hash"})
SECRET = re.compile(r"(_hash|password.*|_key)$")


def _unwrap(ann: Any) -> Any:
    while True:
        origin = typing.get_origin(ann)
        if origin is typing.Annotated:
            ann = typing.get_args(ann)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            ann = args[0] if len(args) == 1 else ann
            if len(args) != 1:
                return ann
        else:
            return ann


def key_problem(key: str) -> str | None:
    """None when ``key`` names one scalar setting of the site config, else why not."""
    if not re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)*", key):
        return "a key is dotted lower-case words, e.g. generator.timers.warm_up_s"
    model: Any = SiteConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            near = difflib.get_close_matches(part, list(fields), n=1)
            where = ".".join(parts[:i]) or "the top level"
            return f"unknown key {part!r} in {where}" + (f"; did you mean {near[0]!r}?" if near else
                                                          f"; known: {', '.join(fields)}")
        ann = _unwrap(fields[part].annotation)
        last = i == len(parts) - 1
        is_model = isinstance(ann, type) and issubclass(ann, BaseModel)
        if typing.get_origin(ann) in (list, dict) or ann in (list, dict):
            return "lists are edited in the file itself (nano /etc/siaga/site.yaml), then restart"
        if last and is_model:
            return f"{key} is a section: name one of its keys ({', '.join(ann.model_fields)})"
        if not last and not is_model:
            return f"{'.'.join(parts[:i + 1])} is a single value, not a section"
        model = ann
    return None


def _field(key: str) -> Any:
    """The annotation of a key that ``key_problem`` accepted (Optional and Annotated unwrapped)."""
    model: Any = SiteConfig
    for part in key.split("."):
        ann = _unwrap(model.model_fields[part].annotation)
        model = ann
    return model


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v)
    try:
        back = read_yaml_lines(f"v: {s}\n")[0]
        if isinstance(back, dict) and back.get("v") == s and "#" not in s and "\n" not in s:
            return s
    except ConfigError:
        pass
    return json.dumps(s, ensure_ascii=False)


def _get(data: Any, parts: list[str]) -> tuple[bool, Any]:
    for p in parts:
        if not isinstance(data, dict) or p not in data:
            return False, None
        data = data[p]
    return True, data


def edit_text(text: str, key: str, value: Any) -> str:
    """``text`` with ``key`` set to ``value``: the key's own line rewritten (its comment kept),
    or new lines under the nearest existing section. Raises ValueError when that cannot be done
    in place (flow style, a multi-line value); the result is checked by reading it back."""
    data, lines = read_yaml_lines(text) if text.strip() else ({}, {})
    parts = key.split(".")
    rows = text.split("\n")
    found, old = _get(data, parts)
    if found:
        if isinstance(old, (dict, list)):
            raise ValueError(f"{key} is not a single value in the file")
        ln = lines[tuple(parts)] - 1
        m = re.match(r"^(\s*)(['\"]?)" + re.escape(parts[-1]) + r"\2(\s*:)(\s*)(.*?)(\s+#.*)?$", rows[ln])
        if not m:
            raise ValueError(f"line {ln + 1} is not a plain `{parts[-1]}: value` line")
        rows[ln] = f"{m.group(1)}{m.group(2)}{parts[-1]}{m.group(2)}{m.group(3)} {_scalar(value)}{m.group(6) or ''}"
    else:
        depth = 0
        while depth < len(parts) - 1 and _get(data, parts[: depth + 1])[0]:
            depth += 1
        if depth == 0:
            at, indent = len(rows), ""
            while at > 0 and rows[at - 1].strip() == "":
                at -= 1
        else:
            anc = parts[:depth]
            _, sect = _get(data, anc)
            if sect is not None and not isinstance(sect, dict):
                raise ValueError(f"{'.'.join(anc)} is not a section in the file")
            aline = lines[tuple(anc)] - 1
            base = len(rows[aline]) - len(rows[aline].lstrip())
            if isinstance(sect, dict) and sect:
                first = lines[tuple(anc) + (next(iter(sect)),)] - 1
                indent = " " * (len(rows[first]) - len(rows[first].lstrip()))
            else:
                indent = " " * (base + 2)
            at = aline + 1
        new = []
        for i, p in enumerate(parts[depth:]):
            last = depth + i == len(parts) - 1
            new.append(f"{indent}{'  ' * i}{p}:" + (f" {_scalar(value)}" if last else ""))
        rows[at:at] = new
    out = "\n".join(rows)
    got, back = _get(read_yaml_lines(out)[0], parts)
    if not got or back != value:
        raise ValueError(f"could not write {key} in place (flow style or a multi-line value?): edit the file")
    return out


def write_atomic(path: str, text: str, *, backup: bool = True,
                 on_chunk: Callable[[], None] | None = None) -> str | None:
    """Replace ``path`` with ``text`` so that a crash at any instant leaves the old or the new
    file whole. The old file is kept as ``path + ".bak"`` (itself replaced atomically). Returns
    the backup's path. ``on_chunk`` runs after each 1 KiB written (tests kill the process there)."""
    d = os.path.dirname(os.path.abspath(path))
    data = text.encode("utf-8")
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    bak = None
    try:
        mode = os.stat(path).st_mode & 0o7777
    except OSError:
        mode = 0o640
    if backup and os.path.exists(path):
        bak = path + ".bak"
        with open(path, "rb") as f:
            old = f.read()
        _write_file(tmp, old, mode, None)
        os.replace(tmp, bak)
    _write_file(tmp, data, mode, on_chunk)
    os.replace(tmp, path)
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return bak


def _write_file(path: str, data: bytes, mode: int, on_chunk: Callable[[], None] | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        for i in range(0, max(len(data), 1), 1024):
            os.write(fd, data[i:i + 1024])
            if on_chunk:
                on_chunk()
        os.fsync(fd)
    finally:
        os.close(fd)


class ConfigEditor:
    def __init__(self, path: str, running: SiteConfig,
                 on_applied: Callable[[SiteConfig], None] | None = None) -> None:
        self.path, self.running = path, running
        self.on_applied = on_applied or (lambda cfg: None)
        self._lock = threading.Lock()
        self.base: str | None = None  # the file's text when the first change was staged
        self.text: str | None = None  # the staged text
        self.staged: dict[str, Any] = {}

    def _read(self) -> str:
        with open(self.path, encoding="utf-8-sig") as f:
            return f.read()

    def stage(self, key: str, raw: str, lang: str = "en") -> tuple[bool, str]:
        key = key.strip().lower()
        problem = key_problem(key)
        if problem:
            return False, t(lang, "cfg_bad", key=key, reason=problem)
        try:
            parsed = read_yaml_lines(f"v: {raw}\n")[0]
            value = parsed.get("v") if isinstance(parsed, dict) else None
        except ConfigError:
            return False, t(lang, "cfg_bad", key=key, reason=f"{raw!r} is not a value (quote text with spaces or #)")
        if _field(key) is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = raw.strip()  # a text setting typed as digits (a name, a hash): keep it text
        if isinstance(value, (dict, list)):
            return False, t(lang, "cfg_bad", key=key, reason="one value only (lists and sections are edited in the file)")
        with self._lock:
            try:
                base = self.text if self.text is not None else self._read()
                new = edit_text(base, key, value)
            except OSError as e:
                return False, t(lang, "cfg_write_failed", path=self.path, error=e.strerror or e)
            except (ValueError, ConfigError) as e:
                return False, t(lang, "cfg_bad", key=key, reason=str(e))
            try:
                parse_config(new, self.path)
            except ConfigError as e:
                mine = [p for p in e.problems if p.path == key] or e.problems
                return False, "\n".join(t(lang, "cfg_bad", key=p.path or key, reason=p.message) for p in mine)
            if self.text is None:
                self.base = base
            self.text = new
            self.staged[key] = value
            shown = "(hidden)" if SECRET.search(key) else _scalar(value)
            return True, t(lang, "cfg_staged", key=key, value=shown, n=len(self.staged))

    def revert(self, lang: str = "en") -> str:
        with self._lock:
            n = len(self.staged)
            self.base = self.text = None
            self.staged = {}
        return t(lang, "cfg_reverted", n=n)

    def commit(self, lang: str = "en", on_chunk: Callable[[], None] | None = None) -> tuple[bool, str, list[str]]:
        with self._lock:
            if self.text is None:
                return False, t(lang, "cfg_nothing"), []
            try:
                if self._read() != self.base:
                    return False, t(lang, "cfg_changed_on_disk", path=self.path), []
                cfg = parse_config(self.text, self.path)  # once more, on the exact bytes written
                bak = write_atomic(self.path, self.text, on_chunk=on_chunk)
            except OSError as e:
                return False, t(lang, "cfg_write_failed", path=self.path, error=e.strerror or e), []
            except ConfigError as e:
                return False, str(e), []
            keys = list(self.staged)
            self.base = self.text = None
            self.staged = {}
        restart = [k for k in keys if k not in LIVE_KEYS]
        live = self.running.model_copy(update={"console": cfg.console})
        self.running = live
        self.on_applied(live)
        if restart:
            return True, t(lang, "cfg_restart", path=self.path, backup=bak, keys=", ".join(restart)), keys
        return True, t(lang, "cfg_applied", path=self.path, backup=bak), keys

    def show(self, section: str | None, lang: str = "en") -> str:
        try:
            data = SiteConfig.model_validate(self.running.model_dump()).model_dump(mode="json")
        except Exception:
            data = self.running.model_dump(mode="json")
        data = _mask(data)
        if section:
            sect = section.strip().lower()
            head = [k for k in SiteConfig.model_fields if k.startswith(sect.split(".")[0])]
            if len(head) == 1 and "." not in sect:
                sect = head[0]  # a unique prefix, as for commands
            found, data = _get(data, sect.split("."))
            if not found:
                near = difflib.get_close_matches(sect, list(SiteConfig.model_fields), n=1)
                return f"% unknown section {sect!r}" + (f"; did you mean {near[0]!r}?" if near else "")
            data = {sect: data}
        out = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=78, allow_unicode=True).rstrip()
        with self._lock:
            staged = dict(self.staged)
        if staged:
            out += "\n" + t(lang, "cfg_staged_head") + "\n" + "\n".join(
                f"  {k}: {'(hidden)' if SECRET.search(k) else _scalar(v)}" for k, v in staged.items())
        return out


def _mask(d: Any, key: str = "") -> Any:
    if isinstance(d, dict):
        return {k: _mask(v, k) for k, v in d.items()}
    if isinstance(d, list):
        return [_mask(v, key) for v in d]
    if d is not None and SECRET.search(key):
        return "(hidden)"
    return d
