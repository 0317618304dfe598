#!/usr/bin/env bash
# Every GPU check and benchmark of mmssl, one after another; all output goes to $OUT/gpu.txt (and stdout).
#
# Run from the repository root on the GPU machine (BENCHMARKS.md gives the device calls, the wheels to carry and
# the shards to make beforehand):
#   bash benchmarks/gpu_all.sh        # every part the installed packages allow
#   bash benchmarks/gpu_all.sh main   # CUDA tests of benchmarks/, train_step.py, pipeline_gpu.py    (~6 min)
#   bash benchmarks/gpu_all.sh av     # CUDA tests of pipelines/ and benchmarks/pipeline.py (need PyAV)  (~3 min)
# Wheels found in .whl/ and .whl-av/ are installed first (into /tmp/site). A part whose packages are missing says
# so and is skipped; every part runs under its own time limit, so one that hangs cannot take the others' time.
set -u
part=${1:-all}
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONUNBUFFERED=1

body() {
  for dir in .whl .whl-av; do
    if compgen -G "$dir/*.whl" > /dev/null; then
      $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$dir"/*.whl \
        || echo "!!! installing the wheels of $dir failed"
    fi
  done
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}

  has() { $PY -c "import $1" 2> /dev/null; }

  run() {  # run LIMIT_S NAME COMMAND...: prints a header, the command's output and its exit status and time
    local limit=$1 name=$2
    shift 2
    echo
    echo "### $name ($(date +%T), limit ${limit} s): $*"
    local start=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@"
    echo "### $name: exit $? after $((SECONDS - start)) s"
  }

  echo "### machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2> /dev/null || echo "no nvidia-smi"
  echo "cores $(nproc)"
  $PY -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'timm', timm.__version__)"
  for m in av decord webdataset PyNvVideoCodec; do has $m && echo "$m: installed" || echo "$m: missing"; done
  workers=$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))

  if [ "$part" = all ] || [ "$part" = main ]; then
    run 60 "CUDA tests of the benchmarks" $PY -m pytest -q -rs -p no:cacheprovider tests/benchmarks -k cuda
    run 300 "train_step.py: MAE ViT-B/16 b256 and VideoMAE ViT-B b32, ours vs baseline" \
      $PY benchmarks/train_step.py --model both
    if [ -f .gpu-media/shards/mae/index.json ] && [ -f .gpu-media/shards/videomae/index.json ]; then
      media=.gpu-media  # made beforehand with `pipeline_gpu.py --prepare --workdir .gpu-media` and carried
    elif has av; then
      media=/tmp/mmssl-gpu-media  # made here
    else
      media=
      echo "### pipeline_gpu.py skipped: no carried shards in .gpu-media and no PyAV to make them"
    fi
    if [ -n "$media" ]; then
      run 230 "pipeline_gpu.py: shards vs synthetic (nvjpeg, CPU decode, NVDEC, decord), $workers workers" \
        $PY benchmarks/pipeline_gpu.py --workdir "$media" --workers "$workers"
    fi
  fi

  if [ "$part" = all ] || [ "$part" = av ]; then
    if has av; then
      run 120 "CUDA tests of the pipelines" $PY -m pytest -q -rs -p no:cacheprovider tests/pipelines -k "cuda or nvdec"
      run 200 "pipeline.py with its GPU paths (nvjpeg, NVDEC, fbank), $workers workers" \
        $PY benchmarks/pipeline.py --workers "$workers" --videos 32 --images 512 --clips 64
    else
      echo "### CUDA tests of the pipelines and pipeline.py skipped: PyAV is not installed (carry .whl-av)"
    fi
  fi
  echo
  echo "### done ($(date +%T)); the log is $OUT/gpu.txt"
}

body 2>&1 | tee -a "$OUT/gpu.txt"
