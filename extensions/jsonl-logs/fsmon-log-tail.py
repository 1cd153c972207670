#!/usr/bin/env python3
"""Tail, filter and aggregate fsmon's on-disk JSONL logs.

usage: fsmon-log-tail.py [FILE ...] [--group G] [--log-dir DIR] [-f] [-n N]
                         [-w EXPR ...] [-o FIELDS] [--count-by FIELD]

Reads <group>_log.jsonl files (default: every log in the log directory: --log-dir, else
[logging].path of the fsmon config, else ~/.local/state/fsmon, or /var/log/fsmon in system mode).

  -w 'event_type==DELETE'    keep events whose field matches; operators: == != > >= < <=
  -w 'path~^/var/www/'       ~ and !~ are regular expressions; numbers compare as numbers
  -w chain                   a field alone: present and non-empty
  -o time,event_type,path    print these fields tab-separated instead of the JSON line
  --count-by cmd             count events per cmd (or user, event_type, group, path, ...)
  -f                         follow like `tail -F`: waits for files to appear, reopens them
                             after `fsmon clean` swaps them; --count-by prints at Ctrl-C/SIGTERM

A partial last line (a crash mid-write) is left alone until it is completed, and corrupt
lines are skipped and counted on stderr: the logs are never trusted to be perfect.

Examples:
  fsmon-log-tail.py -f -w 'user==deploy'
  fsmon-log-tail.py --group _global -w 'event_type==DELETE' --count-by cmd
  fsmon-log-tail.py ~/.local/state/fsmon/nginx_log.jsonl -w 'file_size>=1048576' -o time,path
"""
import argparse
import collections
import glob
import json
import operator
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir, "lib"))
import fsmon_socket  # noqa: E402

OPS = {"==": operator.eq, "=": operator.eq, "!=": operator.ne, ">=": operator.ge,
       "<=": operator.le, ">": operator.gt, "<": operator.lt}
EXPR = re.compile(r"^\s*([A-Za-z_]+)\s*(?:(==|!=|>=|<=|!~|=|>|<|~)\s*(.*))?$")
SUFFIX = "_log.jsonl"


def default_log_dir(config):
    """[logging] path of the config, else the mode's default (as the fsmon CLI finds it)."""
    places = fsmon_socket.Places(config)
    return places.setting("logging", "path", places.log_dir)


def compile_filter(text):
    """'field OP value' -> predicate on an event (and the group it came from)."""
    m = EXPR.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad filter {text!r} (want FIELD OP VALUE, e.g. cmd==rm)")
    field, op, value = m.groups()
    if op is None:
        return lambda ev: bool(ev.get(field))
    if op in ("~", "!~"):
        rx = re.compile(value)
        want = op == "~"
        return lambda ev: (rx.search(str(ev.get(field, ""))) is not None) == want

    def pred(ev):
        got = ev.get(field)
        if got is None:
            return op == "!="
        try:
            return OPS[op](float(got), float(value))
        except (TypeError, ValueError):
            return OPS[op](str(got), value)
    return pred


class Log:
    """One log file read incrementally: complete lines only, reopened when replaced."""

    def __init__(self, path):
        self.path, self.group = path, os.path.basename(path).removesuffix(SUFFIX)
        self.f, self.ino, self.buf = None, None, b""
        self.open()

    def open(self):
        """(Re)opens the file, to be read from its start; stays closed if it does not exist."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return
        if self.f:
            self.f.close()
        self.f, self.ino, self.buf = f, os.fstat(f.fileno()).st_ino, b""

    def lines(self):
        """Complete lines written since the last call (a partial last line waits)."""
        while True:
            data = self.f.read(1 << 20) if self.f else b""
            if data:
                self.buf += data
                *done, self.buf = self.buf.split(b"\n")
                yield from done
                continue
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                return
            # Created, replaced (fsmon clean swaps in a new file) or truncated: start over.
            if self.f is None or st.st_ino != self.ino or st.st_size < self.f.tell():
                self.open()
                if self.f:
                    continue
            return


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", help="log files (default: the logs in the log directory)")
    p.add_argument("--group", action="append", help="only this group's log (repeatable)")
    p.add_argument("--log-dir", help="log directory (default: from the fsmon config)")
    p.add_argument("--config", help=fsmon_socket.CONFIG_HELP)
    p.add_argument("-f", "--follow", action="store_true", help="keep reading as the logs grow")
    p.add_argument("-n", "--lines", type=int, help="print the last N matching events first (default: all; 10 with -f)")
    p.add_argument("-w", "--where", action="append", default=[], type=compile_filter, metavar="EXPR",
                   help="filter, e.g. cmd==rm, 'file_size>1000', 'path~\\.conf$' (repeat: all must hold)")
    p.add_argument("-o", "--fields", help="comma-separated fields to print, tab-separated")
    p.add_argument("--count-by", metavar="FIELD", help="count events per value of FIELD: cmd, user, event_type, group, ...")
    p.add_argument("--interval", type=float, default=0.25, help="poll interval with -f (seconds)")
    args = p.parse_args()

    if args.files:
        paths = args.files
    else:
        d = args.log_dir or default_log_dir(args.config)
        groups = args.group or []
        paths = [os.path.join(d, g + SUFFIX) for g in groups] or sorted(glob.glob(os.path.join(d, "*" + SUFFIX)))
        if not paths:
            sys.exit(f"fsmon-log-tail: no logs in {d} (with -f, --group G waits for G's log)")
    fields = args.fields.split(",") if args.fields else None
    counts, bad = collections.Counter(), 0

    def matching(log, raw):
        """(line, event) if the line is an event that passes the filters, else None. The
        event is a view that also has "group" (from the file name)."""
        nonlocal bad
        if not raw.strip():
            return None
        try:
            ev = json.loads(raw)
            if not isinstance(ev, dict):
                raise ValueError
        except ValueError:
            bad += 1
            return None
        view = collections.ChainMap(ev, {"group": log.group})
        return (raw, view) if all(w(view) for w in args.where) else None

    def emit(match):
        raw, view = match
        if args.count_by:
            counts[str(view.get(args.count_by, ""))] += 1
        elif fields:
            print("\t".join(str(view.get(k, "")) for k in fields), flush=args.follow)
        else:
            sys.stdout.buffer.write(raw + b"\n")  # the line as the daemon wrote it
            if args.follow:
                sys.stdout.flush()

    logs = [Log(path) for path in paths]
    last = args.lines if args.lines is not None else (10 if args.follow else None)
    backlog = collections.deque(maxlen=last)
    for log in logs:  # what is there now
        for raw in log.lines():
            match = matching(log, raw)
            if match is not None:
                emit(match) if last is None else backlog.append(match)
    for match in backlog:
        emit(match)
    if args.follow:
        waiting = [log.path for log in logs if log.f is None]
        print(f"fsmon-log-tail: following {len(logs)} file(s)"
              + (f", waiting for {', '.join(waiting)}" if waiting else ""), file=sys.stderr, flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends like Ctrl-C
        try:
            while True:
                for log in logs:
                    for raw in log.lines():
                        match = matching(log, raw)
                        if match is not None:
                            emit(match)
                time.sleep(args.interval)
        except KeyboardInterrupt:
            pass
    partial = sum(1 for log in logs if log.buf.strip())
    if args.count_by:
        for value, n in counts.most_common():
            print(f"{n}\t{value}")
    if bad or (partial and not args.follow):
        print(f"fsmon-log-tail: skipped {bad} corrupt line(s)"
              + (f" and {partial} partial last line(s)" if partial else ""), file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # piped into head
        sys.stderr.close()
