"""`c2f eval-moments preds.jsonl gt.jsonl [--out metrics.json]`: the standard moment-retrieval evaluator."""
from __future__ import annotations

import argparse
import json

from c2f_lib.cli_types import positive_float
from c2f_lib.data.schema import unlabelled_queries
from c2f_lib.errors import UserError
from c2f_lib.evaluation.moments import evaluate_files
from c2f_lib.utils import atomic_write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("preds", help="predictions jsonl (QVHighlights submission format)")
    parser.add_argument("gt", help="ground-truth moments jsonl (c2f MomentQuery / QVHighlights layout)")
    parser.add_argument("--out", help="write all metrics to this json file")
    parser.add_argument("--clip-len", type=positive_float, default=2.0,
                        help="seconds per saliency clip in the GT (QVHighlights: 2)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="evaluate only the GT queries that have a prediction")


def main(args: argparse.Namespace) -> int:
    unlabelled = unlabelled_queries(args.gt)
    if unlabelled:
        raise UserError(f"{len(unlabelled)} ground-truth queries have no relevant_windows (first qid "
                        f"{unlabelled[0].qid!r}); an unlabelled split (e.g. QVHighlights test) cannot be evaluated "
                        f"here: submit its predictions to the benchmark's server", args.gt)
    metrics = evaluate_files(args.preds, args.gt, clip_len=args.clip_len, match_number=not args.allow_missing)
    print(json.dumps(metrics["brief"], indent=2))
    if args.out:
        atomic_write_json(args.out, metrics, strict=True)
    return 0
