"""Using a trained detector: the detector file, `Detector` (predictor), TorchScript / ONNX export,
truncated SVD, drawing detections."""
