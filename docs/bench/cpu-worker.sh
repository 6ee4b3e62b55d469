#!/bin/bash
# A release worker's user and system CPU per posting, and its system calls per posting by kind
# (docs/benchmarks.md): one `bidorch worker` outside valgrind on the local RabbitMQ, Redis and
# PostgreSQL, with a sandbox marketplace; 500 postings of warm-up, then N (default 20,000, a
# fifth ineligible) measured from /proc and `perf stat` (tracepoints: run as root). Names of its
# own, removed afterwards.
#   cargo build --release && N=20000 docs/bench/cpu-worker.sh cpurun
set -e
N=${N:-20000}
name=$1
B=${BIDORCH:-target/release/bidorch}
export AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f REDIS_URL=redis://127.0.0.1:6379
export BIDORCH__AMQP__EXCHANGE=$name.ex BIDORCH__AMQP__QUEUE=$name BIDORCH__REDIS__KEY_PREFIX=$name:
export BIDORCH__DATABASE__SCHEMA=$name BIDORCH__BIDDING__MIN_BUDGET=100
export BIDORCH__MARKETPLACES__UPWORK__BASE_URL=http://127.0.0.1:8092/upwork BIDORCH__MARKETPLACES__UPWORK__TOKEN_ENV=TOK TOK=t
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
export BIDORCH__HTTP__ADDR=127.0.0.1:9192
q() { psql -qAt -h 127.0.0.1 -U postgres test -c "$1"; }
cleanup() {
  kill $W $SB $P 2>/dev/null || true
  psql -qAt -o /dev/null -h 127.0.0.1 -U postgres test -c "DROP SCHEMA IF EXISTS \"$name\" CASCADE" >/dev/null 2>&1
  rabbitmqctl -q delete_queue "$name" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_exchange "$name.ex" >/dev/null 2>&1 || true
  redis-cli --scan --pattern "$name:*" | xargs -r redis-cli del >/dev/null
}
trap cleanup EXIT
$B marketplace --addr 127.0.0.1:8092 > /tmp/$name-sandbox.log 2>&1 & SB=$!
$B worker > /tmp/$name-worker.log 2>&1 & W=$!
for i in $(seq 1 300); do $B healthcheck --url http://127.0.0.1:9192 >/dev/null 2>&1 && break; sleep 0.2; done
python3 -c "
import json,uuid
for i in range($N):
    print(json.dumps({'event_id':str(uuid.uuid4()),'marketplace':'upwork','posting_id':'p%06d'%i,'title':'Rust worker','budget':{'min':10,'max':'1200.00' if i%5 else '50','currency':'USD'}}))
" > /tmp/$name.jsonl
head -500 /tmp/$name.jsonl | sed 's/"p0/"w0/' | $B publish - --quiet
until [ "$(q "SELECT count(*) FROM \"$name\".bid_ledger WHERE state<>'pending'")" = "500" ]; do sleep 0.2; done
calls=write,writev,sendto,sendmsg,recvfrom,read,epoll_wait,futex
perf stat -x, -o /tmp/$name.perf $(for c in ${calls//,/ }; do echo -e "-e syscalls:sys_enter_$c"; done) -p $W & P=$!
sleep 0.3
read -r u0 s0 < <(awk '{print $14, $15}' /proc/$W/stat)
$B publish /tmp/$name.jsonl --quiet
until [ "$(q "SELECT count(*) FROM \"$name\".bid_ledger WHERE state<>'pending'")" = "$((N+500))" ]; do sleep 0.2; done
read -r u1 s1 < <(awk '{print $14, $15}' /proc/$W/stat)
kill -INT $P; wait $P 2>/dev/null || true
tick=$(getconf CLK_TCK)
echo "$name: $N postings; per posting: user $(( (u1-u0)*1000000000/tick/N )) ns, system $(( (s1-s0)*1000000000/tick/N )) ns"
awk -F, -v n=$N '/sys_enter/ {split($3,a,"_enter_"); printf "  %-12s %.2f per posting\n", a[2], $1/n}' /tmp/$name.perf
