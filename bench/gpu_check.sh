#!/usr/bin/env bash
# The prepared GPU check: one call on a lent GPU machine runs every GPU-only path of the project
# and writes summary.md, summary.json, log.txt and the benchmarks' JSON files into one folder.
#
#   bench/gpu_check.sh --prepare            here, once: fill .gpu_shared/ (the ground truth the check
#                                           needs, from ../shared) and .whl/ (hjson for Python 3.12)
#   bench/gpu_check.sh [--out DIR]          on the GPU machine (default DIR: $OUT, else gpu_check_out)
#   bench/gpu_check.sh --cpu [--out DIR]    the same steps at tiny sizes on a CPU (CI: it must not rot)
#   options: --budget SECONDS (default 450 on a GPU, 900 with --cpu): the whole check's time; each
#            step runs under its own limit cut to what is left, optional steps only where their
#            whole limit is left, a required step with under 10 s left is not run (a failure)
#
# Each step runs under `timeout`; a failing step is recorded and the check goes on. The exit
# status is 1 when a required step failed, else 0. docs/gpu.md says how to run it with the
# device tool (`run` with carry .gpu_shared and .whl) and what it measures.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

MODE=gpu
DEST=${OUT:-}
BUDGET=
PREPARE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) MODE=cpu ;;
        --prepare) PREPARE=1 ;;
        --out) DEST=${2:?--out needs a folder}; shift ;;
        --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi

if [ "$PREPARE" = 1 ]; then
    SRC="$ROOT/../shared"
    [ -d "$SRC" ] || { echo "error: $SRC not found: --prepare copies the ground truth from there" >&2; exit 1; }
    rm -rf .gpu_shared && mkdir -p .gpu_shared/testsets .whl || exit 1
    cp -r "$SRC/conformance" .gpu_shared/ || exit 1
    for set in CBSD68 Set5 kernels_SISR; do cp -r "$SRC/testsets/$set" .gpu_shared/testsets/ || exit 1; done
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl hjson==3.1.0 || exit 1
    echo "prepared: .gpu_shared $(du -sh .gpu_shared | cut -f1), .whl $(du -sh .whl | cut -f1) (carry both; limit 64 MiB with the tree)"
    exit 0
fi

