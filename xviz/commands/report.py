"""``xviz report OUTDIR``: rebuild the report page of an explain or evaluate output folder."""

from __future__ import annotations

from xviz import hookimpl


def cmd_report(args) -> int:
    from xviz.report import build_report

    print(f"wrote the report page {build_report(args.folder, args.labels)} (open it in a browser)")
    return 0


@hookimpl
def xviz_register_commands(subparsers):
    p = subparsers.add_parser("report", help="(re)build OUTDIR/index.html: every image and method side by side")
    p.add_argument("folder", metavar="OUTDIR", help="the --out folder of an `xviz explain` or `xviz evaluate` run")
    p.add_argument("--labels", metavar="FILE", help="true classes (CSV `file,class` or JSON); images in class-named "
                   "folders are labelled by their folder")
    p.set_defaults(func=cmd_report)
