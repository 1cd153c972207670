#!/usr/bin/env python3
"""Archive fsmon events to S3 or MinIO as gzipped JSONL objects, in batches.

UNTESTED: no server available in CI (no S3 or MinIO endpoint on the test machines). An
example to adapt: it follows boto3's documented API but has never run against a server.

usage: fsmon-to-s3.py --bucket B [--prefix fsmon/] [--endpoint-url http://minio:9000]
                      [--batch N] [--interval S] [--hostname H]
                      [--socket PATH] [--group G] [--count N]

Each batch (up to --batch events, or --interval seconds after its first event) becomes
  <prefix><host>/YYYY/MM/DD/<first event time>-<n>.jsonl.gz
one event per line, with "group". Credentials come from boto3's usual places (environment,
~/.aws, instance role). Needs boto3 (`pip install boto3`, Debian: python3-boto3) and
fsmon_stream.py beside it.
"""
import argparse
import gzip
import json
import socket
import sys

import fsmon_stream

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    fsmon_stream.add_arguments(p)
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", default="fsmon/")
    p.add_argument("--endpoint-url", help="for MinIO and other S3-compatible stores")
    p.add_argument("--batch", type=int, default=10000, help="events per object at most")
    p.add_argument("--interval", type=float, default=300, help="seconds before a partial batch is written")
    p.add_argument("--hostname", default=socket.gethostname())
    args = p.parse_args()
    try:
        import boto3
    except ImportError:
        sys.exit("fsmon-to-s3: the boto3 package is missing: pip install boto3")
    s3 = boto3.client("s3", endpoint_url=args.endpoint_url)
    sub = fsmon_stream.connect(args, "fsmon-to-s3")
    for n, batch in enumerate(sub.batches(args.batch, args.interval)):
        first = batch[0]["time"]  # 2026-05-07T10:00:01.204371+00:00
        key = f"{args.prefix}{args.hostname}/{first[:4]}/{first[5:7]}/{first[8:10]}/{first[:26]}-{n}.jsonl.gz"
        body = gzip.compress("".join(json.dumps(ev) + "\n" for ev in batch).encode())
        try:
            s3.put_object(Bucket=args.bucket, Key=key, Body=body, ContentEncoding="gzip",
                          ContentType="application/x-ndjson")
        except Exception as e:  # botocore's errors: report, keep going
            print(f"fsmon-to-s3: {key}: {len(batch)} events not archived: {e}", file=sys.stderr)
        if missed := sub.take_missed():
            print(f"fsmon-to-s3: {missed} events were missed before {key}", file=sys.stderr)
    return fsmon_stream.end_of_stream(sub)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
