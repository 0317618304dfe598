#!/usr/bin/env bash
# Every GPU figure of mmssl in one run of at most 8 minutes; the log goes to $OUT/gpu.txt (and stdout).
#
#   bash benchmarks/gpu_all.sh        # on a lent GPU machine, from the repository root, with .gpu-carry/ carried
#   bash benchmarks/gpu_all.sh tiny   # every part on the CPU with the tiny configs (what the tests run)
#   GPU_ALL_DRY=1 bash benchmarks/gpu_all.sh [tiny]   # only print each part's command line
#
# .gpu-carry/ is made here by benchmarks/gpu_pack.sh: site.tar.xz (PyAV, decord, PyNvVideoCodec, webdataset,
# braceexpand as unpacked cp312 wheels) and media/ (pipeline_gpu.py's shards). BENCHMARKS.md gives the device call.
#
# Each part runs under `timeout` with its own limit, and no limit reaches past the run's budget
# (GPU_ALL_BUDGET, 480 s): a part that hangs costs its own box only. The limits (s), which sum to 470:
#   unpack 25 (~15 measured) | CUDA and host-sync tests 40 | train_step MAE b256 compiled 95 (its cold compile,
#   ~60 s, then 2 rounds of 20 steps a side) | train_step VideoMAE b32 eager 40 | pipeline_gpu MAE 85 (the
#   compile again, from inductor's cache; synthetic, nvjpeg and CPU decode, each 2 + 3 + 6 s of boxes plus
#   building the run and starting 14 workers) | pipeline_gpu VideoMAE 140 (its one cold compile, then the same
#   boxes for NVDEC and decord) | pipeline.py --only image, 1024 images, 14 workers 45.
# The fast suite gets what is left of the budget when that is a minute or more (the parts seldom use their boxes).
# Compiled vs eager: the recipe compiles on CUDA, so every feed is measured against the compiled step; VideoMAE's
# step is compiled once, in pipeline_gpu.py (an earlier run spent over 100 s compiling it; every compiled step
# would also recompile on its second call because of the position-table caches, which the step's eager first call
# fills), and train_step.py compares it with the reference eagerly (MAE's line shows what compiling
# adds). Inductor's cache (TORCHINDUCTOR_CACHE_DIR) is shared by the parts, so MAE's second compile is mostly a
# cache hit.
set -u
mode=${1:-${GPU_ALL_MODE:-full}}
case "$mode" in full|tiny) ;; *) echo "usage: bash benchmarks/gpu_all.sh [full|tiny]" >&2; exit 2 ;; esac
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PY:-python3}
CARRY=${GPU_CARRY:-.gpu-carry}
BUDGET=${GPU_ALL_BUDGET:-480}
DRY=${GPU_ALL_DRY:-}
export PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/mmssl-inductor}
export TORCHINDUCTOR_FX_GRAPH_CACHE=1 TORCHINDUCTOR_AUTOGRAD_CACHE=1

start=$SECONDS

part() {  # part LIMIT_S NAME COMMAND...: the command under min(LIMIT_S, what is left of the budget)
  local limit=$1 name=$2
  shift 2
  if [ -n "$DRY" ]; then
    printf '### DRY %s (limit %s s):' "$name" "$limit"
    printf ' %q' "$@"
    echo
    return 0
  fi
  local left=$((BUDGET - (SECONDS - start)))
  if [ "$left" -lt 10 ]; then
    echo "### $name: not run, the ${BUDGET} s budget is spent"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo
  echo "### $name ($(date +%T), at $((SECONDS - start)) s, limit ${limit} s): $*"
  local t=$SECONDS rc
  timeout --signal=INT --kill-after=5 "$limit" "$@"
  rc=$?
  echo "### $name: exit $rc$([ "$rc" = 124 ] && echo ', its time box ran out') after $((SECONDS - t)) s"
}

has() { $PY -c "import $1" 2> /dev/null; }

