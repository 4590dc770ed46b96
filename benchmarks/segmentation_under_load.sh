#!/bin/bash
# The demo's segmentation fine-tune (100 steps, no validation) alone and beside 2 and 4 busy
# single-threaded processes (issue 14: it fell 7.5x under a load of 4). Needs a finished
# `medssl pipeline pipelines/demo.yaml` (demo-out/). Usage: bash benchmarks/segmentation_under_load.sh
cd "$(dirname "$0")/.." || exit 1
run() { # $1 = number of busy processes
  pids=""
  for i in $(seq 1 $1); do python3 -c "while True: pass" & pids="$pids $!"; done
  sleep 3
  s=$(date +%s.%N)
  medssl finetune -c configs/trainer/cpu.yaml -c configs/finetune/segmentation.yaml -c configs/finetune/smoke.yaml -c configs/data/demo.yaml \
    --model.encoder demo-out/artifact --data.store demo-out/store --data.structures '[lung_right, lung_left, liver]' \
    --data.progress false --trainer.max_steps 100 --trainer.val_check_interval 1000 --trainer.default_root_dir /tmp/loadtest --run_name busy$1_$RANDOM > /tmp/loadtest-$1.log 2>&1
  e=$(date +%s.%N)
  [ -n "$pids" ] && kill $pids
  echo "busy=$1 wall=$(python3 -c "print(round($e-$s,1))") $(grep -o 'intra-op threads: [0-9]* of [0-9]* CPUs (load [0-9.]*' /tmp/loadtest-$1.log)"
  sleep 20
}
run 0; run 2; run 4
