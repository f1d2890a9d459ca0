"""What the recommender and the generator models share: blocking work off the event loop, and the
V2 response around their output tensors."""

from __future__ import annotations

import asyncio
from typing import Any

from serving.kserve_compat import InferOutput, InferRequest, InferResponse, kserve
from serving.validation import v2_requested_outputs


class BlockingModel(kserve.Model):
    """A KServe model whose prediction is blocking work (ORT, Feast) done by :meth:`run_batch`.

    ``predict`` runs it in the event loop's executor, so readiness probes and other requests are
    still answered during a long request. Subclasses set ``self.version``; the CLI sets
    ``variant`` (the A/B arm, ``RECSYNTH_VARIANT``), which every V2 answer carries.
    """

    version: str
    variant: str = "stable"

    async def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict:
        """Run :meth:`run_batch` on the preprocessed ``payload`` without blocking the loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.run_batch, payload)

    def run_batch(self, payload: dict[str, Any]) -> dict:
        """The blocking body of :meth:`predict`; returns the payload with its ``results``."""
        raise NotImplementedError

    @staticmethod
    def request_context(payload: Any, outputs_allowed: Any) -> dict[str, Any]:
        """What postprocess needs about the request: protocol, V2 id and requested outputs.

        Args:
            payload: the request as preprocess received it (a V1 dict or a V2 InferRequest).
            outputs_allowed: the model's V2 output specs, to check the requested outputs against.
        """
        if isinstance(payload, InferRequest):
            return {
                "protocol": "v2",
                "request_id": payload.id,
                "requested_outputs": v2_requested_outputs(payload, outputs_allowed),
            }
        return {"protocol": "v1", "request_id": None, "requested_outputs": None}

    def v2_response(self, result: dict[str, Any], outputs: list[InferOutput]) -> InferResponse:
        """The V2 answer to the request in ``result``, tagged with the model version."""
        return InferResponse(
            response_id=result["request_id"] or "",
            model_name=self.name,
            model_version=self.version,
            infer_outputs=outputs,
            parameters={"model_version": self.version, "variant": self.variant},
            requested_outputs=result["requested_outputs"],
        )
