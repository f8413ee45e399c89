"""A small SCPI (IEEE 488.2) grammar: program messages, a command tree, responses.

No maintained Python package parses SCPI on the *instrument* side (the
well-kept ones, e.g. PyVISA, are host-side clients), so this is a small tested
grammar following IEEE 488.2-1992 section 7 and SCPI-1999 volume 1:

- a program message is program message units separated by ``;``; a unit is a
  header and optional parameters separated by ``,``;
- headers are common commands (``*IDN?``) or compound mnemonics (``SYST:ERR?``)
  matched case-insensitively against the short form (the upper-case letters of
  the tree's name) or the long form, with an optional numeric suffix
  (``LED2``) where the tree allows one, optional nodes in ``[...]``, and ``?``
  for queries; a unit without a leading ``:`` after ``;`` continues at the
  branch of the previous one (488.2 section 7.6.1.3);
- parameters: decimal numbers (NR1/NR2/NR3) with an optional unit suffix and
  SI multiplier (``2MS``, ``1.5E3US``), quoted strings (``"..."`` or ``'...'``, a
  doubled quote inside), character data (``ON``, ``MAX``), and definite-length
  blocks ``#<n><length><bytes>``.

Errors carry the standard SCPI codes (:data:`MESSAGES`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: standard SCPI error codes and messages (SCPI-1999 vol. 2, chapter 21)
MESSAGES = {
    0: "No error",
    -100: "Command error", -101: "Invalid character", -102: "Syntax error",
    -103: "Invalid separator", -104: "Data type error", -108: "Parameter not allowed",
    -109: "Missing parameter", -113: "Undefined header", -114: "Header suffix out of range",
    -131: "Invalid suffix", -151: "Invalid string data", -160: "Block data error",
    -161: "Invalid block data", -200: "Execution error", -203: "Command protected",
    -221: "Settings conflict", -222: "Data out of range", -224: "Illegal parameter value",
    -240: "Hardware error", -241: "Hardware missing", -250: "Mass storage error",
    -256: "File name not found", -257: "File name error", -330: "Self-test failed",
    -350: "Queue overflow", -363: "Input buffer overrun", -410: "Query INTERRUPTED",
    -420: "Query UNTERMINATED", 100: "Device-specific error",
}
#: ESR bits set by each error class (IEEE 488.2 section 11.5.1)
ESR_OPC, ESR_QUERY, ESR_DEVICE, ESR_EXECUTION, ESR_COMMAND = 1, 4, 8, 16, 32


def esr_bit(code: int) -> int:
    """The Standard Event Status Register bit an error code sets."""
    if -199 <= code <= -100:
        return ESR_COMMAND
    if -299 <= code <= -200:
        return ESR_EXECUTION
    if -399 <= code <= -300 or code > 0:
        return ESR_DEVICE
    if -499 <= code <= -400:
        return ESR_QUERY
    return 0


class ScpiError(Exception):
    """A SCPI error: ``code`` from :data:`MESSAGES`, ``detail`` for people."""

    def __init__(self, code: int, detail: str = ""):
        super().__init__(f"{code},{MESSAGES.get(code, 'Error')}" + (f"; {detail}" if detail else ""))
        self.code = code
        self.detail = detail

    def queue_text(self) -> str:
        """The error queue's form: ``<code>,"<message>[; detail]"``."""
        msg = MESSAGES.get(self.code, "Error") + (f"; {self.detail}" if self.detail else "")
        return f'{self.code},"{msg.replace(chr(34), chr(39))[:240]}"'


