#!/usr/bin/env python3
"""Heap per idle mailbox by owner, from a valgrind massif profile of the daemon (issue #5).

    python3 scripts/massif_summary.py massif.out MAILBOXES

Takes the profile's last detailed snapshot (with the harness: the peak, reached once every
mailbox idles), attributes each allocation to the first frame of its stack (allocation site
first) that names a known owner, and prints KiB per mailbox by owner, then the largest
allocation sites. BENCHMARKS.md shows how the profile is recorded.
"""
import collections
import re
import sys

OWNERS = [
    ("async-imap unsolicited channel (async_channel, concurrent_queue)",
     ["concurrent_queue", "async_channel"]),
    ("async-imap read buffer and parser", ["async_imap"]),
    ("rustls connection", ["rustls"]),
    ("tokio (task cells, IO registration, timers)", ["tokio::"]),
    ("idlesync status board", ["idlesync::status"]),
    ("idlesync (other)", ["idlesync::"]),
]
NODE = re.compile(r"^( *)n(\d+): (\d+) (.*)$")


def leaves(snapshot):
    stack, out = [], []
    for line in snapshot.split("\n"):
        m = NODE.match(line)
        if not m:
            continue
        depth = len(m.group(1))
        stack = stack[:depth] + [re.sub(r"^0x[0-9A-F]+: ", "", m.group(4))]
        if int(m.group(2)) == 0:
            out.append((int(m.group(3)), stack))
    return out


def main():
    path, n = sys.argv[1], int(sys.argv[2])
    snaps = [s for s in open(path).read().split("\nsnapshot=")[1:]
             if "heap_tree=detailed" in s or "heap_tree=peak" in s]
    snap = snaps[-1]
    heap = int(re.search(r"mem_heap_B=(\d+)", snap).group(1))
    print(f"heap {heap} B = {heap / 1024 / n:.2f} KiB per mailbox ({n} mailboxes)")
    by_owner, by_site = collections.Counter(), collections.Counter()
    for size, stack in leaves(snap):
        owner, site = "other", stack[-1]
        for i, frame in enumerate(stack):
            hit = [o for o, keys in OWNERS if any(k in frame for k in keys)]
            if hit:
                owner, site = hit[0], frame
                break
        by_owner[owner] += size
        by_site[site[:110]] += size
    for owner, size in by_owner.most_common():
        print(f"{size / 1024 / n:8.2f} KiB  {owner}")
    print("largest allocation sites:")
    for site, size in by_site.most_common(12):
        print(f"{size / 1024 / n:8.2f} KiB  {site}")


main()
