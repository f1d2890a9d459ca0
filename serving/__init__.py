"""KServe model servers for the two exported recsynth models.

``serving.recommender`` serves the ONNX sequential recommender (history from Feast), and
``serving.generator`` serves the ONNX session generator (sampling in numpy). Both run under
``python -m serving``; see docs/serving.md for the wire API. Nothing here imports torch or
``components``: a serving image carries onnxruntime, kserve and feast only.
"""
