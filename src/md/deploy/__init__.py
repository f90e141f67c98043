"""Running a trained model at the gateway: export, int8, predict, sensor-health fallback.

- `runtime`: the `Predictor` interface every runnable model offers (a checkpoint or an
  exported file give the same outputs on the same camera frames) and `open_predictor`;
- `export` / `quantize`: `md export` to ONNX or TorchScript, static int8 for ONNX Runtime;
- `health` / `predict`: per-frame thermal health, the backup student, `md predict`.

This package sits above `md.eval` (it scores exported models with the same metrics) and
below `md.bench` and `md.cli`.
"""
