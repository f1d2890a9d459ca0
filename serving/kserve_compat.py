"""Import kserve without letting it read our command line.

``kserve.model_server`` runs ``argparse.parse_known_args()`` on ``sys.argv`` when it is imported,
and ``ModelServer.__init__`` takes its defaults from that parse. Our CLI's ``--model`` would be
taken as an abbreviation of kserve's ``--model_name``, and a pytest command line such as
``--max...`` is ambiguous to it and exits the process. So kserve is imported here, once, with
an argv holding only the program name; every ModelServer setting is then passed explicitly.
Every serving module imports kserve through this module.
"""

from __future__ import annotations

import sys

_saved_argv = sys.argv
sys.argv = _saved_argv[:1]
try:
    import kserve  # noqa: E402  (the argv swap above must run first)
    from kserve import model_server  # noqa: E402
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING  # noqa: E402
    from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady  # noqa: E402
    from kserve.protocol.infer_type import (  # noqa: E402
        InferInput,
        InferOutput,
        InferRequest,
        InferResponse,
    )
    from kserve.protocol.rest.server import RESTServer  # noqa: E402
finally:
    sys.argv = _saved_argv

__all__ = [
    "FASTAPI_APP_IMPORT_STRING",
    "RESTServer",
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "InvalidInput",
    "ModelNotFound",
    "ModelNotReady",
    "kserve",
    "model_server",
]
