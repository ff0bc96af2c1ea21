"""``xviz evaluate`` (work in progress)."""

from xviz.errors import XvizError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="measure how faithful explanation methods are (in progress)")
    p.set_defaults(func=_not_ready)


def _not_ready(args):
    raise XvizError("`xviz evaluate` is not available yet")
