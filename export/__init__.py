"""Offline side of sarnn-serve: the SA-RNN model, its training, ONNX export and verification."""
