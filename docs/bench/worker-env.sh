# Sourced by the worker measurement scripts (callgrind-worker.sh, cpu-worker.sh): one release
# worker's environment on the local RabbitMQ, Redis and PostgreSQL, with names of its own taken
# from $name, and the sandbox at $SANDBOX_PORT; plus the helpers both scripts use.
B=${BIDORCH:-target/release/bidorch}
export AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f REDIS_URL=redis://127.0.0.1:6379
export BIDORCH__AMQP__EXCHANGE=$name.ex BIDORCH__AMQP__QUEUE=$name BIDORCH__REDIS__KEY_PREFIX=$name:
export BIDORCH__DATABASE__SCHEMA=$name BIDORCH__BIDDING__MIN_BUDGET=100
export BIDORCH__MARKETPLACES__UPWORK__BASE_URL=http://127.0.0.1:$SANDBOX_PORT/upwork BIDORCH__MARKETPLACES__UPWORK__TOKEN_ENV=TOK TOK=t
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
export BIDORCH__HTTP__ADDR=127.0.0.1:$HTTP_PORT

# One value from PostgreSQL.
q() { psql -qAt -h 127.0.0.1 -U postgres test -c "$1"; }

# Waits until the run's ledger has settled $1 postings.
settled() {
  until [ "$(q "SELECT count(*) FROM \"$name\".bid_ledger WHERE state<>'pending'")" = "$1" ]; do
    sleep 0.2
  done
}

# $1 posting events (a fifth ineligible by budget) into /tmp/$name.jsonl.
postings() {
  python3 -c "
import json,uuid
for i in range($1):
    print(json.dumps({'event_id':str(uuid.uuid4()),'marketplace':'upwork','posting_id':'p%06d'%i,'title':'Rust worker','budget':{'min':10,'max':'1200.00' if i%5 else '50','currency':'USD'}}))
" > /tmp/$name.jsonl
}

# Waits for the worker $W's health endpoint.
await_worker() {
  for _ in $(seq 1 300); do
    $B healthcheck --url http://127.0.0.1:$HTTP_PORT/readyz >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "the worker never became healthy: /tmp/$name-worker.log" >&2
  return 1
}

# Removes the run's schema, queues (the work queue, its retry tiers and dead letters), exchanges
# and Redis keys. rabbitmqctl cannot delete an exchange: pika does (pip install pika).
drop_names() {
  psql -qAt -o /dev/null -h 127.0.0.1 -U postgres test -c "DROP SCHEMA IF EXISTS \"$name\" CASCADE" >/dev/null 2>&1
  rabbitmqctl -q list_queues name 2>/dev/null | grep -E "^$name(\.|$)" | xargs -r -n1 rabbitmqctl -q delete_queue >/dev/null 2>&1 || true
  rabbitmqctl -q list_exchanges name 2>/dev/null | grep -E "^$name\." | python3 -c '
import sys, pika
names = sys.stdin.read().split()
if names:
    connection = pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:5672/%2f"))
    channel = connection.channel()
    for exchange in names:
        channel.exchange_delete(exchange)
    connection.close()
' || echo "exchanges $name.* left behind: deleting them needs python3 with pika" >&2
  redis-cli --scan --pattern "$name:*" | xargs -r redis-cli del >/dev/null
}
