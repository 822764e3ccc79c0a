"""``make bench``: every benchmark, each against a baseline measured in the same run.

    python -m bench.run [--only ingest|imports|segments|exports|catchup|scaled|clickhouse]
                        [-- benchmark options]

Figures go to stdout and to ``bench/out/*.json``; BENCHMARKS.md records them with the command.
"""

from __future__ import annotations

import argparse
import sys

from bench import catchup, clickhouse, exports, imports, ingest, scaled, segments

SUITES = {
    "ingest": ingest.main,
    "imports": imports.main,
    "segments": segments.main,
    "exports": exports.main,
    "catchup": catchup.main,
    "scaled": scaled.main,
    "clickhouse": clickhouse.main,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SUITES))
    args, rest = parser.parse_known_args()
    names = [args.only] if args.only else list(SUITES)
    for name in names:
        print(f"== {name}", flush=True)
        SUITES[name](rest if args.only else [])
    sys.stdout.flush()


if __name__ == "__main__":
    main()
