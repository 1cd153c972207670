#!/usr/bin/env python3
"""Terminal preview of fsmon's live event stream.

usage: fsmon-subscribe-demo.py [--socket PATH] [--group G] [--count N] [--json]

One line per event: time, type, group, path, and the process (name[pid] user). Events of
command groups also show their ancestry chain. Events the daemon skipped because this
client read too slowly are reported on stderr. Needs fsmon_stream.py beside it.

  fsmon-subscribe-demo.py                     # every group, until Ctrl-C
  fsmon-subscribe-demo.py --group nginx       # one group
  fsmon-subscribe-demo.py --json | jq .path   # the raw stream
"""
import argparse
import json
import sys

import fsmon_stream

COLORS = {"CREATE": 32, "DELETE": 31, "DELETE_SELF": 31, "MOVED_FROM": 33, "MOVED_TO": 33,
          "MOVE_SELF": 33, "CLOSE_WRITE": 36, "MODIFY": 36, "ATTRIB": 35, "Q_OVERFLOW": 41}


def line(ev, color):
    kind = ev.get("event_type", "?")
    if color and kind in COLORS:
        kind = f"\033[{COLORS[kind]}m{kind:<12}\033[0m"
    who = f"{ev.get('cmd') or '?'}[{ev.get('pid', 0)}] {ev.get('user') or '?'}"
    text = f"{ev.get('time', '')[11:26]}  {kind:<12} {ev.get('group', ''):<10} {ev.get('path', '')}  ({who})"
    if ev.get("lost"):
        text += "  kernel queue overflow: events were lost"
    if ev.get("chain"):
        text += f"\n    chain {ev['chain']}"
    return text


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsmon_stream.add_arguments(p)
    p.add_argument("--json", action="store_true", help="print the stream's JSON lines as they are")
    args = p.parse_args()
    sub = fsmon_stream.connect(args, "fsmon-subscribe-demo")
    color = sys.stdout.isatty()
    n = 0
    try:
        for ev in sub.events():
            print(json.dumps(ev) if args.json else line(ev, color), flush=True)
            n += 1
        status = fsmon_stream.end_of_stream(sub)
    except KeyboardInterrupt:
        status = 0
    print(f"fsmon-subscribe-demo: {n} events, {sub.missed} missed", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
