"""Inference: fast paths (BN folded, channels_last, compile, ONNX Runtime), int8, predict, bench."""
