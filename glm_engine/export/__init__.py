"""Export to ONNX and TensorRT engines, which the graph-level backends run (see ``backends/tensorrt``)."""
