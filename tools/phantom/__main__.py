"""``python -m tools.phantom --out DIR --kind ct|mr --n-series N --seed S``: write a demo folder."""

from __future__ import annotations

import argparse
import sys
import time

from tools.phantom.demo_folder import write_demo_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.phantom",
        description="Write a seeded folder of phantom DICOM studies "
        "(mixed geometry and transfer syntaxes).",
    )
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--kind", choices=("ct", "mr"), default="ct")
    parser.add_argument("--n-series", type=int, default=4, help="number of series (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 48), metavar=("I", "J", "K"))
    parser.add_argument(
        "--spacing", type=float, nargs=3, default=(4.0, 4.0, 6.0), metavar=("SI", "SJ", "SK")
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        records = write_demo_folder(
            args.out,
            kind=args.kind,
            n_series=args.n_series,
            seed=args.seed,
            shape=tuple(args.shape),
            spacing=tuple(args.spacing),
            progress=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except ValueError as err:
        print(f"phantom: {err}", file=sys.stderr)
        return 2
    columns = ("path", "recipe", "modality", "transfer_syntax", "patient_id", "n_files")
    rows = [[str(getattr(r, c)) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[n]) for row in rows)) for n, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    print(
        f"{len(records)} series, {sum(r.n_files for r in records)} files in {args.out} "
        f"({time.perf_counter() - start:.1f} s); ground truth in {args.out}/ground_truth"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
