#!/usr/bin/env bash
# Starts any of the local broker/database servers the test suite talks to that is not
# running. Idempotent: a server that answers on its port is left alone. The start commands
# are the machine's own (see the README's "Testing" section).
set -u

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  local name=$1 port=$2; shift 2
  if port_open "$port"; then return 0; fi
  echo "ensure-services: starting $name (port $port)"
  bash -c "$*" >/dev/null 2>&1 || echo "ensure-services: could not start $name: $*" >&2
  for _ in $(seq 1 60); do
    port_open "$port" && { echo "ensure-services: $name is up"; return 0; }
    sleep 1
  done
  echo "ensure-services: $name did not come up on port $port; its tests will fail" >&2
}

start postgres 5432 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -n1) main start'
start mariadb 3306 'start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd'
start redis 6379 'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log'
start rabbitmq 5672 'rabbitmq-server -detached'
start mosquitto 1883 'mosquitto -d -c /etc/mosquitto/mosquitto.conf'
start nats 4222 'start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log'
# Tansu (installed by scripts/setup.sh), a Kafka-API broker keeping its data in memory; its log
# goes to ${TMPDIR:-/tmp}/wasmill-tansu.log.
tansu_bin=$(command -v tansu || echo "$HOME/.cargo/bin/tansu")
if [ -x "$tansu_bin" ]; then
  start tansu 9092 "setsid nohup '$tansu_bin' broker --listener-url=tcp://127.0.0.1:9092 \
    --advertised-listener-url=tcp://127.0.0.1:9092 --storage-engine=memory://tansu/ \
    >'${TMPDIR:-/tmp}/wasmill-tansu.log' 2>&1 </dev/null &"
elif ! port_open 9092; then
  echo "ensure-services: no tansu binary (scripts/setup.sh installs it): the Kafka tests will fail" >&2
fi
exit 0
