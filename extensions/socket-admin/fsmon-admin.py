#!/usr/bin/env python3
"""Drive a running fsmon daemon over its control socket: add, remove, list, health.

usage: fsmon-admin.py [--socket PATH] [--config FILE] add GROUP PATH [-r] [--types T ...] [--size S]
       fsmon-admin.py [...] remove GROUP [--path PATH]
       fsmon-admin.py [...] list [--table]
       fsmon-admin.py [...] health [--json]

The same requests `fsmon add/remove/monitored/health` send, as one JSON line each
({"op":"add","group":..,"path":..}); changes apply at once and are saved by the daemon.
GROUP is _global (every process) or a command name (that command and its descendants).
`list` prints one JSON line per group, like `fsmon monitored`; `health` exits 1 when the
daemon is not ready or a path could not be watched. Errors: one line on stderr, exit 1.

  fsmon-admin.py add _global /var/www -r --types CREATE,DELETE
  fsmon-admin.py add nginx /var/www -r --size '>=1MB'
  fsmon-admin.py list --table
  fsmon-admin.py remove nginx --path /var/www
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir, "lib"))
from fsmon_socket import CONFIG_HELP, SOCKET_HELP, PeerError, escape, socket_path  # noqa: E402
import fsmon_socket  # noqa: E402


def call(path, request):
    """One request, one response line; exits with the daemon's error if it refused."""
    try:
        with fsmon_socket.connect(path, 30) as s:
            s.sendall(json.dumps(request).encode() + b"\n")
            line = s.makefile("rb").readline()
    except PeerError as e:
        sys.exit(f"fsmon-admin: {e}")
    except TimeoutError:
        sys.exit(f"fsmon-admin: no answer from the daemon on {path} within 30 s")
    except OSError as e:
        sys.exit(f"fsmon-admin: cannot talk to the daemon on {path}: {e} (is `sudo fsmon daemon` running?)")
    if not line:
        sys.exit("fsmon-admin: the daemon closed the connection without answering")
    response = json.loads(line)
    if not response.get("ok"):
        sys.exit(f"fsmon-admin: {escape(response.get('error', response))}")
    return response


def show_health(h):
    print(f"fsmon {h.get('version')} pid {h.get('pid')} for {h.get('user')}: "
          f"{'ready' if h.get('ready') else 'NOT READY'}, up {h.get('uptime_secs')} s, tracker {h.get('tracker')}"
          + (f" (fallback: {h['tracker_fallback']})" if h.get("tracker_fallback") else ""))
    print(f"  {h.get('groups')} group(s), {len(h.get('paths', []))} path(s); logs in {h.get('log_dir') or '(file output off)'}")
    for p in h.get("paths", []):
        print(f"    {p['group']:<16} {p['path']}{' (recursive)' if p.get('recursive') else ''}"
              f"{'  PENDING: does not exist yet' if p.get('pending') else ''}")
    for e in h.get("watch_errors", []):
        print(f"  cannot watch {e['path']}: {e['error']}")
    print(f"  events logged {h.get('events_logged')}, unwritten {h.get('events_unwritten')}, "
          f"queue overflows {h.get('queue_overflows')}, subscribers {h.get('subscribers')}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", help=SOCKET_HELP)
    p.add_argument("--config", help=CONFIG_HELP)
    sub = p.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="watch PATH for GROUP")
    add.add_argument("group")
    add.add_argument("path")
    add.add_argument("-r", "--recursive", action="store_true")
    add.add_argument("--types", action="append", default=[], help="event types: names, comma lists or 'all'")
    add.add_argument("--size", help="size filter, e.g. '>=1MB'")
    rm = sub.add_parser("remove", help="stop watching PATH for GROUP, or the whole group")
    rm.add_argument("group")
    rm.add_argument("--path")
    ls = sub.add_parser("list", help="what is monitored (JSON lines, like `fsmon monitored`)")
    ls.add_argument("--table", action="store_true", help="one row per path instead")
    health = sub.add_parser("health", help="the daemon's status")
    health.add_argument("--json", action="store_true", help="the raw response")
    args = p.parse_args()
    path = socket_path(args)

    if args.command == "add":
        req = {"op": "add", "group": args.group, "path": os.path.abspath(args.path),
               "recursive": args.recursive, "types": args.types}
        if args.size:
            req["size"] = args.size
        r = call(path, req)
        print(f"{r.get('group', args.group)}: watching {r.get('path', req['path'])}"
              + (" (pending: it does not exist yet; watched from when it appears)" if r.get("pending") else ""))
    elif args.command == "remove":
        req = {"op": "remove", "group": args.group}
        if args.path:
            req["path"] = os.path.abspath(args.path)
        call(path, req)
        print(f"{args.group}: removed {req.get('path', 'the whole group')}")
    elif args.command == "list":
        for g in call(path, {"op": "monitored"})["groups"]:
            if not args.table:
                print(json.dumps(g, separators=(",", ":")))
                continue
            for p_, o in g["paths"].items():
                print(f"{g['cmd']}\t{p_}\t{'recursive' if o.get('recursive') else '-'}\t"
                      f"{','.join(o.get('types', []))}\t{o.get('size') or ''}")
    else:
        h = call(path, {"op": "health"})
        print(json.dumps(h, indent=2)) if args.json else show_health(h)
        return 0 if h.get("ready") and not h.get("watch_errors") else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
