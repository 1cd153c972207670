#!/usr/bin/env python3
"""Pull fsmon's metrics and print a summary, or check them Nagios-style.

usage: fsmon-metrics.py [--url http://127.0.0.1:9845/metrics | --socket PATH] [--raw]
       fsmon-metrics.py [...] --check [--overflows-warn N] [--overflows-crit N]
                        [--unwritten-warn N] [--unwritten-crit N] [--missed-warn N] [--missed-crit N]
                        [--disk-free-warn SIZE] [--disk-free-crit SIZE] [--state FILE]

Source: the HTTP endpoint (`fsmon daemon --metrics-listen ADDR`) with --url, else the
control socket's `metrics` request (--socket, else the config's, else /run/fsmon/fsmon-<UID>.sock).

--check prints one Nagios/Icinga line with performance data and exits 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN (daemon unreachable, bad answer). A counter threshold N trips when
the counter is >= N; with --state FILE, on its increase since the last run instead (the
counters only grow, so without a state file one overflow stays a warning until restart).
Defaults: a queue overflow is a WARNING, an unwritten event CRITICAL; disk and missed-event
thresholds are off unless given (and the disk ones when the daemon's file output is off). SIZE: bytes, or with B KB MB GB TB (powers of 1024).

  fsmon-metrics.py --url http://127.0.0.1:9845/metrics
  fsmon-metrics.py --check --disk-free-warn 5GB --disk-free-crit 1GB --state /var/tmp/fsmon-check.json
"""
import argparse
import json
import os
import re
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), os.pardir, "lib"))
from fsmon_socket import CONFIG_HELP, SOCKET_HELP, escape, socket_path  # noqa: E402
import fsmon_socket  # noqa: E402

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
SAMPLE = re.compile(r'^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def fetch(args):
    """The Prometheus text, from the HTTP endpoint or the socket."""
    if args.url:
        url = args.url if "://" in args.url else f"http://{args.url}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()
    with fsmon_socket.connect(socket_path(args), 10) as s:
        s.sendall(b'{"op":"metrics"}\n')
        resp = json.loads(s.makefile("rb").readline() or b"{}")
    if not resp.get("ok"):
        raise ValueError(f"the daemon answered {escape(resp)}")
    return resp["text"]


def parse(text):
    """{metric name: [(labels, value), ...]} from the text exposition format."""
    out = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m and not line.startswith("#"):
            out.setdefault(m[1], []).append((dict(LABEL.findall(m[2] or "")), float(m[3])))
    return out


def size(text):
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)B?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 500MB, 5GB)")
    return int(float(m[1]) * 1024 ** " KMGT".index(m[2] or " "))


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def total(m, name, **want):
    """The sum of a metric's samples (those with the wanted labels)."""
    return sum(v for labels, v in m.get(name, []) if all(labels.get(k) == x for k, x in want.items()))


def sum_by(m, name, label):
    out = {}
    for labels, v in m.get(name, []):
        out[labels.get(label, "")] = out.get(labels.get(label, ""), 0) + v
    return out


