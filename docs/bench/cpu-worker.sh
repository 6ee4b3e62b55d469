#!/bin/bash
# A release worker's user and system CPU per posting, and its system calls per posting by kind
# (docs/benchmarks.md): one `bidorch worker` outside valgrind on the local RabbitMQ, Redis and
# PostgreSQL, with a sandbox marketplace; 500 postings of warm-up, then N (default 20,000, a
# fifth ineligible) measured from /proc and `perf stat` (tracepoints: run as root); RabbitMQ's
# CPU (its publishes included) and PostgreSQL's (every server process) too when they run here. Names of its own, removed afterwards.
#   cargo build --release && N=20000 docs/bench/cpu-worker.sh cpurun
set -e
N=${N:-20000}
name=$1 SANDBOX_PORT=8092 HTTP_PORT=9192
. "$(dirname "$0")/worker-env.sh"
drop_names
$B marketplace --addr 127.0.0.1:$SANDBOX_PORT > /tmp/$name-sandbox.log 2>&1 & SB=$!
$B worker > /tmp/$name-worker.log 2>&1 & W=$!
trap 'kill $W $SB $P 2>/dev/null; drop_names' EXIT
await_worker
postings $N
head -500 /tmp/$name.jsonl | sed 's/"p0/"w0/' | $B publish - --quiet
settled 500
calls="write writev sendto sendmsg recvfrom read epoll_wait futex"
perf stat -x, -o /tmp/$name.perf $(for c in $calls; do echo "-e syscalls:sys_enter_$c"; done) -p $W & P=$!
sleep 0.3
R=$(pgrep -f beam.smp | head -1)
read -r u0 s0 < <(awk '{print $14, $15}' /proc/$W/stat)
read -r r0 < <(awk '{print $14 + $15}' /proc/$R/stat)
# PostgreSQL's CPU: every server process's, summed (the pooled backends outlive the run).
pg_cpu() { for p in $(pgrep -x postgres); do awk '{print $14 + $15}' /proc/$p/stat 2>/dev/null; done | awk '{s += $1} END {print s + 0}'; }
g0=$(pg_cpu)
$B publish /tmp/$name.jsonl --quiet
settled $((N+500))
read -r u1 s1 < <(awk '{print $14, $15}' /proc/$W/stat)
read -r r1 < <(awk '{print $14 + $15}' /proc/$R/stat)
g1=$(pg_cpu)
kill -INT $P; wait $P 2>/dev/null || true
tick=$(getconf CLK_TCK)
echo "$name: $N postings; per posting: user $(( (u1-u0)*1000000000/tick/N )) ns, system $(( (s1-s0)*1000000000/tick/N )) ns; RabbitMQ (publish included) $(( (r1-r0)*1000000000/tick/N )) ns; PostgreSQL $(( (g1-g0)*1000000000/tick/N )) ns"
awk -F, -v n=$N '/sys_enter/ {split($3,a,"_enter_"); printf "  %-12s %.2f per posting\n", a[2], $1/n}' /tmp/$name.perf
