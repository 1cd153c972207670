#!/usr/bin/env python3
"""Publish fsmon events to NATS, one message per event: the fleet path.

usage: fsmon-to-nats.py publish [--server nats://127.0.0.1:4222] [--prefix fsmon]
                                [--hostname H] [--socket PATH] [--group G] [--count N]
       fsmon-to-nats.py consume [--server URL] [--subject 'fsmon.>'] [--count N]

publish: every event goes to <prefix>.<host>.<group> (e.g. fsmon.web1._global) as the log's
JSON with "group" and "host" added; a "this client missed N events" notice goes to
<prefix>.<host>. Dots and spaces in host and group names become '_' (dots separate subject
tokens). Run one publisher per host, next to its daemon.
consume: one process subscribed to the whole fleet ('fsmon.>'; or 'fsmon.*.nginx' for one
group everywhere, 'fsmon.web1.>' for one host) prints "SUBJECT JSON" lines.

The NATS client is the official nats-py (`pip install nats-py`; `cargo xtask setup` puts it
in .tools/python: run with PYTHONPATH=.tools/python). It reconnects by itself and buffers
what is published meanwhile. Core NATS is at-most-once: for persistence, put a JetStream
stream on 'fsmon.>'. Needs fsmon_stream.py beside it.
"""
import argparse
import asyncio
import json
import re
import socket
import sys

import fsmon_stream

def token(name):
    """A name usable as one subject token."""
    return re.sub(r"[.*>\s]", "_", name) or "_"


async def connect_nats(server, name):
    try:
        import nats
    except ImportError:
        sys.exit("fsmon-to-nats: the nats-py package is missing: pip install nats-py "
                 "(or `cargo xtask setup`, then PYTHONPATH=.tools/python)")

    async def error(e):
        print(f"fsmon-to-nats: NATS: {e}", file=sys.stderr)
    try:
        return await nats.connect(server, name=name, error_cb=error, max_reconnect_attempts=-1)
    except Exception as e:  # nats-py raises its own error types and OSError
        sys.exit(f"fsmon-to-nats: cannot connect to {server}: {e}")


async def publish(args):
    host = token(args.hostname)
    nc = await connect_nats(args.server, f"fsmon-to-nats@{args.hostname}")
    path = fsmon_stream.socket_path(args)
    try:
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    except OSError as e:
        sys.exit(f"fsmon-to-nats: cannot connect to {path}: {e} (is `sudo fsmon daemon` running?)")
    writer.write(json.dumps({"op": "subscribe", **({"group": args.group} if args.group else {})}).encode() + b"\n")
    ack = json.loads(await reader.readline() or b"{}")
    if not ack.get("ok"):
        sys.exit(f"fsmon-to-nats: subscribe refused: {ack}")
    print(f"fsmon-to-nats: subscribed to {args.group or 'every group'} on {path}, "
          f"publishing to {args.prefix}.{host}.<group>", file=sys.stderr, flush=True)
    sent, status = 0, 0
    while args.count is None or sent < args.count:
        line = await reader.readline()
        if not line:
            print("fsmon-to-nats: the daemon closed the connection", file=sys.stderr)
            status = 1
            break
        item = json.loads(line)
        if item.get("notice") == "missed":
            print(f"fsmon-to-nats: fell behind, the daemon skipped {item['missed']} events", file=sys.stderr)
            await nc.publish(f"{args.prefix}.{host}", json.dumps({"host": args.hostname, **item}).encode())
            continue
        item["host"] = args.hostname
        await nc.publish(f"{args.prefix}.{host}.{token(item['group'])}", json.dumps(item).encode())
        sent += 1
    await nc.drain()  # sends what is buffered, then closes
    print(f"fsmon-to-nats: published {sent} events", file=sys.stderr)
    return status


async def consume(args):
    nc = await connect_nats(args.server, "fsmon-consumer")
    done, received = asyncio.Event(), 0

    async def on_message(msg):
        nonlocal received
        print(msg.subject, msg.data.decode(), flush=True)
        received += 1
        if args.count and received >= args.count:
            done.set()
    await nc.subscribe(args.subject, cb=on_message)
    await nc.flush()  # the server has the subscription now
    print(f"fsmon-to-nats: consuming {args.subject} from {', '.join(args.server)}", file=sys.stderr, flush=True)
    await done.wait()
    await nc.drain()
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="daemon stream -> NATS (one per host)")
    fsmon_stream.add_arguments(pub)
    pub.add_argument("--prefix", default="fsmon", help="first subject token(s) (default fsmon)")
    pub.add_argument("--hostname", default=socket.gethostname(), help="this host's name in subjects and messages")
    con = sub.add_parser("consume", help="print what the fleet publishes")
    con.add_argument("--subject", default="fsmon.>", help="subject to subscribe (default 'fsmon.>')")
    con.add_argument("--count", type=int, help="stop after N messages")
    for sp in (pub, con):
        sp.add_argument("--server", default="nats://127.0.0.1:4222", help="NATS URL(s), comma-separated")
    args = p.parse_args()
    args.server = args.server.split(",")
    return asyncio.run(publish(args) if args.command == "publish" else consume(args))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
