"""``xviz gallery``: write the documentation gallery (:func:`xviz.gallery.generate`)."""

from __future__ import annotations

import sys
import time

from xviz import hookimpl


def cmd_gallery(args) -> int:
    from xviz.gallery import generate

    started = time.perf_counter()
    methods, figures = generate(args.out, pm=args.pm, samples=args.samples, runs=args.runs, data=args.data,
                                figures=not args.methods_only, only=args.figure, pages_only=args.pages_only)
    for m in methods:
        if m.problem and m.images:
            print(f"gallery: method `{m.name}` reported: {m.problem}", file=sys.stderr)
    pending = [f for f in figures if f.missing or not f.page]
    print(f"wrote {len(methods)} method page(s) and {len(figures) - len(pending)} figure page(s) to {args.out}/ "
          f"in {time.perf_counter() - started:.0f} s"
          + (f"; not generated (pending or never made): {', '.join(f.figure.slug for f in pending)}" if pending else ""))
    return 0


@hookimpl
def xviz_register_commands(subparsers):
    from xviz.gallery import FIGURES
    from xviz.gallery.figures import DEFAULT_RUNS, DEFAULT_SAMPLES

    p = subparsers.add_parser("gallery", help="write the documentation gallery: a page per method and per figure",
                              description="The documentation gallery, drawn by xviz itself.")
    p.add_argument("--out", default="docs/gallery", help="gallery folder (default: docs/gallery)")
    p.add_argument("--runs", default=DEFAULT_RUNS, help=f"where training runs are cached (default: {DEFAULT_RUNS})")
    p.add_argument("--data", help="root of the real datasets: figures are made on them instead of synthetic data")
    p.add_argument("--samples", default=DEFAULT_SAMPLES, help=f"images for the method pages (default: {DEFAULT_SAMPLES})")
    p.add_argument("--methods-only", action="store_true", help="write the method pages only; keep the figure pages")
    p.add_argument("--pages-only", action="store_true", help="rewrite the figure pages from the pictures already "
                   "there, without running their commands (no training)")
    p.add_argument("--figure", action="append", metavar="SLUG",
                   help="regenerate only this figure page (repeat; the method pages are kept); "
                   + ", ".join(f.slug for f in FIGURES))
    p.set_defaults(func=cmd_gallery)