[ -n "$DEST" ] || DEST=gpu_check_out
mkdir -p "$DEST" || exit 1
DEST=$(cd "$DEST" && pwd)
[ -n "$BUDGET" ] || { [ "$MODE" = cpu ] && BUDGET=900 || BUDGET=450; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/logs"
START=$(date +%s)
: >"$DEST/log.txt"
ROWS="$WORK/rows.tsv"
: >"$ROWS"

# The lent machine's Python has no hjson: install the carried wheels beside it.
if ! "$PY" -c "import hjson" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
            && export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
# Its ground truth: ../shared when present (here), else the carried copy .gpu_shared.
SH="$ROOT/../shared"
if [ ! -d "$SH" ] && [ -d "$ROOT/.gpu_shared" ]; then
    ln -s "$ROOT/.gpu_shared" "$SH" 2>/dev/null || echo "note: could not link ../shared to .gpu_shared" >>"$DEST/log.txt"
fi
export PY SH WORK DEST PYTHONUNBUFFERED=1
# on a CPU, one thread per process: the steps are tiny and the cores may be shared
[ "$MODE" = cpu ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# step NAME required|optional LIMIT_S COMMAND: run COMMAND (bash) under timeout and record its result.
step() {
    local name=$1 kind=$2 limit=$3 cmd=$4 left status note t0 secs rc
    left=$(( BUDGET - ($(date +%s) - START) ))
    if [ "$kind" = optional ] && [ "$left" -lt "$limit" ]; then
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$kind" skipped 0 "${left}s of the budget left, the step may take ${limit}s" >>"$ROWS"
        return
    fi
    if [ "$left" -lt 10 ]; then
        printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$kind" "not run" 0 "the budget (${BUDGET}s) is spent" >>"$ROWS"
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    t0=$(date +%s.%N)
    timeout -k 10 "$limit" bash -c "$cmd" >"$WORK/logs/$name.log" 2>&1
    rc=$?
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status="FAILED ($rc)" ;; esac
    note=$(grep -v '^\s*$' "$WORK/logs/$name.log" | tail -n 1 | tr '\t|' '  ' | cut -c1-160)
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$kind" "$status" "$secs" "$note" >>"$ROWS"
    { echo "===== $name: $status, ${secs} s ====="; echo "\$ $cmd"; tail -n 60 "$WORK/logs/$name.log"; } >>"$DEST/log.txt"
    echo "$name: $status (${secs} s)"
}

if [ "$MODE" = cpu ]; then
    DEV=cpu; ITERS=2; VARIANTS="fp32"; TINY_SIDE=48
else
    DEV=cuda; ITERS=20; VARIANTS="fp32 bf16"; TINY_SIDE=256
fi
CLASS=$("$PY" -c "import torch; from bench.common import device_class; print(device_class(torch.device('$DEV')))" 2>/dev/null \
    || echo unknown)
export DEV ITERS TINY_SIDE CLASS

step environment required 120 '"$PY" - <<EOF
import json, platform, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
                cudnn=torch.backends.cudnn.version())
import hjson  # the configs need it: a missing wheel shows here
json.dump(info, open("$WORK/env.json", "w"))
print(" ".join(f"{k}={v}" for k, v in info.items()))
EOF
[ "$DEV" = cpu ] || "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"'

# Test images: crops of Set5 (or a seeded random image where it is missing).
"$PY" - <<EOF >>"$DEST/log.txt" 2>&1
import numpy as np, imageio.v3 as iio, os
side = int(os.environ["TINY_SIDE"])
src = os.path.join(os.environ["SH"], "testsets/Set5/baby_GT.png")
im = iio.imread(src)[:, :, :3] if os.path.exists(src) else (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8)
iio.imwrite(os.path.join(os.environ["WORK"], "clean.png"), np.ascontiguousarray(im[:side, :side]))
iio.imwrite(os.path.join(os.environ["WORK"], "lr.png"), np.ascontiguousarray(im[:side:2, :side:2]))
EOF

if [ "$MODE" = cpu ]; then
    printf '%s\t%s\t%s\t%s\t%s\n' cuda_tests required skipped 0 "no CUDA (--cpu)" >>"$ROWS"
    step conformance required 150 '"$PY" -m pytest -q -p no:cacheprovider -m conformance --device cpu tests/test_networks.py -k forward'
else
    step cuda_tests required 150 '"$PY" -m pytest -q -p no:cacheprovider -rs -m "not slow" -k "cuda or gpu or device" tests/'
    step conformance required 150 '"$PY" -m pytest -q -p no:cacheprovider -m conformance --device cuda tests/'
fi

# Each trainer on its small config: train one epoch, resume (--resume auto) for one more, export
# the last weights to the model zoo's format; with --cpu only the first trainer resumes and exports.
train_cmd() {  # train_cmd SCRIPT CONFIG PRECISION EXTRA_OPTS [train|all] [FOLDER_TAG]
    local dir="\$WORK/train_$2_$3${6:-}"
    echo "set -e; common=\"--config configs/$2.json --save_dir $dir --device \$DEV --opt iters_per_epoch=\$ITERS --opt save_freq=\$ITERS --opt precision=$3 --opt num_workers=0 --opt image_freq=1000 $4\";
\"\$PY\" $1 \$common --opt epochs=1;"
    [ "${5:-}" = train ] && { echo "ls $dir/models/model_last.pth"; return; }
    echo "\"\$PY\" $1 \$common --opt epochs=2 --resume auto;
\"\$PY\" -m utils.export_weights $dir/models/model_last.pth $dir/export.safetensors;
ls $dir/models/model_last.pth; ls $dir/export.safetensors"
}
[ "$MODE" = cpu ] && ONLY_TRAIN=train || ONLY_TRAIN=
SYN_OPTS="--opt val_max_images=1"
SR_OPTS="--opt val_dir=\$SH/testsets/Set5 --opt val_max_images=1"
REAL_OPTS="--opt train_source=camera_synthetic --opt train_pch_dir=null --opt train_dirs=\$SH/testsets/Set5 --opt val_dir=\$SH/testsets/Set5 --opt val_max_images=1"
for precision in $VARIANTS; do
    step "train_syn_$precision" required 120 "$(train_cmd train_denoising_syn.py denoising_syn_small "$precision" "$SYN_OPTS")"
    step "train_sisr_$precision" required 120 "$(train_cmd train_sisr.py sisr_x4_small "$precision" "$SR_OPTS" $ONLY_TRAIN)"
    step "train_real_$precision" required 120 "$(train_cmd train_denoising_real.py denoising_real_small "$precision" "$REAL_OPTS" $ONLY_TRAIN)"
done

LAUNCH="--config configs/denoising_syn_small.json --opt epochs=1 --opt iters_per_epoch=\$ITERS --opt num_workers=0 --opt val_max_images=1"
if [ "$MODE" = gpu ]; then
    step launch_gpu_id required 90 "\"\$PY\" train_denoising_syn.py $LAUNCH --save_dir \$WORK/gpu_id --gpu_id 0"
fi
step launch_distributed required 120 "\"\$PY\" -m torch.distributed.launch --nproc_per_node=1 train_denoising_syn.py $LAUNCH --save_dir \$WORK/dist_launch --device \$DEV"
step ddp_world_size_1 required 120 "\"\$PY\" -m torch.distributed.run --standalone --nproc_per_node=1 train_denoising_syn.py $LAUNCH --save_dir \$WORK/ddp1 --device \$DEV --opt ddp=always && grep -i 'process' \$WORK/ddp1/train.log | head -n 3"

step demo_syn required 90 '"$PY" demo_test_syn.py -i "$WORK/clean.png" --add_noise 25 -o "$WORK/demo_syn" --device "$DEV"'
step demo_sisr required 90 '"$PY" demo_test_sisr.py --sf 4 -i "$WORK/lr.png" -o "$WORK/demo_sisr" --device "$DEV"'
step demo_real required 90 '"$PY" demo_test_denoising_real.py -i "$WORK/clean.png" -o "$WORK/demo_real" --device "$DEV"'

if [ "$MODE" = cpu ]; then
    step inference_bench required 120 '"$PY" bench/inference.py --device cpu --sizes 32 --paths fp32 tf32 --repeats 1 --warmup 0 --threads 1 --out "$DEST/inference_tiny_all_$CLASS.json"'
    step gpu_memory required 150 '"$PY" bench/gpu_memory.py --device cpu --tiny --configs denoising_syn_small --variants fp32 --steps 1 --restore_sizes 256 --out "$DEST"'
else
    step inference_bench required 240 '"$PY" bench/inference.py --device cuda --sizes 512 --paths fp32 tf32 channels_last bf16 --repeats 5 --warmup 2 --out "$DEST/inference_all_$CLASS.json"'
    step gpu_memory required 240 '"$PY" bench/gpu_memory.py --device cuda --steps 3 --out "$DEST"'
    # optional, while the budget lasts
    step sr_blur optional 120 '"$PY" bench/sr_blur.py --device cuda --config configs/sisr_x4.json --rounds 3 --steps 3 --out "$DEST/sr_blur_sisr_$CLASS.json"'
    step train_syn_fp16 optional 90 "$(train_cmd train_denoising_syn.py denoising_syn_small fp16 "$SYN_OPTS")"
    step train_syn_tf32 optional 90 "$(train_cmd train_denoising_syn.py denoising_syn_small fp32 "$SYN_OPTS --opt tf32=true" all _tf32)"
    step protocol_sisr optional 150 '"$PY" demo_test_sisr.py --sf 4 --protocol --data_root "$SH/testsets" --datasets Set5 -o "$WORK/protocol_sisr" --device cuda'
fi

# The summary: a markdown table and the same as JSON.
"$PY" - "$ROWS" "$WORK/env.json" "$DEST" "$MODE" "$(( $(date +%s) - START ))" <<'EOF'
import json, sys
rows_file, env_file, dest, mode, total = sys.argv[1:]
rows = [dict(zip(("step", "kind", "status", "seconds", "note"), line.rstrip("\n").split("\t")))
        for line in open(rows_file) if line.strip()]
try:
    env = json.load(open(env_file))
except (OSError, ValueError):
    env = {}
failed = [r["step"] for r in rows if r["kind"] == "required" and r["status"] not in ("ok", "skipped")]
record = {"mode": mode, "environment": env, "total_s": int(total), "steps": rows, "required_failed": failed}
json.dump(record, open(f"{dest}/summary.json", "w"), indent=1)
with open(f"{dest}/summary.md", "w") as f:
    f.write(f"# GPU check ({mode})\n\n")
    f.write("environment: " + (" ".join(f"{k}={v}" for k, v in env.items()) or "unknown") + "\n\n")
    f.write("| step | kind | status | seconds | last line |\n|---|---|---|---|---|\n")
    for r in rows:
        f.write(f"| {r['step']} | {r['kind']} | {r['status']} | {r['seconds']} | {r['note']} |\n")
    f.write(f"\ntotal {total} s; required steps failed: {', '.join(failed) or 'none'}\n")
print(open(f"{dest}/summary.md").read())
sys.exit(1 if failed else 0)
EOF
