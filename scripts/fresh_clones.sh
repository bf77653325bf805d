#!/bin/bash
# Five fresh clones of this repository's HEAD in a row, each running CI's entry point
# (`CI=true bash .ci/run`: the local SLURM cluster up, `make test`, the cluster down; as root).
# Clones 1-2 go under /tmp, clone 2 with a busy loop holding one core beside it; 3-5 under
# ${CLONES_DIR:-$HOME/batchscale-clones}. One line per clone in fresh-clones.txt (current folder).
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=$(cd "$repo/../shared" && pwd)
head=$(git -C "$repo" rev-parse --short HEAD)
for k in 1 2 3 4 5; do
  case $k in
    1|2) d=$(mktemp -d /tmp/clone$k.XXXX) ;;
    *)   d=${CLONES_DIR:-$HOME/batchscale-clones}/c$k; rm -rf "$d"; mkdir -p "$d" ;;
  esac
  git clone -q "$repo" "$d/proj" && ln -s "$shared" "$d/shared"
  busy=""
  if [ $k = 2 ]; then python3 -c "while True: pass" & busy=$!; fi
  s=$(date +%s)
  (cd "$d/proj" && CI=true bash .ci/run > "$d/ci.log" 2>&1); rc=$?
  e=$(date +%s)
  [ -n "$busy" ] && kill "$busy"
  echo "clone $k at $head in $d: rc=$rc wall_s=$((e-s)) busy_loop=${busy:+yes}" \
       "$(grep -E '^[0-9]+ passed' "$d/ci.log" | tr '\n' ' ')" >> fresh-clones.txt
done
