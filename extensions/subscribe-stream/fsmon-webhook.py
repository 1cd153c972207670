#!/usr/bin/env python3
"""POST batches of fsmon events to a webhook: Slack, Discord, or your own server.

usage: fsmon-webhook.py --url URL [--style raw|slack|discord] [--batch N] [--interval S]
                        [--header 'Name: value' ...] [--retries N]
                        [--socket PATH] [--group G] [--count N]

  raw      {"host": H, "events": [...], "missed": N}: every event as logged, with its group
  slack    {"text": "..."}: an incoming-webhook message, one line per event (at most 20)
  discord  {"content": "..."}: the same, cut to Discord's 2000 characters

Events are sent in batches of up to --batch, at most --interval seconds after the first
event of a batch arrived. A failed POST (network error or 5xx) is retried with backoff,
then the batch is dropped with a message on stderr; a 4xx is not retried. While a POST is
retried, the daemon keeps streaming; if this client falls that far behind, the daemon
skips events for it and the next payload carries "missed". Needs fsmon_stream.py beside it.

  fsmon-webhook.py --style slack --url https://hooks.slack.com/services/T000/B000/XXXX
  fsmon-webhook.py --url http://127.0.0.1:8080/fsmon --header 'Authorization: Bearer s3cret'
"""
import argparse
import json
import socket
import sys
import time
import urllib.error
import urllib.request

import fsmon_stream


def payload(style, events, missed, host):
    if style == "raw":
        return {"host": host, "events": events, "missed": missed}
    lines = [f"`{e.get('event_type')}` {e.get('path')} by {e.get('cmd') or '?'} ({e.get('user') or '?'}) [{e.get('group')}]"
             for e in events[:20]]
    if len(events) > 20:
        lines.append(f"... and {len(events) - 20} more")
    if missed:
        lines.append(f"({missed} events missed: this webhook client fell behind)")
    text = f"fsmon on {host}: {len(events)} event(s)\n" + "\n".join(lines)
    return {"text": text} if style == "slack" else {"content": text[:2000]}


def post(url, body, headers, retries):
    """True when the server accepted the body (2xx)."""
    for attempt in range(retries + 1):
        req = urllib.request.Request(url, body, {"Content-Type": "application/json", **headers})
        try:
            urllib.request.urlopen(req, timeout=10).close()
            return True
        except urllib.error.HTTPError as e:
            error = f"HTTP {e.code} {e.reason}"
            if e.code < 500 and e.code != 429:
                break  # the server does not want this body: resending will not help
        except OSError as e:
            error = str(e)
        if attempt < retries:
            time.sleep(min(2 ** attempt, 30))
    print(f"fsmon-webhook: dropping a batch after {attempt + 1} attempt(s): {error}", file=sys.stderr)
    return False


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsmon_stream.add_arguments(p)
    p.add_argument("--url", required=True, help="where to POST")
    p.add_argument("--style", choices=["raw", "slack", "discord"], default="raw")
    p.add_argument("--batch", type=int, default=100, help="events per POST at most (default 100)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds before a partial batch is sent (default 2)")
    p.add_argument("--header", action="append", default=[], help="extra HTTP header, 'Name: value'")
    p.add_argument("--retries", type=int, default=3, help="retries of a failed POST (default 3)")
    p.add_argument("--hostname", default=socket.gethostname(), help="host name put in the payload")
    args = p.parse_args()
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    sub = fsmon_stream.connect(args, "fsmon-webhook")
    for batch in sub.batches(args.batch, args.interval):
        body = json.dumps(payload(args.style, batch, sub.take_missed(), args.hostname)).encode()
        post(args.url, body, headers, args.retries)
    return fsmon_stream.end_of_stream(sub)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
