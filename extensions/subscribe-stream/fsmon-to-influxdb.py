#!/usr/bin/env python3
"""fsmon events into InfluxDB 1.x (or Telegraf's influxdb_listener), as line protocol.

usage: fsmon-to-influxdb.py [--url http://127.0.0.1:8086] [--db fsmon] [--create-db]
                            [--measurement fsmon_event] [--username U --password P]
                            [--batch N] [--interval S] [--socket PATH] [--group G] [--count N]

One point per event, POSTed in batches to /write?db=DB&precision=ns:
  fsmon_event,host=web1,group=_global,event_type=CREATE,cmd=touch,user=root
      path="/var/www/x",pid=1234i,ppid=1200i,tgid=1234i,file_size=0i 1778148001204371000
Tags (indexed, low cardinality): host, group, event_type, cmd, user. The path is a field.

fsmon's times have microseconds and events read together share one, while InfluxDB keeps
one point per series and timestamp: so each point gets a distinct nanosecond timestamp
(the event's microsecond, plus a few ns for the events after the first). Nothing is
overwritten. Query: SELECT count(path) FROM fsmon_event WHERE time > now() - 1h GROUP BY cmd
(GROUP is a keyword of InfluxQL: write the tag as "group", quoted).

Network errors and 5xx are retried with backoff (--retries), then the batch is dropped with
a message on stderr; a 4xx (bad data, no such database) is reported and not retried.
Needs fsmon_stream.py beside it.
"""
import argparse
import datetime
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import fsmon_stream

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
TAGS = ("group", "event_type", "cmd", "user")
INT_FIELDS = ("pid", "ppid", "tgid", "file_size")


def escape_key(s):
    """Measurement names, tag keys and values, field keys: escape comma, equals, space."""
    return str(s).replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def escape_str(s):
    """String field values: escape backslash and double quote."""
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Points:
    def __init__(self, measurement, host):
        self.measurement, self.host, self.last_ns = escape_key(measurement), host, 0

    def line(self, ev):
        tags = {"host": self.host, **{k: ev.get(k) for k in TAGS}}
        tagset = "".join(f",{k}={escape_key(v)}" for k, v in tags.items() if v not in (None, ""))
        fields = [f"path={escape_str(ev.get('path', ''))}"]
        fields += [f"{k}={int(ev[k])}i" for k in INT_FIELDS if k in ev]
        fields += [f"chain={escape_str(ev['chain'])}"] if ev.get("chain") else []
        fields += [f"{k}=true" for k in ("lost", "unresolved") if ev.get(k)]
        us = (datetime.datetime.fromisoformat(ev["time"]) - EPOCH) // datetime.timedelta(microseconds=1)
        self.last_ns = max(us * 1000, self.last_ns + 1)  # distinct, never decreasing
        return f"{self.measurement}{tagset} {','.join(fields)} {self.last_ns}"


def request(url, body=None, retries=3):
    """POSTs; True on 2xx. Retries network errors and 5xx with backoff."""
    for attempt in range(retries + 1):
        try:
            urllib.request.urlopen(urllib.request.Request(url, body, method="POST"), timeout=10).close()
            return True
        except urllib.error.HTTPError as e:
            error = f"HTTP {e.code}: {e.read().decode(errors='replace').strip()}"
            if e.code < 500:
                break
        except OSError as e:
            error = str(e)
        if attempt < retries:
            time.sleep(min(2 ** attempt, 30))
    print(f"fsmon-to-influxdb: {url.split('?')[0]}: {error}", file=sys.stderr)
    return False


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsmon_stream.add_arguments(p)
    p.add_argument("--url", default="http://127.0.0.1:8086", help="InfluxDB base URL (default http://127.0.0.1:8086)")
    p.add_argument("--db", default="fsmon", help="database (default fsmon)")
    p.add_argument("--create-db", action="store_true", help="CREATE DATABASE first (needs the right to)")
    p.add_argument("--measurement", default="fsmon_event")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--hostname", default=socket.gethostname(), help="the host tag (default: this host's name)")
    p.add_argument("--batch", type=int, default=1000, help="points per write at most (default 1000)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds before a partial batch is written")
    p.add_argument("--retries", type=int, default=3)
    args = p.parse_args()
    auth = {"u": args.username, "p": args.password} if args.username else {}
    base = args.url.rstrip("/")
    if args.create_db:
        q = urllib.parse.urlencode({"q": f'CREATE DATABASE "{args.db}"', **auth})
        if not request(f"{base}/query?{q}", retries=args.retries):
            return 1
    write_url = f"{base}/write?" + urllib.parse.urlencode({"db": args.db, "precision": "ns", **auth})
    points = Points(args.measurement, args.hostname)
    sub = fsmon_stream.connect(args, "fsmon-to-influxdb")
    written = 0
    for batch in sub.batches(args.batch, args.interval):
        body = "\n".join(points.line(ev) for ev in batch).encode()
        if request(write_url, body, args.retries):
            written += len(batch)
        if missed := sub.take_missed():
            request(write_url, f"fsmon_missed,host={escape_key(args.hostname)} missed={missed}i".encode(), args.retries)
    print(f"fsmon-to-influxdb: wrote {written} points", file=sys.stderr)
    return fsmon_stream.end_of_stream(sub)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
