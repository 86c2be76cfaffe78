#!/usr/bin/env bash
# The CUDA path, checked and measured in one go (< 9 min on one GPU): device name, the CUDA tests (the bf16
# route's included; skipped on a GPU without native bf16), the raw model in fp32 and bf16 on the same texts
# (packed vs dense kernels, batch sweep, bf16/fp32 ratios) and the service vs naive on SENTIMENT_DEVICE=cuda
# (SENTIMENT_PRECISION=auto: bf16 where the GPU has it), then the service alone in fp32 to compare.
#
#   bash bench/gpu.sh            # from the repository root, with the project venv active
#
# Needs a CUDA build of torch 2.13.0 (the PyPI Linux wheel bundles CUDA; the dev box has the +cpu wheel) and wrk.
# Without a visible CUDA device it stops at once with exit code 3 and says why: nothing is measured on CPU.
# Figures go to stdout and bench/results/gpu_*.json (python -m bench.report does not read them; copy by hand).
set -euo pipefail
cd "$(dirname "$0")/.."

python - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    print(
        f"bench/gpu.sh: no CUDA device visible (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
        "run it on a GPU machine with a CUDA build of torch",
        file=sys.stderr,
    )
    sys.exit(3)
props = torch.cuda.get_device_properties(0)
print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB, capability {props.major}.{props.minor}; "
      f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; "
      f"native bf16: {torch.cuda.is_bf16_supported(including_emulation=False)}")
PY
command -v wrk >/dev/null || { echo "bench/gpu.sh: wrk not found (apt-get install -y wrk)" >&2; exit 4; }

echo "== CUDA tests"
timeout 180 python -m pytest -q -x tests/test_cuda.py tests/test_model.py

echo "== raw model on cuda: kernels (packed / dense / auto, mixed and length-sorted), fp32 and bf16"
timeout 200 python -m bench.raw_model --device cuda --kernels --kernel-batch-sizes 1,16,64,256 --kernel-threads 1 \
  --precision fp32,bf16 --seconds 1 --force --out gpu_raw_kernels

echo "== raw model on cuda: batch sweep, fp32 and bf16"
timeout 120 python -m bench.raw_model --device cuda --batch-sizes 1,8,64,256 --streams 1 --seconds 2 \
  --precision fp32,bf16 --force --out gpu_raw

echo "== service vs naive on cuda (1 model worker; precision auto)"
timeout 240 python -m bench.serve --targets service,naive --clients 1,64,256 --seconds 8 --raw-seconds 1 \
  --env SENTIMENT_DEVICE=cuda --force --out gpu_serve
python - <<'PY'
import json

r = json.load(open("bench/results/gpu_serve.json"))
for name, t in r["targets"].items():
    for p in t.get("points", []):
        print(f"{name:>8} c={p['clients']:<4} {p['throughput']:8.1f} req/s  p50 {p['p50_ms']:7.2f}  p99 {p['p99_ms']:8.2f} ms  "
              f"batch {p.get('mean_batch_size') or 0:.1f}")
print(json.dumps(r["ratios"]["per_clients"], indent=1))
PY

echo "== service alone on cuda in fp32, to compare with auto above"
timeout 120 python -m bench.serve --targets service --clients 64,256 --seconds 8 --raw-seconds 1 --open-loop '' \
  --env SENTIMENT_DEVICE=cuda SENTIMENT_PRECISION=fp32 --force --out gpu_serve_fp32
python - <<'PY'
import json

auto, fp32 = (json.load(open(f"bench/results/{name}.json"))["targets"]["service"] for name in ("gpu_serve", "gpu_serve_fp32"))
for p in fp32.get("points", []):
    a = next((q for q in auto.get("points", []) if q["clients"] == p["clients"]), None)
    ratio = f"  auto/fp32 {a['throughput'] / p['throughput']:.2f}x" if a and p["throughput"] else ""
    print(f"service fp32 c={p['clients']:<4} {p['throughput']:8.1f} req/s  p50 {p['p50_ms']:7.2f}  p99 {p['p99_ms']:8.2f} ms{ratio}")
PY
