#!/usr/bin/env python3
"""fsmon events into Elasticsearch (or OpenSearch) through the _bulk API, for Kibana.

UNTESTED: no server available in CI (no Elasticsearch on the test machines). An example to
adapt: it follows the documented _bulk format but has never run against a server.

usage: fsmon-to-es.py [--url http://127.0.0.1:9200] [--index fsmon-%Y.%m.%d]
                      [--api-key KEY | --user U --password P] [--batch N] [--interval S]
                      [--socket PATH] [--group G] [--count N]

One document per event: the log fields plus "group", "host" and "@timestamp" (the event's
time), in a daily index named from the event's date. Uses only the standard library (no
elasticsearch client). Needs fsmon_stream.py beside it.
"""
import argparse
import base64
import datetime
import json
import socket
import sys
import urllib.error
import urllib.request

import fsmon_stream


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsmon_stream.add_arguments(p)
    p.add_argument("--url", default="http://127.0.0.1:9200")
    p.add_argument("--index", default="fsmon-%Y.%m.%d", help="index name, strftime of the event's time")
    p.add_argument("--api-key")
    p.add_argument("--user")
    p.add_argument("--password")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--hostname", default=socket.gethostname())
    args = p.parse_args()
    headers = {"Content-Type": "application/x-ndjson"}
    if args.api_key:
        headers["Authorization"] = f"ApiKey {args.api_key}"
    elif args.user:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{args.user}:{args.password}".encode()).decode()
    sub = fsmon_stream.connect(args, "fsmon-to-es")
    for batch in sub.batches(args.batch, args.interval):
        lines = []
        for ev in batch:
            when = datetime.datetime.fromisoformat(ev["time"])
            lines.append(json.dumps({"create": {"_index": when.strftime(args.index)}}))
            lines.append(json.dumps({"@timestamp": ev["time"], "host": args.hostname, **ev}))
        req = urllib.request.Request(args.url.rstrip("/") + "/_bulk", ("\n".join(lines) + "\n").encode(), headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                result = json.load(resp)
            if result.get("errors"):
                failed = [i for i in result["items"] if i.get("create", {}).get("error")]
                print(f"fsmon-to-es: {len(failed)} of {len(batch)} documents refused: "
                      f"{failed[0]['create']['error']}", file=sys.stderr)
        except (OSError, ValueError) as e:
            print(f"fsmon-to-es: {len(batch)} events not indexed: {e}", file=sys.stderr)
        if missed := sub.take_missed():
            print(f"fsmon-to-es: {missed} events were missed", file=sys.stderr)
    return fsmon_stream.end_of_stream(sub)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
