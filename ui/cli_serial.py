"""``holodiff serve-serial PORT`` (the analyzer side) and ``holodiff serial PORT`` (the laptop side)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

log = logging.getLogger("holodiff")
HISTORY = Path.home() / ".holodiff_serial_history"


def cmd_serve_serial(args: argparse.Namespace) -> int:
    """Run the SCPI service on a tty until interrupted."""
    import serial

    from device.errors import HardwareError
    from device.instrument import open_instrument
    from device.serial_service import ScpiService, serve

    simulated = True if args.simulated else (False if args.hardware else None)
    try:
        port = serial.Serial(args.port, baudrate=args.baud, timeout=0.2)
    except serial.SerialException as exc:
        raise HardwareError(f"cannot open {args.port} ({exc}); check the USB cable and the "
                            f"port name") from None
    with open_instrument(args.profile, simulated=simulated) as instr:
        log.info("serving %s on %s (%s)", instr.profile.name, args.port,
                 "simulated analyzer" if instr.simulated else "hardware")
        try:
            serve(port, ScpiService(instr))
        except KeyboardInterrupt:
            pass
        finally:
            port.close()
    return 0


class Link:
    """The laptop's end: send a program message, read one response line or block."""

    def __init__(self, port: str, *, baud: int = 115200, timeout_s: float = 600.0):
        import serial

        from device.errors import HardwareError

        try:
            self.port = serial.Serial(port, baudrate=baud, timeout=timeout_s)
        except serial.SerialException as exc:
            raise HardwareError(f"cannot open {port} ({exc}); check the cable and the port "
                                f"name") from None

    def send(self, text: bytes) -> None:
        """Write one program message and its LF."""
        self.port.write(text + b"\n")
        self.port.flush()

    def read_response(self) -> bytes:
        """One response: a line (without LF) or a block's data (``#``-framed, then LF)."""
        from device.errors import HardwareError

        first = self.port.read(1)
        if not first:
            raise HardwareError("the analyzer did not answer (timeout); check the cable and that "
                                "holodiff serve-serial runs")
        if first == b"#":
            nd = int(self.port.read(1))
            size = int(self.port.read(nd))
            data = self.port.read(size)
            self.port.read_until(b"\n")
            if len(data) != size:
                raise HardwareError("the block was cut short; repeat the command")
            return b"#" + data
        line = first + self.port.read_until(b"\n")
        return line.rstrip(b"\r\n")

    def query(self, text: str) -> str:
        """Send a query and return its one-line answer."""
        self.send(text.encode())
        return self.read_response().decode("utf-8", errors="replace")


def _expand_blocks(cmd: str) -> bytes:
    """``@FILE`` arguments become definite-length blocks of the file's bytes."""
    from device.scpi import block

    out = b""
    pos = 0
    for m in re.finditer(r"(?<![\"'\w])@(\S+)", cmd):
        out += cmd[pos:m.start()].encode()
        out += block(Path(m.group(1)).expanduser().read_bytes())
        pos = m.end()
    return out + cmd[pos:].encode()


def _is_query(cmd: str) -> bool:
    text = re.sub(r"\"[^\"]*\"|'[^']*'|@\S+", "", cmd)
    return "?" in text


def run_command(link: Link, cmd: str, out_dir: Path, counter: list[int]) -> dict:
    """Send one command, read its response, then drain the error queue."""
    msg = _expand_blocks(cmd)
    query = _is_query(cmd)
    t0 = time.perf_counter()
    link.send(msg)
    if not query:
        link.send(b"*OPC?")  # its own message: answered even when the command failed
    resp = link.read_response()
    item: dict = {"command": cmd, "time_s": 0.0}
    if query:
        if resp.startswith(b"#"):
            counter[0] += 1
            m = re.search(r"[\"']([^\"']+)[\"']", cmd)
            name = (m.group(1).replace("/", "_") if m else f"block-{counter[0]:03d}.npy")
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / name
            path.write_bytes(resp[1:])
            item["file"] = str(path)
            item["bytes"] = len(resp) - 1
        else:
            item["response"] = resp.decode("utf-8", errors="replace")
    item["time_s"] = round(time.perf_counter() - t0, 3)
    errors = []
    while True:
        e = link.query("SYST:ERR?")
        if e.startswith("0,"):
            break
        errors.append(e)
        if len(errors) > 40:
            break
    item["errors"] = errors
    return item


def _print(item: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(item), flush=True)
        return
    if "response" in item:
        print(item["response"], flush=True)
    if "file" in item:
        print(f"saved {item['bytes']} bytes to {item['file']}", flush=True)
    for e in item["errors"]:
        print(f"error: {e}", file=sys.stderr, flush=True)


def cmd_serial(args: argparse.Namespace) -> int:
    """The engineer's host client."""
    link = Link(args.port, baud=args.baud, timeout_s=args.timeout)
    out_dir = Path(args.out)
    counter = [0]
    failed = 0
    if args.commands:
        cmds = [" ".join(args.commands)] if not args.each else list(args.commands)
    elif args.script:
        cmds = [ln.strip() for ln in Path(args.script).read_text().splitlines()
                if ln.strip() and not ln.strip().startswith("#")]
    elif sys.stdin.isatty():
        return _interactive(link, out_dir, counter, args.json)
    else:
        cmds = [ln.strip() for ln in sys.stdin if ln.strip() and not ln.startswith("#")]
    for c in cmds:
        item = run_command(link, c, out_dir, counter)
        _print(item, args.json)
        failed += bool(item["errors"])
    return 2 if failed else 0


def _interactive(link: Link, out_dir: Path, counter: list[int], as_json: bool) -> int:
    import readline

    try:
        readline.read_history_file(HISTORY)
    except OSError:
        pass
    print(f"connected: {link.query('*IDN?')}\ntype SCPI commands; @FILE sends a file as a block; "
          f"Ctrl-D quits", file=sys.stderr)
    try:
        while True:
            try:
                line = input("scpi> ").strip()
            except EOFError:
                break
            if line:
                _print(run_command(link, line, out_dir, counter), as_json)
    finally:
        readline.write_history_file(HISTORY)
    return 0


def add_parsers(sub) -> None:
    """Register ``serve-serial`` and ``serial``."""
    s = sub.add_parser("serve-serial", help="the analyzer's SCPI service on a tty (section 4)")
    s.add_argument("port", help="the tty, e.g. /dev/ttyGS0")
    s.add_argument("--baud", type=int, default=115200)
    s.add_argument("--profile", help="hardware profile (default $HOLODIFF_PROFILE)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--simulated", action="store_true", help="serve the simulated twin")
    g.add_argument("--hardware", action="store_true", help="require the real analyzer")
    s.set_defaults(func=cmd_serve_serial)
    c = sub.add_parser("serial", help="the engineer's host client: one command, a script, or "
                                      "interactive (options before PORT)",
                       usage="holodiff serial [options] PORT [COMMAND ...]")
    c.add_argument("port", help="the analyzer's serial port, e.g. /dev/ttyACM0")
    c.add_argument("commands", nargs="*", help="SCPI command (words are joined; see --each)")
    c.add_argument("--each", action="store_true", help="every argument is its own command")
    c.add_argument("--script", help="file of commands, one per line ('#' comments)")
    c.add_argument("--out", default=".", help="folder for fetched blocks (frames, files)")
    c.add_argument("--baud", type=int, default=115200)
    c.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for an answer")
    c.add_argument("--json", action="store_true", help="one JSON object per command")
    c.set_defaults(func=cmd_serial)
