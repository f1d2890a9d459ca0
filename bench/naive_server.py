"""The benchmark's naive peer: the recommender as a plain FastAPI app on torch eager.

What a first version of this service would look like, written the documented way and nothing
more: a pydantic request model, a sync endpoint (FastAPI runs it in its thread pool), Feast's
``FeatureStore.get_online_features`` per request, the trained ``SequentialRecommender`` in torch
eager mode under ``torch.inference_mode``, ``torch.topk``. One uvicorn worker on 127.0.0.1.
Bench-only code: serving/ never imports torch.

    python -m bench.naive_server --model-dir runs/latest/.../recommender_model \\
        --catalogue exported/recommender/catalogue.json --feature-repo feature_store --port 18404
"""

# No `from __future__ import annotations` here: FastAPI must resolve the request model, a class
# local to build_app, from the endpoint's real annotation.
import argparse
import json
import logging
import threading
from pathlib import Path

logger = logging.getLogger(__name__)


def build_app(model_dir: Path, catalogue_path: Path, feature_repo: Path):
    """The FastAPI app over the torch model, the catalogue and the Feast repo."""
    import torch
    from fastapi import FastAPI, HTTPException
    from feast import FeatureStore
    from pydantic import BaseModel, Field

    from components.common.recommender_model import load_recommender

    model = load_recommender(model_dir).eval()
    catalogue = json.loads(catalogue_path.read_text(encoding="utf-8"))
    max_history = int(catalogue["max_history"])
    item_ids = [""] * (len(catalogue["items"]) + 1)
    for row in catalogue["items"]:
        item_ids[int(row["index"])] = row["item_id"]
    index_of = {code: i for i, code in enumerate(item_ids) if i}
    store = FeatureStore(repo_path=str(feature_repo))
    # The sqlite online store shares one connection across the thread pool.
    lock = threading.Lock()

    class Request(BaseModel):
        user_id: str = Field(min_length=1, max_length=64)
        k: int = Field(default=10, ge=1, le=100)

    app = FastAPI()

    @app.post("/predict")
    def predict(req: Request) -> dict:
        with lock:
            found = store.get_online_features(
                features=["customer_history:recent_items"],
                entity_rows=[{"customer_id": req.user_id}],
            ).to_dict()["recent_items"][0]
        history = [index_of[c] for c in (found or []) if c in index_of][-max_history:]
        if not history:
            raise HTTPException(status_code=404, detail="no history")
        row = torch.zeros((1, max_history), dtype=torch.long)
        row[0, max_history - len(history) :] = torch.tensor(history)
        with torch.inference_mode():
            scores = model.score_next(row)[0]
            scores[0] = -float("inf")
            scores[history] = -float("inf")
            top = torch.topk(scores, req.k)
        return {
            "user_id": req.user_id,
            "items": [
                {"item_id": item_ids[i], "score": float(s)}
                for i, s in zip(top.indices.tolist(), top.values.tolist(), strict=True)
            ],
        }

    @app.get("/ready")
    def ready() -> dict:
        return {"ready": True}

    return app


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m bench.naive_server")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--catalogue", type=Path, required=True)
    parser.add_argument("--feature-repo", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import uvicorn

    app = build_app(args.model_dir, args.catalogue, args.feature_repo)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
