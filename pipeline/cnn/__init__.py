"""The CNN engine: plain array functions, layers, the YAML layer graph, training, ONNX export."""
