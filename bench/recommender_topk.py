"""Top-k inside the ONNX graph or in numpy after it: which serves the recommender faster.

    python -m bench.recommender_topk --n-items 3388 --batch-sizes 1 8 64 --repeats 200

Builds a recommender of the given catalogue size (random weights: speed does not depend on
them), exports it twice with the project's exporter (scores out, and scores followed by a TopK
node), and times ONNX Runtime on CPU: ``scores`` + ``np.argpartition``/sort of the top k versus
the graph's own TopK. Prints the medians and writes bench/results/recommender_topk.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from components.common.recommender_model import (
    NextItemScorer,
    RecommenderConfig,
    SequentialRecommender,
)
from components.export.onnx_io import export_single_file

RESULTS = Path("bench/results/recommender_topk.json")


class TopKScorer(torch.nn.Module):
    """Scores then the k best item indices (padding column masked) inside the graph."""

    def __init__(self, scorer: NextItemScorer, k: int) -> None:
        super().__init__()
        self.scorer = scorer
        self.k = k

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        scores = self.scorer(item_ids)
        scores = torch.cat([torch.full_like(scores[:, :1], -1e30), scores[:, 1:]], dim=1)
        return torch.topk(scores, self.k, dim=1).indices.to(torch.float32)


def _numpy_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    scores = scores.copy()
    scores[:, 0] = -np.inf
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _median_us(fn, repeats: int) -> float:  # noqa: ANN001 - any zero-argument callable
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1e6 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-items", type=int, default=3388)
    p.add_argument("--history", type=int, default=20)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 64])
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    torch.manual_seed(0)
    cfg = RecommenderConfig(n_items=args.n_items, n_price_bands=5, max_history=args.history)
    text = torch.nn.functional.normalize(torch.randn(args.n_items + 1, 384), dim=1)
    model = SequentialRecommender(cfg, text, torch.arange(args.n_items + 1) % 5).eval()
    scorer = NextItemScorer(model).eval()
    example = torch.randint(1, args.n_items + 1, (2, 8))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"numpy": Path(tmp) / "scores.onnx", "graph": Path(tmp) / "topk.onnx"}
        for name, module, out_name in (
            ("numpy", scorer, "scores"),
            ("graph", TopKScorer(scorer, args.k), "top_items"),
        ):
            export_single_file(
                module,
                paths[name],
                example=example,
                input_name="item_ids",
                output_name=out_name,
                axes=("batch", "history"),
                opset=18,
                what=f"recommender ({name} top-k)",
            )
        sessions = {
            n: ort.InferenceSession(str(pth), options, providers=["CPUExecutionProvider"])
            for n, pth in paths.items()
        }
        for batch in args.batch_sizes:
            x = np.random.default_rng(0).integers(1, args.n_items + 1, (batch, args.history))
            x = x.astype(np.int64)
            via_numpy = _numpy_top_k(sessions["numpy"].run(None, {"item_ids": x})[0], args.k)
            in_graph = sessions["graph"].run(None, {"item_ids": x})[0].astype(np.int64)
            agree = float((via_numpy == in_graph).mean())
            numpy_us = _median_us(
                lambda x=x: _numpy_top_k(sessions["numpy"].run(None, {"item_ids": x})[0], args.k),
                args.repeats,
            )
            graph_us = _median_us(
                lambda x=x: sessions["graph"].run(None, {"item_ids": x}), args.repeats
            )
            rows.append(
                {
                    "batch": batch,
                    "numpy_topk_us": round(numpy_us, 1),
                    "graph_topk_us": round(graph_us, 1),
                    "same_items": agree,
                }
            )
            print(
                f"batch {batch:4d}: scores+numpy top-{args.k} {numpy_us:9.1f} us, "
                f"top-{args.k} in graph {graph_us:9.1f} us (same items {agree:.3f})"
            )
    result = {"n_items": args.n_items, "history": args.history, "k": args.k, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
