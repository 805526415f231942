"""One terminal session: bytes in, bytes out. A line editor for dumb terminals, no I/O of its own.

What a technician's terminal may send, and what it gets:

* printable ASCII is echoed; BS and DEL erase (``\\b \\b``); Ctrl-U erases the line, Ctrl-W a
  word, Ctrl-C abandons it, Ctrl-L redraws it, Ctrl-D on an empty line ends the session;
* CR, LF or CRLF end a line (a CRLF counts once), so any terminal's Enter works, and a pasted
  block runs line by line;
* ``?`` lists what may come next, Tab completes; arrow keys (ESC sequences) are understood for
  the history (up/down) and otherwise swallowed;
* a line longer than ``max_line`` is refused whole with a message, never cut and run;
* any other byte is line noise: a line that had noise in it is not run (it may not be what was
  typed), and the message says how many bytes were dropped.

Output uses CRLF and plain ASCII; ANSI colours only after ``color on``. The prompt shows the site,
the controller's state and ``>`` or ``#`` (privileged)::

    sambas[ON_GENERATOR]>
"""

from __future__ import annotations

import textwrap
import time
from typing import Callable

from agent import __version__
from agent.console import commands
from agent.console.commands import Reply, Services, Session
from agent.console.i18n import t

MAX_LINE = 256
WIDTH = 79
HISTORY = 20
RED, GREEN, RESET = "\x1b[31m", "\x1b[32m", "\x1b[0m"


def fit(text: str, width: int = WIDTH) -> str:
    """Wrap lines wider than the terminal at word boundaries, continuations indented, so a dumb
    terminal never breaks a word at column 80 (the caret lines of errors are never that wide)."""
    out = []
    for line in text.split("\n"):
        if len(line) <= width:
            out.append(line)
        else:
            out += textwrap.wrap(line, width, subsequent_indent=" " * 6, break_on_hyphens=False, break_long_words=False) or [""]
    return "\n".join(out)


