#!/usr/bin/env bash
# The checks that need a GPU, as ONE short run on a lent device machine (no network there; its python3
# holds a CUDA PyTorch). A task is lent one by chance, for 15 minutes in all, so this is prepared ahead:
#
#   here, once:  bash benchmarks/device_check.sh --prepare
#                  (gzipped MNIST from this machine's feedalign cache and the one wheel feedalign needs
#                   beyond the device's image, into the git-ignored folder .device/, about 11 MB)
#   there:       the device tool's run, command "bash benchmarks/device_check.sh", carry [".device"],
#                timeout_s 540; what it prints also lands in $OUT (cuda-tests.log, bench.txt,
#                bench.json, population-*.txt, engine.txt)
#
# It runs: the CUDA tests (the rules, their fused path and stacked members against the CPU),
# `feedalign bench --device cuda` for the whole fused family on the README's four networks,
# benchmarks/bench_population.py on the GPU for 784-100-10 and 784-240x7-10 (issue 15's GPU numbers),
# and benchmarks/bench_engine.py on the GPU (the engine reads its loss and accuracy back at every step,
# which a GPU pays as a synchronisation).
# PYTHON=... and DEVICE=cpu run the same steps here, to check the script itself.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    cache="${FEEDALIGN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/feedalign}/mnist"
    [[ -f "$cache/train-images-idx3-ubyte" ]] || { echo "no MNIST in $cache: run 'make data' first" >&2; exit 2; }
    grep -qxF '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
    mkdir -p .device/mnist .device/wheels
    for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
        gzip -c "$cache/$f" > ".device/mnist/$f.gz"
    done
    # tomli_w (run directories' config.toml) is not in the device's image; it is pure Python
    "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: -d .device/wheels "tomli_w==1.2.0"
    du -sh .device
    exit 0
fi

PYTHON="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-/tmp/device-check}"
ROUNDS="${ROUNDS:-7}"
mkdir -p "$OUT"
[[ -d .device/mnist ]] || { echo "no .device/ here: run 'bash benchmarks/device_check.sh --prepare' first" >&2; exit 2; }
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/feedalign-site .device/wheels/*.whl
export PYTHONPATH="/tmp/feedalign-site:$PWD/src" PYTHONUNBUFFERED=1
export FEEDALIGN_DATA="$PWD/.device" FEEDALIGN_CACHE=/tmp/feedalign-cache
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$OUT/torch.txt"

status=0
echo "== CUDA tests"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_rules.py tests/test_contract.py tests/test_population.py \
    -k "cuda" 2>&1 | tee "$OUT/cuda-tests.log" || status=1

echo "== step ratios"
"$PYTHON" -m feedalign bench --device "$DEVICE" --rules fa dfa ifa usf frsf brsf kp wm drtp --rounds "$ROUNDS" --no-epoch \
    --sizes 784-240x7-10:64 784-1000-1000-1000-10:128 784-240x100-10:64 784-100-10:64 \
    --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt" || status=1

for architecture in 784-100-10 784-240x7-10; do
    echo "== population of 8, $architecture"
    "$PYTHON" benchmarks/bench_population.py --device "$DEVICE" --architecture "$architecture" --members 8 \
        --rounds 3 2>&1 | tee "$OUT/population-$architecture.txt" || status=1
done

echo "== engine overhead"
"$PYTHON" benchmarks/bench_engine.py --device "$DEVICE" --rounds 3 --setup-runs 1 2>&1 | tee "$OUT/engine.txt" || status=1
exit $status
