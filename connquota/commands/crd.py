"""Print (or write) the CustomResourceDefinitions rendered from the API models.

Without --out, prints both CRDs as one multi-document YAML stream (pipe it to
`kubectl apply -f -`). With --out DIR, writes DIR/exchangeconnectionquotas.connquota.io.yaml and
DIR/exchangeegresspools.connquota.io.yaml (the committed crds/ folder is made this way).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare `connquota crd` options."""
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help="write one file per CRD into DIR instead of printing them",
    )


def run(args: argparse.Namespace) -> int:
    """Print the CRDs, or write them into --out."""
    from connquota.api.crd import CRDS, crd_file_name, render_all_yaml, render_crd, to_yaml

    if args.out is None:
        print(render_all_yaml(), end="")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for crd in CRDS:
        path = args.out / crd_file_name(crd)
        path.write_text(to_yaml(render_crd(crd)))
        print(f"wrote {path}")
    return 0