def summary(m, source):
    per = lambda d: ", ".join(f"{k} {v:.0f}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "-"
    t = lambda name, **want: total(m, name, **want)
    up = time.time() - t("fsmon_start_time_seconds")
    tracker = [k for k, v in sum_by(m, "fsmon_process_tracker_active", "tracker").items() if v] or ["?"]
    hits, misses = t("fsmon_dir_cache_hits_total"), t("fsmon_dir_cache_misses_total")
    rows = [
        ("up", f"{up / 3600:.2f} h, tracker {tracker[0]}"),
        ("events logged", f"{t('fsmon_events_logged_total'):.0f}  ({per(sum_by(m, 'fsmon_events_logged_total', 'group'))})"),
        ("  by type", per(sum_by(m, "fsmon_events_logged_total", "type"))),
        ("kernel events read", f"{t('fsmon_kernel_events_total'):.0f}"),
        ("queue overflows", f"{t('fsmon_queue_overflows_total'):.0f}"),
        ("events unwritten", f"{t('fsmon_events_unwritten_total'):.0f}"),
        ("unresolved paths", f"{t('fsmon_unresolved_paths_total', scope='maybe_inside'):.0f}"),
        ("subscribers", f"{t('fsmon_subscribers'):.0f}, missed {t('fsmon_subscriber_missed_events_total'):.0f} events"),
        ("log bytes written", human(t("fsmon_log_bytes_written_total"))),
        ("log disk free", human(t("fsmon_log_disk_free_bytes")) if "fsmon_log_disk_free_bytes" in m else "- (file output off)"),
        ("watching", f"{t('fsmon_watched_paths'):.0f} path(s) in {t('fsmon_groups'):.0f} group(s)"),
        ("dir cache", f"{t('fsmon_dir_cache_entries'):.0f} entries, "
                      f"hit rate {100 * hits / (hits + misses) if hits + misses else 100:.1f}%"),
    ]
    print(f"fsmon metrics from {source}")
    for k, v in rows:
        print(f"  {k:<20} {v}")


def check(m, args):
    """(status, message) for Nagios; counters as totals or, with --state, increases."""
    counters = {"overflows": "fsmon_queue_overflows_total", "unwritten": "fsmon_events_unwritten_total",
                "missed": "fsmon_subscriber_missed_events_total", "logged": "fsmon_events_logged_total"}
    now = {k: total(m, name) for k, name in counters.items()}
    seen = dict(now)
    if args.state:
        try:
            with open(args.state) as f:
                before = json.load(f)
            # A counter that went down: the daemon restarted, count from zero.
            seen = {k: v - before.get(k, 0) if v >= before.get(k, 0) else v for k, v in now.items()}
        except (OSError, ValueError):
            pass  # first run: totals
        with open(args.state, "w") as f:
            json.dump(now, f)
    status, problems = OK, []
    for key, label in (("overflows", "queue overflows"), ("unwritten", "unwritten events"), ("missed", "events missed by subscribers")):
        for level, limit in ((CRITICAL, getattr(args, f"{key}_crit")), (WARNING, getattr(args, f"{key}_warn"))):
            if limit is not None and seen[key] >= limit:
                status = max(status, level)
                problems.append(f"{seen[key]:.0f} {label}")
                break
    disk = total(m, "fsmon_log_disk_free_bytes") if "fsmon_log_disk_free_bytes" in m else None
    for level, limit in ((CRITICAL, args.disk_free_crit), (WARNING, args.disk_free_warn)):
        if limit is not None and disk is not None and disk < limit:
            status = max(status, level)
            problems.append(f"log disk free {human(disk)} < {human(limit)}")
            break
    text = "; ".join(problems) or f"{now['logged']:.0f} events logged, no overflows or unwritten events"
    perf = " ".join(f"{k}={v:.0f}c" for k, v in now.items()) + (f" disk_free={disk:.0f}B" if disk is not None else "")
    return status, f"FSMON {['OK', 'WARNING', 'CRITICAL'][status]} - {text} | {perf}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="the metrics endpoint, e.g. http://127.0.0.1:9845/metrics (default: use the socket)")
    p.add_argument("--socket", help=SOCKET_HELP)
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--raw", action="store_true", help="print the Prometheus text as it is")
    p.add_argument("--check", action="store_true", help="Nagios-style check: one line, exit 0/1/2/3")
    p.add_argument("--overflows-warn", type=float, default=1)
    p.add_argument("--overflows-crit", type=float)
    p.add_argument("--unwritten-warn", type=float)
    p.add_argument("--unwritten-crit", type=float, default=1)
    p.add_argument("--missed-warn", type=float)
    p.add_argument("--missed-crit", type=float)
    p.add_argument("--disk-free-warn", type=size, metavar="SIZE")
    p.add_argument("--disk-free-crit", type=size, metavar="SIZE")
    p.add_argument("--state", metavar="FILE", help="keep counters here; thresholds apply to increases")
    args = p.parse_args()
    try:
        text = fetch(args)
        metrics = parse(text)
        if "fsmon_start_time_seconds" not in metrics:
            raise ValueError("no fsmon metrics in the answer")
    except (OSError, ValueError) as e:
        if args.check:
            print(f"FSMON UNKNOWN - cannot read the metrics from {args.url or 'the socket'}: {e}")
            return UNKNOWN
        sys.exit(f"fsmon-metrics: {e}")
    if args.raw:
        print(text, end="")
    elif args.check:
        status, line = check(metrics, args)
        print(line)
        return status
    else:
        summary(metrics, args.url or socket_path(args))
    return OK


if __name__ == "__main__":
    sys.exit(main())
