#!/bin/bash
# Worker instructions per posting (docs/benchmarks.md): one release `bidorch worker` under
# `valgrind --tool=callgrind` on the local RabbitMQ, Redis and PostgreSQL, with a sandbox
# marketplace; 200 postings of warm-up, then instrumentation on only while N postings (default
# 3,000, a fifth ineligible) are processed. Names of its own (queue, key prefix, schema), removed
# afterwards. Prints the total and the instructions per posting; the profile stays in
# /tmp/NAME.cg.out.* for callgrind_annotate.
#   cargo build --release && N=3000 docs/bench/callgrind-worker.sh cgrun
set -e
N=${N:-3000}
name=$1 SANDBOX_PORT=8091 HTTP_PORT=9191
. "$(dirname "$0")/worker-env.sh"
drop_names
$B marketplace --addr 127.0.0.1:$SANDBOX_PORT > /tmp/$name-sandbox.log 2>&1 & SB=$!
rm -f /tmp/$name.cg.out*
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/$name.cg.out $B worker > /tmp/$name-worker.log 2>&1 & W=$!
trap 'kill $W $SB 2>/dev/null; drop_names' EXIT
await_worker
postings $N
# Warm-up postings outside the window.
head -200 /tmp/$name.jsonl | sed 's/"p0/"w0/' | $B publish - --quiet
settled 200
callgrind_control -i on $W >/dev/null
$B publish /tmp/$name.jsonl --quiet
settled $((N+200))
sleep 1
callgrind_control -i off $W >/dev/null
callgrind_control -d $W >/dev/null
sleep 1
kill $W; wait $W 2>/dev/null || true
f=$(ls -S /tmp/$name.cg.out* | head -1)
total=$(callgrind_annotate $f 2>/dev/null | grep -m1 "PROGRAM TOTALS" | awk "{print \$1}" | tr -d ,)
echo "$name: $N postings, $total instructions, $((total / N)) per posting ($f)"
