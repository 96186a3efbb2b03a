"""Summarise a py-spy profile in collapsed-stack form (what `--profile` records): the share of
samples in which each function is on the stack (inclusive) and at the top (self).

    python -m bench.profile PROFILE.txt [--top 40] [--match ebsemu/]
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path


def frame_name(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (to/module.py)`: one entry per function."""
    func, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    return f"{func} ({'/'.join(path.split('/')[-2:])})" if path else func


def summarise(path: Path) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [frame_name(f) for f in stack.split(";") if f]
        for name in set(frames):
            inclusive[name] += samples
        if frames:
            own[frames[-1]] += samples
    return total, inclusive, own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--match", default="", help="only functions whose entry contains this")
    args = parser.parse_args(argv)
    total, inclusive, own = summarise(args.profile)
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    print(f"{total} samples")
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"\n{title}:")
        shown = [(n, c) for n, c in counter.most_common() if args.match in n][: args.top]
        for name, count in shown:
            print(f"{100 * count / total:6.1f}%  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
