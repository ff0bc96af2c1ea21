"""``xviz afs-report`` and ``xviz afs-update`` (filled in below)."""


def add_commands(subparsers):
    pass
