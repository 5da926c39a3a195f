"""``feedalign data list``, ``fetch NAME`` and ``verify``: see, fill and check the dataset cache."""
from __future__ import annotations

import argparse

from . import UsageError


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)  # pragma: no cover


def _list(args: argparse.Namespace) -> int:
    from feedalign.data import status

    rows = status(data_dir=args.data_dir, cache_dir=args.cache_dir)
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        state = r.get("state") or ("present" if r["present"] else "missing")
        size = _human(r["size_bytes"]) if r["size_bytes"] else "-"
        print(f"{r['name']:<{width}}  {state:<7}  {size:>8}  {r['path']}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from feedalign.data import DatasetError, fetch

    if args.install and args.name.strip().lower().replace("_", "-") not in ("fashion-mnist", "fashionmnist"):
        raise UsageError(f"--install applies to fashion-mnist only (its Debian package); not to {args.name!r}")
    if args.cache_dir:  # a cache that cannot be written is said now, not after a download
        from pathlib import Path

        from ..files import check_writable
        folder = Path(args.cache_dir) / args.name
        if folder.is_dir():  # filled or repaired in place: a file inside it must be writable
            try:
                check_writable(folder / ".probe")
            except OSError as err:
                raise type(err)(err.errno, err.strerror, str(folder)) from None
        else:
            check_writable(folder)
    try:
        path = fetch(args.name, data_dir=args.data_dir, cache_dir=args.cache_dir, progress=True)
    except DatasetError:
        if not args.install:
            raise
        from feedalign.data.mnist import DEBIAN_PACKAGE, install_debian_package
        print(f"installing the Debian package {DEBIAN_PACKAGE} (--install)")
        install_debian_package()
        path = fetch(args.name, data_dir=args.data_dir, cache_dir=args.cache_dir, progress=True)
    print(f"{args.name}: generated on demand, nothing to fetch" if path is None else f"{args.name}: ready in {path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Hash every cached file of each dataset in full, as every load does; one line each, with the time it took."""
    import time

    from feedalign.data import REGISTRY, DatasetError, _spec

    specs = [_spec(n) for n in args.names] if args.names else [s for s in REGISTRY.values() if s.kind != "synthetic"]
    damaged = []
    for spec in specs:
        if spec.kind == "synthetic":
            print(f"{spec.name}: generated from its seed at every load; nothing cached")
            continue
        t0 = time.perf_counter()
        row = spec.status(args.data_dir, args.cache_dir)
        seconds = time.perf_counter() - t0
        if row["state"] == "missing":
            print(f"{spec.name}: not fetched  {row['path']}")
            continue
        print(f"{spec.name}: {row['state']}, {_human(row['size_bytes'])} hashed (SHA-256) in {seconds:.2f} s  {row['path']}")
        if row["state"] == "damaged":
            damaged.append((spec.name, row["damaged"]))
    if damaged:
        which = "; ".join(f"{name} ({', '.join(files)})" for name, files in damaged)
        fixes = " and ".join(f"`feedalign data fetch {name}`" for name, _ in damaged)
        raise DatasetError(f"damaged in the cache: {which}; {fixes} replaces them (kept until the replacement is in place)")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="list and fetch datasets", description=__doc__)
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(parser))

    def add_dirs(p):
        p.add_argument("--data-dir", metavar="D", help="your own folder holding datasets (default: $FEEDALIGN_DATA)")
        p.add_argument("--cache-dir", metavar="C", help="cache root (default: $FEEDALIGN_CACHE or ~/.cache/feedalign)")

    p_list = sub.add_parser("list", help="each dataset: present or not, where, size")
    add_dirs(p_list)
    p_list.set_defaults(func=_list)
    p_fetch = sub.add_parser("fetch", help="download (or generate) a dataset into the cache, verified")
    p_fetch.add_argument("name", metavar="NAME", help="dataset name, as `feedalign data list` shows")
    add_dirs(p_fetch)
    p_fetch.add_argument("--install", action="store_true",
                         help="fashion-mnist only: when no mirror answers, run `apt-get install -y dataset-fashion-mnist` "
                              "(needs root); without it feedalign only says the command")
    p_fetch.set_defaults(func=_fetch)
    p_verify = sub.add_parser("verify", help="hash every cached dataset file in full (as every load does) and say "
                              "which are damaged, with the time it took")
    p_verify.add_argument("names", nargs="*", metavar="NAME", help="datasets to check (default: all cached kinds)")
    add_dirs(p_verify)
    p_verify.set_defaults(func=_verify)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])
