"""``xviz gallery`` (work in progress)."""

from xviz.errors import XvizError


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("gallery", help="write the documentation gallery (in progress)")
    p.set_defaults(func=_not_ready)


def _not_ready(args):
    raise XvizError("`xviz gallery` is not available yet")