body() {
  echo "### gpu_all.sh $mode ($(date -u +%FT%TZ)), budget ${BUDGET} s, log $OUT/gpu.txt"
  if [ "$mode" = full ] && [ -f "$CARRY/site.tar.xz" ]; then
    part 25 "unpack $CARRY/site.tar.xz into /tmp/site" \
      bash -c "mkdir -p /tmp/site && tar -C /tmp/site -xJf '$CARRY/site.tar.xz'"
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  else
    [ "$mode" = full ] && echo "### no $CARRY/site.tar.xz: the installed packages are used (benchmarks/gpu_pack.sh)"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  fi
  if [ -z "$DRY" ]; then
    echo "### machine"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2> /dev/null ||
      echo "no nvidia-smi"
    echo "cores $(nproc), $PY: $($PY -c 'import sys; print(sys.version.split()[0])')"
    $PY -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      'timm', timm.__version__)"
    for m in av decord webdataset PyNvVideoCodec xdist; do has $m && echo "$m: importable" || echo "$m: missing"; done
  fi
  local workers=$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))
  local tests=(-m "not slow" -q -rs -p no:cacheprovider)

  if [ "$mode" = tiny ]; then  # the same parts on the CPU, tiny configs and media, boxes of a second
    local media=$OUT/tiny-media
    part 60 "CUDA tests (skipped on a CPU)" $PY -m pytest "${tests[@]}" -k "cuda" tests/benchmarks
    part 60 "train_step.py tiny" $PY benchmarks/train_step.py --tiny --device cpu --steps 1 --warmup 1 --rounds 1
    part 90 "pipeline_gpu.py tiny" $PY benchmarks/pipeline_gpu.py --tiny --device cpu --workdir "$media"
    part 60 "pipeline.py images, 1 worker" $PY benchmarks/pipeline.py --only image --workers 1 --images 64 \
      --workdir "$media/pipeline"
    echo "### fast suite: not run in tiny mode (the tests run this script)"
  else
    local media=$CARRY/media
    if [ ! -f "$media/shards/mae/index.json" ] || [ ! -f "$media/shards/videomae/index.json" ]; then
      media=/tmp/mmssl-gpu-media  # pipeline_gpu.py makes them (needs PyAV), inside its own box
      echo "### no shards in $CARRY/media: pipeline_gpu.py makes them in $media"
    fi
    part 40 "CUDA and host-sync tests" \
      $PY -m pytest "${tests[@]}" -k "cuda or nvdec or nvjpeg or gpu or host_syncs" tests
    part 95 "train_step.py: MAE ViT-B/16 b256, compiled" $PY benchmarks/train_step.py --model mae
    part 40 "train_step.py: VideoMAE ViT-B b32, eager" $PY benchmarks/train_step.py --model videomae --no-compile
    local boxes=(--workers "$workers" --warmup 2 --feed-seconds 3 --seconds 6)
    part 85 "pipeline_gpu.py: MAE from JPEG shards (nvjpeg, CPU decode)" \
      $PY benchmarks/pipeline_gpu.py --model mae --workdir "$media" "${boxes[@]}"
    part 140 "pipeline_gpu.py: VideoMAE from H.264 shards (NVDEC, decord)" \
      $PY benchmarks/pipeline_gpu.py --model videomae --workdir "$media" "${boxes[@]}"
    part 45 "pipeline.py: images, $workers workers, vs ImageFolder" \
      $PY benchmarks/pipeline.py --only image --workers "$workers" --images 1024 --workdir /tmp/mmssl-pipeline-media
    local left=$((BUDGET - (SECONDS - start)))
    if [ -n "$DRY" ] || [ "$left" -ge 60 ]; then
      local spread=()
      has xdist && spread=(-n "$workers")
      part "$left" "fast suite" $PY -m pytest -m "not slow" -x -q -p no:cacheprovider "${spread[@]}"
    else
      echo "### fast suite: not run, ${left} s left of the budget (it needs about a minute with xdist)"
    fi
  fi
  echo
  echo "### done ($(date +%T)) after $((SECONDS - start)) s; the log is $OUT/gpu.txt"
}

body 2>&1 | tee -a "$OUT/gpu.txt"
