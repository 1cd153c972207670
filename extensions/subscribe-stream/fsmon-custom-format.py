#!/usr/bin/env python3
"""fsmon's live stream as CSV, TSV, syslog (RFC 5424), Loki push JSON, or JSON lines.

usage: fsmon-custom-format.py --format csv|tsv|syslog|loki|json [--fields F,...]
                              [--socket PATH] [--group G] [--count N]
                              [--udp HOST:PORT] [--loki-url URL] [--batch N] [--interval S]

  csv, tsv  a header row, then one row per event (--fields picks and orders the columns;
            TSV escapes tab, newline and backslash as \\t \\n \\\\)
  syslog    RFC 5424 lines: <PRI>1 TIME HOST fsmon PID EVENT_TYPE [fsmon@32473 ...] PATH
            on stdout, or one datagram per line with --udp HOST:PORT (RFC 5426)
  loki      Loki push bodies {"streams":[...]}, one per batch, labels job/host/group/event_type
            and the event JSON as the log line; POSTed to --loki-url
            (http://loki:3100/loki/api/v1/push) or printed one per line
  json      the events as JSON lines (--fields: only those keys)

Needs fsmon_stream.py beside it. Examples:
  fsmon-custom-format.py --format csv > events.csv
  fsmon-custom-format.py --format syslog --udp 127.0.0.1:514
  fsmon-custom-format.py --format loki --loki-url http://127.0.0.1:3100/loki/api/v1/push
"""
import argparse
import csv
import datetime
import json
import socket
import sys
import urllib.request

import fsmon_stream

FIELDS = ["time", "group", "event_type", "path", "pid", "cmd", "user", "file_size", "ppid", "tgid", "chain"]
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
SD_ID = "fsmon@32473"  # 32473: the private enterprise number reserved for examples (RFC 5612)


def tsv_cell(value):
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def sd_value(value):
    """An RFC 5424 PARAM-VALUE: backslash, double quote and ] escaped."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_line(ev, host, facility):
    """RFC 5424: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG."""
    severity = 4 if ev.get("lost") else 6  # warning for a queue overflow, else informational
    params = " ".join(f'{k}="{sd_value(ev[k])}"'
                      for k in ("group", "cmd", "user", "file_size", "ppid", "tgid", "chain") if k in ev)
    return f"<{facility * 8 + severity}>1 {ev['time']} {host} fsmon {ev.get('pid') or '-'} " \
           f"{ev.get('event_type', '-')} [{SD_ID} {params}] {ev.get('path', '')}"


def loki_body(events, host):
    """One push request: the events grouped into streams by their labels."""
    streams = {}
    for ev in events:
        labels = {"job": "fsmon", "host": host, "group": ev.get("group", ""), "event_type": ev.get("event_type", "")}
        ns = (datetime.datetime.fromisoformat(ev["time"]) - EPOCH) // datetime.timedelta(microseconds=1) * 1000
        streams.setdefault(tuple(labels.items()), []).append([str(ns), json.dumps(ev, separators=(",", ":"))])
    return {"streams": [{"stream": dict(k), "values": v} for k, v in streams.items()]}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsmon_stream.add_arguments(p)
    p.add_argument("--format", required=True, choices=["csv", "tsv", "syslog", "loki", "json"])
    p.add_argument("--fields", help=f"columns for csv/tsv/json (default: {','.join(FIELDS)})")
    p.add_argument("--no-header", action="store_true", help="csv/tsv: no header row")
    p.add_argument("--hostname", default=socket.gethostname(), help="host name for syslog and Loki labels")
    p.add_argument("--facility", type=int, default=1, help="syslog facility number (default 1: user; 16-23: local0-7)")
    p.add_argument("--udp", metavar="HOST:PORT", help="syslog: send each line as a UDP datagram")
    p.add_argument("--loki-url", help="loki: POST each batch here instead of printing it")
    p.add_argument("--batch", type=int, default=500, help="loki: events per push (default 500)")
    p.add_argument("--interval", type=float, default=1.0, help="loki: seconds before a partial batch is pushed")
    args = p.parse_args()
    fields = args.fields.split(",") if args.fields else FIELDS
    sub = fsmon_stream.connect(args, "fsmon-custom-format")
    out = sys.stdout

    if args.format in ("csv", "tsv"):
        writer = csv.writer(out, lineterminator="\n") if args.format == "csv" else None
        row = writer.writerow if writer else lambda cells: out.write("\t".join(map(tsv_cell, cells)) + "\n")
        if not args.no_header:
            row(fields)
        for ev in sub.events():
            row([ev.get(k, "") for k in fields])
            out.flush()
    elif args.format == "syslog":
        udp = None
        if args.udp:
            host, port = args.udp.rsplit(":", 1)
            udp = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            udp.connect((host.strip("[]"), int(port)))
        for ev in sub.events():
            text = syslog_line(ev, args.hostname, args.facility)
            if udp:
                udp.send(text.encode())
            else:
                print(text, flush=True)
    elif args.format == "loki":
        for batch in sub.batches(args.batch, args.interval):
            body = json.dumps(loki_body(batch, args.hostname)).encode()
            if args.loki_url:
                req = urllib.request.Request(args.loki_url, body, {"Content-Type": "application/json"})
                try:
                    urllib.request.urlopen(req, timeout=10).close()
                except OSError as e:
                    print(f"fsmon-custom-format: Loki push of {len(batch)} events failed: {e}", file=sys.stderr)
            else:
                print(body.decode(), flush=True)
    else:
        for ev in sub.events():
            print(json.dumps({k: ev[k] for k in fields if k in ev} if args.fields else ev), flush=True)
    return fsmon_stream.end_of_stream(sub)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(0)