@dataclass(frozen=True, slots=True)
class Block:
    """Definite-length arbitrary block data."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Number:
    """A decimal number with the unit suffix it was sent with (upper case, multiplier removed)."""

    value: float
    unit: str = ""


@dataclass(frozen=True, slots=True)
class Chars:
    """Character program data (``ON``, ``MAX``, ``A``), upper case."""

    text: str


Param = Number | str | Block | Chars

_MULT = {"EX": 1e18, "PE": 1e15, "T": 1e12, "G": 1e9, "MA": 1e6, "K": 1e3, "M": 1e-3,
         "U": 1e-6, "N": 1e-9, "P": 1e-12, "F": 1e-15, "A": 1e-18}
_NUM = re.compile(rb"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_SUFFIX = re.compile(rb"[A-Za-z/%]+")
_MNEMONIC = re.compile(rb"\*?[A-Za-z][A-Za-z0-9_]*")


def _number(tok: bytes) -> Number:
    m = _NUM.match(tok)
    value = float(m.group(0))
    rest = tok[m.end():].strip().upper().decode("ascii")
    if not rest:
        return Number(value)
    if not re.fullmatch(r"[A-Z/%]+", rest):
        raise ScpiError(-131, f"suffix {rest!r}")
    for unit in ("HZ", "US", "MS", "S", "UM", "MM", "NM", "M", "V", "A", "PCT", "%", "FL"):
        if rest == unit:
            return Number(value, unit)
        if rest.endswith(unit) and rest[:-len(unit)] in _MULT:
            mult = _MULT[rest[:-len(unit)]]
            return Number(value * mult, unit)
    return Number(value, rest)


@dataclass(slots=True)
class Unit:
    """One program message unit: header path, whether a query, numeric suffixes, parameters."""

    path: list[str]
    query: bool
    common: bool
    absolute: bool
    params: list[Param] = field(default_factory=list)


def parse_message(msg: bytes) -> list[Unit]:
    """Split one program message (without its terminator) into units.

    Raises
    ------
    ScpiError
        -102 syntax, -101 invalid character, -151 string, -161 block, -103 separator.
    """
    units: list[Unit] = []
    i, n = 0, len(msg)

    def ws() -> None:
        nonlocal i
        while i < n and msg[i] in b" \t\r":
            i += 1

    while True:
        ws()
        if i >= n:
            if units:
                raise ScpiError(-102, "empty unit after ';'")
            return units
        absolute = False
        if msg[i:i + 1] == b":":
            absolute = True
            i += 1
        path = []
        common = msg[i:i + 1] == b"*"
        while True:
            m = _MNEMONIC.match(msg, i)
            if not m:
                bad = msg[i:i + 1]
                if bad and (bad[0] > 126 or bad[0] < 32):
                    raise ScpiError(-101, f"byte 0x{bad[0]:02x} in a header")
                raise ScpiError(-102, f"header expected at {msg[i:i + 12]!r}")
            path.append(m.group(0).decode("ascii").upper())
            i = m.end()
            if common or msg[i:i + 1] != b":":
                break
            i += 1
        query = msg[i:i + 1] == b"?"
        if query:
            i += 1
        unit = Unit(path=path, query=query, common=common, absolute=absolute)
        units.append(unit)
        if i < n and msg[i] not in b" \t;":
            raise ScpiError(-102, f"unexpected {msg[i:i + 8]!r} after header")
        ws()
        if i < n and msg[i:i + 1] != b";":
            while True:
                ws()
                i, p = _param(msg, i)
                unit.params.append(p)
                ws()
                if i >= n or msg[i:i + 1] == b";":
                    break
                if msg[i:i + 1] != b",":
                    raise ScpiError(-103, f"expected ',' or ';' at {msg[i:i + 8]!r}")
                i += 1
        if i >= n:
            return units
        i += 1  # ';'


def _param(msg: bytes, i: int) -> tuple[int, Param]:
    n = len(msg)
    if i >= n:
        raise ScpiError(-109, "parameter expected")
    c = msg[i:i + 1]
    if c in (b'"', b"'"):
        out = bytearray()
        j = i + 1
        while True:
            if j >= n:
                raise ScpiError(-151, "string not terminated")
            if msg[j:j + 1] == c:
                if msg[j + 1:j + 2] == c:
                    out += c
                    j += 2
                    continue
                j += 1
                break
            out.append(msg[j])
            j += 1
        try:
            return j, out.decode("utf-8")
        except UnicodeDecodeError:
            raise ScpiError(-151, "string is not UTF-8") from None
    if c == b"#":
        digits = msg[i + 1:i + 2]
        if not digits.isdigit() or digits == b"0":
            raise ScpiError(-161, "only definite-length blocks #<n><len> are accepted")
        nd = int(digits)
        ln = msg[i + 2:i + 2 + nd]
        if len(ln) != nd or not ln.isdigit():
            raise ScpiError(-161, "block length digits missing")
        size = int(ln)
        start = i + 2 + nd
        if start + size > n:
            raise ScpiError(-161, f"block announces {size} bytes, {n - start} arrived")
        return start + size, Block(bytes(msg[start:start + size]))
    m = _NUM.match(msg, i)
    if m and (m.end() >= n or not msg[m.end():m.end() + 1].isalpha() or _SUFFIX.match(msg, m.end())):
        s = _SUFFIX.match(msg, m.end())
        end = s.end() if s else m.end()
        return end, _number(msg[i:end])
    m = re.compile(rb"[A-Za-z][A-Za-z0-9_]*").match(msg, i)
    if m:
        return m.end(), Chars(m.group(0).decode("ascii").upper())
    b = msg[i]
    if b > 126 or b < 32:
        raise ScpiError(-101, f"byte 0x{b:02x} in a parameter")
    raise ScpiError(-102, f"parameter expected at {msg[i:i + 8]!r}")


# -- the command tree ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Node:
    long: str
    short: str
    optional: bool
    suffix: bool


def _nodes(pattern: str) -> tuple[list[_Node], bool]:
    query = pattern.endswith("?")
    pattern = pattern.rstrip("?")
    out = []
    for part in re.findall(r"\[:?[^\]]+\]|[^:\[]+", pattern.lstrip(":")):
        optional = part.startswith("[")
        name = part.strip("[]:")
        suffix = name.endswith("#")
        name = name.rstrip("#")
        short = "".join(ch for ch in name if ch.isupper() or ch == "*" or ch.isdigit())
        out.append(_Node(long=name.upper(), short=short, optional=optional, suffix=suffix))
    return out, query


Handler = Callable[..., Any]


@dataclass(slots=True)
class Command:
    """One entry of the tree: its pattern, whether a query, the handler, the role it needs."""

    pattern: str
    nodes: list[_Node]
    query: bool
    handler: Handler
    role: str | None


class CommandTree:
    """Patterns like ``SYSTem:ERRor[:NEXT]?`` or ``SOURce:LED#[:STATe]`` mapped to handlers."""

    def __init__(self) -> None:
        self.commands: list[Command] = []

    def add(self, pattern: str, handler: Handler, *, role: str | None = None) -> None:
        """Register ``handler(params, suffixes)``; ``role`` is the login it needs (None: anyone)."""
        nodes, query = _nodes(pattern)
        self.commands.append(Command(pattern, nodes, query, handler, role))

    def command(self, pattern: str, *, role: str | None = None):
        """Decorator form of :meth:`add`."""
        def deco(fn: Handler) -> Handler:
            self.add(pattern, fn, role=role)
            return fn
        return deco

    @staticmethod
    def _match(nodes: list[_Node], path: list[str]) -> list[int] | None:
        """Numeric suffixes if ``path`` matches ``nodes``, else None."""
        def rec(ni: int, pi: int, suffixes: list[int]) -> list[int] | None:
            if ni == len(nodes):
                return suffixes if pi == len(path) else None
            node = nodes[ni]
            if pi < len(path):
                m = re.fullmatch(r"(\*?[A-Z][A-Z_]*?)(\d*)", path[pi])
                if m:
                    word, num = m.group(1), m.group(2)
                    if node.suffix or not num:
                        if word in (node.short, node.long):
                            got = rec(ni + 1, pi + 1, suffixes + ([int(num) if num else 1]
                                                                  if node.suffix else []))
                            if got is not None:
                                return got
                    elif path[pi] in (node.short, node.long):  # a name that ends in digits
                        got = rec(ni + 1, pi + 1, suffixes)
                        if got is not None:
                            return got
            if node.optional:
                return rec(ni + 1, pi, suffixes)
            return None
        return rec(0, 0, [])

    def find(self, path: list[str], query: bool) -> tuple[Command, list[int]]:
        """The command for a header path.

        Raises
        ------
        ScpiError
            -113 when no command has this header (as a command or query as asked).
        """
        for cmd in self.commands:
            if cmd.query != query:
                continue
            suffixes = self._match(cmd.nodes, path)
            if suffixes is not None:
                return cmd, suffixes
        raise ScpiError(-113, ":".join(path) + ("?" if query else ""))


# -- responses ----------------------------------------------------------------------------------
def block(data: bytes) -> bytes:
    """``#<n><len><data>``."""
    ln = str(len(data)).encode()
    return b"#" + str(len(ln)).encode() + ln + data


def quote(s: str) -> str:
    """A string response: double quotes, inner quotes doubled."""
    return '"' + s.replace('"', '""') + '"'


def nr(value: float | int) -> str:
    """A number response: NR1 for integers, NR3 otherwise."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6E}"
