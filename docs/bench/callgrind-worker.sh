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
name=$1
B=${BIDORCH:-target/release/bidorch}
export AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f REDIS_URL=redis://127.0.0.1:6379
export BIDORCH__AMQP__EXCHANGE=$name.ex BIDORCH__AMQP__QUEUE=$name BIDORCH__REDIS__KEY_PREFIX=$name:
export BIDORCH__DATABASE__SCHEMA=$name BIDORCH__BIDDING__MIN_BUDGET=100
export BIDORCH__MARKETPLACES__UPWORK__BASE_URL=http://127.0.0.1:8091/upwork BIDORCH__MARKETPLACES__UPWORK__TOKEN_ENV=TOK TOK=t
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
export BIDORCH__HTTP__ADDR=127.0.0.1:9191
q() { psql -qAt -h 127.0.0.1 -U postgres test -c "$1"; }
psql -qAt -o /dev/null -h 127.0.0.1 -U postgres test -c "DROP SCHEMA IF EXISTS \"$name\" CASCADE" >/dev/null 2>&1
$B marketplace --addr 127.0.0.1:8091 > /tmp/$name-sandbox.log 2>&1 & SB=$!
rm -f /tmp/$name.cg.out*
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/$name.cg.out $B worker > /tmp/$name-worker.log 2>&1 & W=$!
trap "kill $W $SB 2>/dev/null" EXIT
for i in $(seq 1 300); do $B healthcheck --url http://127.0.0.1:9191 >/dev/null 2>&1 && break; sleep 0.5; done
python3 -c "
import json,uuid
for i in range($N):
    print(json.dumps({'event_id':str(uuid.uuid4()),'marketplace':'upwork','posting_id':'p%06d'%i,'title':'Rust worker','budget':{'min':10,'max':'1200.00' if i%5 else '50','currency':'USD'}}))
" > /tmp/$name.jsonl
# Warm-up postings outside the window.
head -200 /tmp/$name.jsonl | sed 's/"p0/"w0/' | $B publish - --quiet
until [ "$(q "SELECT count(*) FROM \"$name\".bid_ledger WHERE state<>'pending'")" = "200" ]; do sleep 0.5; done
callgrind_control -i on $W >/dev/null
$B publish /tmp/$name.jsonl --quiet
until [ "$(q "SELECT count(*) FROM \"$name\".bid_ledger WHERE state<>'pending'")" = "$((N+200))" ]; do sleep 0.5; done
sleep 1
callgrind_control -i off $W >/dev/null
callgrind_control -d $W >/dev/null
sleep 1
kill $W; wait $W 2>/dev/null || true
psql -qAt -o /dev/null -h 127.0.0.1 -U postgres test -c "DROP SCHEMA IF EXISTS \"$name\" CASCADE" >/dev/null 2>&1
rabbitmqctl -q list_queues name 2>/dev/null | grep "^$name" | xargs -r -n1 rabbitmqctl -q delete_queue >/dev/null 2>&1 || true
rabbitmqctl -q delete_exchange "$name.ex" >/dev/null 2>&1 || true
redis-cli --scan --pattern "$name:*" | xargs -r redis-cli del >/dev/null
f=$(ls -S /tmp/$name.cg.out* | head -1)
total=$(callgrind_annotate $f 2>/dev/null | grep -m1 "PROGRAM TOTALS" | awk "{print \$1}" | tr -d ,)
echo "$name: $N postings, $total instructions, $((total / N)) per posting ($f)"
