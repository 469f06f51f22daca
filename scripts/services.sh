#!/usr/bin/env bash
# Starts the local services the tests talk to, if one is not already listening.
# Each start command is the one this machine's image uses; a service that cannot be
# started is reported, and the tests that need it fail with a clear connection error.
set -u

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  local name=$1 port=$2; shift 2
  if listening "$port"; then return 0; fi
  echo "services: starting $name (port $port)"
  "$@" >/dev/null 2>&1 || echo "services: could not start $name" >&2
  for _ in $(seq 1 50); do listening "$port" && return 0; sleep 0.2; done
  echo "services: $name is not listening on $port" >&2
}

if [ -d /etc/postgresql ]; then
  start postgresql 5432 pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
command -v redis-server >/dev/null && start redis 6379 redis-server --daemonize yes \
  --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis \
  --logfile /var/log/redis/ci.log
command -v mosquitto >/dev/null && start mosquitto 1883 mosquitto -d -c /etc/mosquitto/mosquitto.conf
[ -x /usr/sbin/nats-server ] && start nats 4222 start-stop-daemon --start --oknodo --background \
  --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server \
  -l /var/log/nats-server.log
exit 0