class Shell:
    def __init__(self, svc: Services, write: Callable[[bytes], None], *, source: str = "console",
                 monotonic: Callable[[], float] = time.monotonic, idle_s: float = 600.0,
                 max_line: int = MAX_LINE) -> None:
        self.svc, self._write, self.monotonic = svc, write, monotonic
        self.idle_s, self.max_line = idle_s, max_line
        self.session = Session(source, lang=svc.default_lang)
        self.buf: list[str] = []
        self.started = False
        self.ended = False
        self.secret: Callable[[str], Reply] | None = None
        self.secret_prompt = ""
        self.last_cr = False
        self.esc = 0  # 0 none, 1 after ESC, 2 inside ESC [ ... (CSI)
        self.noise = 0
        self.overflow = 0
        self.history: list[str] = []
        self.hpos = 0
        self.last_input = monotonic()
        self.lines_run = 0

    # ------------------------------------------------------------------ output -------------
    def out(self, text: str) -> None:
        self._write(text.replace("\r\n", "\n").replace("\n", "\r\n").encode("ascii", "replace"))

    def prompt_text(self) -> str:
        if self.secret is not None:
            return self.secret_prompt
        state = self.svc.state_name() if callable(getattr(self.svc, "state_name", None)) else "?"
        return f"{self.svc.site_id}[{state}]{'#' if self.session.privileged else '>'} "

    def prompt(self) -> None:
        self.out(self.prompt_text())

    def _colour(self, text: str, status: str) -> str:
        if not self.session.color or not text:
            return text
        if status in ("error", "refused"):
            return RED + text + RESET
        if status == "ok":
            return GREEN + text + RESET
        return text

    def show(self, reply: Reply) -> None:
        text = commands.render(reply, self.session)
        if text:
            self.out(self._colour(fit(text), reply.status) + "\n")

    # ------------------------------------------------------------------ input --------------
    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.last_input = self.monotonic()
        if not self.started:
            self.started = True
            self.out("\n" + t(self.session.lang, "banner", version=__version__, site=self.svc.site_id) + "\n")
            self.prompt()
            data = data.lstrip(b"\r\n")  # the Enter that woke the console is not a line
        for b in data:
            if self.ended:
                return
            self._byte(b)

    def _byte(self, b: int) -> None:
        if self.esc:
            self._escape(b)
            return
        was_cr, self.last_cr = self.last_cr, False
        if b == 0x0D:
            self.last_cr = True
            self._enter()
        elif b == 0x0A:
            if not was_cr:
                self._enter()
        elif b in (0x08, 0x7F):
            if self.buf:
                self.buf.pop()
                if self.secret is None:
                    self.out("\b \b")
        elif b == 0x15:  # Ctrl-U
            self._erase(len(self.buf))
        elif b == 0x17:  # Ctrl-W
            n = len(self.buf)
            while n and self.buf[n - 1] == " ":
                n -= 1
            while n and self.buf[n - 1] != " ":
                n -= 1
            self._erase(len(self.buf) - n)
        elif b == 0x03:  # Ctrl-C
            self.out("^C\n")
            self.buf, self.noise, self.overflow, self.secret = [], 0, 0, None
            self.prompt()
        elif b == 0x04:  # Ctrl-D
            if not self.buf and self.secret is None:
                self.out("\n")
                self._run_line("exit")
        elif b == 0x0C:  # Ctrl-L
            self.out("\n")
            self._redraw()
        elif b == 0x1B:
            self.esc = 1
        elif b == 0x09:
            self._tab()
        elif b == 0x3F and self.secret is None:  # ?
            self._question()
        elif 0x20 <= b <= 0x7E:
            if len(self.buf) >= self.max_line or self.overflow:
                if not self.overflow:
                    self.out("\a")
                self.overflow += 1
                return
            self.buf.append(chr(b))
            if self.secret is None:
                self.out(chr(b))
        else:
            self.noise += 1

    def _escape(self, b: int) -> None:
        if self.esc == 1:
            self.esc = 2 if b in (0x5B, 0x4F) else 0  # ESC [ or ESC O, else a lone ESC pair
            return
        if 0x40 <= b <= 0x7E:  # the final byte of the sequence
            self.esc = 0
            if b in (0x41, 0x42) and self.secret is None and self.history:  # up, down
                self.hpos = max(0, self.hpos - 1) if b == 0x41 else min(len(self.history), self.hpos + 1)
                self._erase(len(self.buf))
                self.buf = list(self.history[self.hpos]) if self.hpos < len(self.history) else []
                self.out("".join(self.buf))
        elif not (0x20 <= b <= 0x3F):  # not a parameter byte: a broken sequence; drop it
            self.esc = 0
            self.noise += 1

    def _erase(self, n: int) -> None:
        if n <= 0:
            return
        del self.buf[len(self.buf) - n:]
        if self.secret is None:
            self.out("\b \b" * n)

    def _redraw(self) -> None:
        self.prompt()
        if self.secret is None:
            self.out("".join(self.buf))

    def _tab(self) -> None:
        if self.secret is not None or self.overflow:
            return
        line = "".join(self.buf)
        new, cands = commands.complete(line)
        if cands:
            self.out("\n" + "  ".join(cands) + "\n")
            self.buf = list(new)
            self._redraw()
        elif new != line and len(new) <= self.max_line:
            self.out(new[len(line):] if new.startswith(line) else "")
            self.buf = list(new)

    def _question(self) -> None:
        line = "".join(self.buf)
        self.out("?\n")
        words = commands.next_words(line, self.session.lang)
        if not words:
            self.out(self.session.error(t(self.session.lang, "unknown_at", line=line.strip() or "?")) + "\n")
        for w, h in words:
            self.out(f"  {w:<16} {h}"[:79].rstrip() + "\n")
        self._redraw()

    def _enter(self) -> None:
        line = "".join(self.buf)
        self.buf = []
        self.out("\n")
        noise, overflow = self.noise, self.overflow
        self.noise = self.overflow = 0
        lang = self.session.lang
        if overflow:
            self.out(self.session.error(t(lang, "line_too_long", n=len(line) + overflow, max=self.max_line)) + "\n")
            self.secret = None
            self.prompt()
            return
        if noise:
            self.out(self.session.error(t(lang, "noise", n=noise)) + "\n")
            self.secret = None
            self.prompt()
            return
        if self.secret is not None:
            check, self.secret = self.secret, None
            self.show(check(line))
            self.prompt()
            return
        if not line.strip():
            self.prompt()
            return
        self.history = (self.history + [line])[-HISTORY:]
        self.hpos = len(self.history)
        self._run_line(line)

    def _run_line(self, line: str) -> None:
        self.lines_run += 1
        reply = commands.run(self.svc, self.session, line)
        if reply.secret is not None:
            self.secret, self.secret_prompt = reply.secret, reply.prompt
            self.show(reply)
            self.prompt()
            return
        self.show(reply)
        if reply.end:
            self.end()
            return
        self.prompt()

    # ------------------------------------------------------------------ time ---------------
    def tick(self) -> None:
        """Called often by the port loop: privileged mode ends after ``idle_s`` without input."""
        if (self.session.privileged or self.secret is not None) and self.monotonic() - self.last_input >= self.idle_s:
            self.session.privileged, self.secret, self.buf = False, None, []
            self.out("\n" + self.session.error(t(self.session.lang, "idle_drop", min=self.idle_s / 60)) + "\n")
            self.prompt()

    def end(self) -> None:
        """The session is over (exit, or the cable was pulled): forget privilege and the line.
        The next byte starts a new session with the banner."""
        self.session = Session(self.session.source, lang=self.svc.default_lang)
        self.buf, self.secret, self.started = [], None, False
        self.noise = self.overflow = 0
