"""The fsmon live stream, shared by the scripts in this directory (keep it beside them, and
../lib/fsmon_socket.py, which finds and checks the socket).

The daemon's control socket speaks newline-delimited JSON. A client sends
{"op":"subscribe"} (or {"op":"subscribe","group":"nginx"}), gets {"ok":true,...}, then one
line per event: the log line with "group" first. A client that reads too slowly is never
waited for: it gets {"notice":"missed","missed":N} and the stream goes on.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir, "lib"))
from fsmon_socket import CONFIG_HELP, SOCKET_HELP, PeerError, escape, socket_path  # noqa: E402
import fsmon_socket  # noqa: E402


def add_arguments(parser):
    """The options every subscribe script takes."""
    parser.add_argument("--socket", help=SOCKET_HELP)
    parser.add_argument("--config", help=CONFIG_HELP)
    parser.add_argument("--group", help="only this group's events (default: every group)")
    parser.add_argument("--count", type=int, help="stop after N events (default: run until the daemon stops)")


class Subscription:
    def __init__(self, path, group=None, count=None, prog="fsmon"):
        self.prog, self.left, self.missed, self.buf = prog, count, 0, b""
        self.sock = fsmon_socket.connect(path, 10)
        req = {"op": "subscribe", **({"group": group} if group else {})}
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        ack = self.next_line(timeout=10)
        if ack is None:
            raise SystemExit(f"{prog}: no answer from the daemon on {path} within 10 s")
        if not ack.get("ok"):
            raise SystemExit(f"{prog}: subscribe refused: {escape(ack.get('error', ack))}")

    def next_line(self, timeout=None):
        """The next line as a dict, or None after `timeout` seconds of silence.
        Raises EOFError when the daemon closes the connection (it stopped)."""
        while b"\n" not in self.buf:
            self.sock.settimeout(timeout)
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                return None
            if not data:
                raise EOFError
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def next_event(self, timeout=None):
        """The next event, or None after `timeout` seconds without one. Missed notices are
        counted in self.missed and reported on stderr. Raises EOFError at the end."""
        while True:
            if self.left is not None and self.left <= 0:
                raise EOFError
            item = self.next_line(timeout)
            if item is not None and item.get("notice") == "missed":
                self.missed += item["missed"]
                print(f"{self.prog}: fell behind, the daemon skipped {item['missed']} events", file=sys.stderr)
                continue
            if item is not None and self.left is not None:
                self.left -= 1
            return item

    def events(self):
        """Every event until the end of the stream (or --count)."""
        try:
            while True:
                yield self.next_event()
        except EOFError:
            return

    def batches(self, size, interval):
        """Lists of up to `size` events, sent at most `interval` seconds after the first
        event of the batch arrived; the last (partial) batch at the end of the stream."""
        batch, deadline = [], None
        while True:
            try:
                ev = self.next_event(None if deadline is None else max(0.001, deadline - time.monotonic()))
            except EOFError:
                if batch:
                    yield batch
                return
            if ev is not None:
                batch.append(ev)
                if deadline is None:
                    deadline = time.monotonic() + interval
            if batch and (len(batch) >= size or time.monotonic() >= deadline):
                yield batch
                batch, deadline = [], None

    def take_missed(self):
        """Events missed since the last call."""
        n, self.missed = self.missed, 0
        return n


def connect(args, prog):
    """Subscribes as the command line says; exits with a one-line message on failure."""
    path = socket_path(args)
    try:
        sub = Subscription(path, args.group, args.count, prog)
    except PeerError as e:
        raise SystemExit(f"{prog}: {e}")
    except EOFError:
        raise SystemExit(f"{prog}: the daemon on {path} closed the connection without answering")
    except OSError as e:
        raise SystemExit(f"{prog}: cannot connect to {path}: {e} (is `sudo fsmon daemon` running?)")
    print(f"{prog}: subscribed to {args.group or 'every group'} on {path}", file=sys.stderr, flush=True)
    return sub


def end_of_stream(sub):
    """Exit status at the end: 0 after --count events, else 1 (the daemon went away)."""
    if sub.left is not None and sub.left <= 0:
        return 0
    print(f"{sub.prog}: the daemon closed the connection", file=sys.stderr)
    return 1
