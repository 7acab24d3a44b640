#!/usr/bin/env bash
# Build docker/Dockerfile with podman and smoke-test the image: start it, wait for /readyz, open a
# session, post chunk 0, check the answer, stop it. Then the stack of docker/compose.yaml on the
# host network: two replicas on Redis (AOF) behind haproxy with docker/haproxy.cfg, one session's
# chunks across both, a WebSocket through the balancer. Exits non-zero on any failure.
#
# No Docker engine is needed: podman + runc, and a Debian base image with Python made from
# Debian's own packages by mmdebstrap (built once, then reused while it exists). As root, installs
# what is missing with apt-get. Run by .ci/run after the tests, or by hand:
#   bash docker/build-and-smoke.sh
# Environment:
#   IMAGE         tag to build (default localhost/sarnn-serve:dev)
#   BASE_IMAGE    base to build on (default localhost/sarnn-base:bookworm, made here if missing;
#                 any other name must already exist, e.g. docker.io/library/python:3.11-slim)
#   BUILD_BASE_IMAGE  base of the build stage: the same Python plus gcc (default
#                 localhost/sarnn-build-base:bookworm, made here if missing; or e.g.
#                 docker.io/library/python:3.11)
#   REBUILD_BASE  1: remake the mmdebstrap bases even if they exist (e.g. for security updates)
#   NO_CACHE      1: build without podman's layer cache (a cold build)
#   MODELS        models/ directories to ship, space-separated (default: all)
#   PIP_INDEX_URL a PyPI mirror for pip inside the build (default: pip's config, else PyPI)
#   DEBIAN_MIRROR Debian mirror for the base (default http://deb.debian.org/debian)
#   KEEP_IMAGE    0: remove the image at the end (default 1: keep it)
#   KEEP_CACHE    1: keep podman's build cache (each build that changes code leaves ~230 MB of
#                 layers); default 0: drop untagged images at the end (the base stays, rebuilds
#                 then take ~20 s instead of ~3 s)
#   SKIP_STACK    1: only the single-container smoke test
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/sarnn-serve:dev}
BASE_IMAGE=${BASE_IMAGE:-localhost/sarnn-base:bookworm}
BUILD_BASE_IMAGE=${BUILD_BASE_IMAGE:-localhost/sarnn-build-base:bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
MODELS=${MODELS:-all}
KEEP_IMAGE=${KEEP_IMAGE:-1}
# The request the smoke test opens a session on; must be one of MODELS.
SMOKE_MODEL=${SMOKE_MODEL:-watch-gru}

log() { printf '[build-and-smoke] %s\n' "$*" >&2; }
now() { date +%s.%N; }
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- tools ---------------------------------------------------------------------------------------
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v newuidmap >/dev/null || missing+=(uidmap)
if [ "${SKIP_STACK:-0}" != 1 ]; then
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v haproxy >/dev/null || missing+=(haproxy)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing: ${missing[*]}; install them as root (apt-get install ${missing[*]})"
    exit 1
  fi
  log "installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- podman settings, in a file of our own (the machine's containers.conf is left alone) ---------
work=$(mktemp -d /tmp/sarnn-build.XXXXXX)
containers=()
pids=()
cleanup() {
  status=$?
  for c in "${containers[@]}"; do
    [ "$status" -ne 0 ] && { log "logs of $c:"; podman logs --tail 30 "$c" >&2 || true; }
    podman rm --force --time 10 "$c" >/dev/null 2>&1 || true
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ "$status" -ne 0 ] && [ -f "$work/haproxy.log" ] && tail -n 20 "$work/haproxy.log" >&2
  [ "$KEEP_IMAGE" = 0 ] && podman rmi --force "$IMAGE" >/dev/null 2>&1
  [ "${KEEP_CACHE:-0}" = 1 ] || podman image prune --force >/dev/null 2>&1 || true
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
# crun fails on hybrid cgroup v1/v2 hosts: runc. The default ulimits (nofile 1M) exceed what an
# unprivileged sandbox may set. No systemd here: cgroupfs, and events to a file, not journald.
cat >"$work/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$work/containers.conf"

# --- base images: Debian bookworm + python3 (3.11) + venv + CA certificates ----------------------
# make_base IMAGE [PACKAGE...]: the base with these packages too, unless it exists.
make_base() {
  local image=$1
  shift
  if [ "${REBUILD_BASE:-0}" != 1 ] && podman image exists "$image"; then
    log "base $image exists (REBUILD_BASE=1 remakes it)"
    return
  fi
  log "making $image with mmdebstrap from $DEBIAN_MIRROR"
  local t0
  t0=$(now)
  # Essential packages only (no apt, which the image never runs) with merged /usr (else usrmerge
  # and perl come along); no docs, man pages or translations (copyright files stay). libstdc++6:
  # onnxruntime links it (python:3.11-slim has it too).
  local include=python3,python3-venv,ca-certificates,libstdc++6
  for package in "$@"; do include+=",$package"; done
  mmdebstrap --quiet --variant=essential --include="$include" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$work/base.tar" "$DEBIAN_MIRROR" \
    "deb $DEBIAN_MIRROR bookworm-updates main" \
    "deb ${DEBIAN_MIRROR%/debian}/debian-security bookworm-security main"
  podman import --quiet --change 'CMD ["python3"]' "$work/base.tar" "$image" >/dev/null
  rm -f "$work/base.tar"
  log "base made in $(since "$t0") s"
}

for image in "$BASE_IMAGE" "$BUILD_BASE_IMAGE"; do
  case "$image" in
    localhost/sarnn-base:bookworm) make_base "$image" ;;
    localhost/sarnn-build-base:bookworm) make_base "$image" gcc libc6-dev ;;
    *) podman image exists "$image" || { log "$image does not exist (pull it first)"; exit 1; } ;;
  esac
done

# --- build ---------------------------------------------------------------------------------------
build_args=(--build-arg "BASE=$BASE_IMAGE" --build-arg "BUILD_BASE=$BUILD_BASE_IMAGE")
build_args+=(--build-arg "MODELS=$MODELS")
# pip inside the build uses the same registry as pip here: an http(s) index-url, if one is set.
index_url=${PIP_INDEX_URL:-$(pip config get global.index-url 2>/dev/null || true)}
case "$index_url" in
  http://* | https://*) build_args+=(--build-arg "PIP_INDEX_URL=$index_url") ;;
esac
# The machine's CA bundle over the image's, for pip in RUN steps (a TLS-inspecting proxy's CA).
[ -f /etc/ssl/certs/ca-certificates.crt ] && build_args+=(--volume /etc/ssl/certs:/etc/ssl/certs:ro)
[ "${NO_CACHE:-0}" = 1 ] && build_args+=(--no-cache)

log "building $IMAGE"
previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
t0=$(now)
# --format docker: OCI images have no HEALTHCHECK. --network host: no CNI bridge in the sandbox.
podman build --quiet --format docker --network host --file docker/Dockerfile --tag "$IMAGE" \
  "${build_args[@]}" . >/dev/null
build_s=$(since "$t0")
# The image this one replaces, unless still in use (its layers would pile up run after run).
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]; then
  podman rmi "$previous" >/dev/null 2>&1 || true
fi
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "image $IMAGE: $((size / 1000000)) MB, built in ${build_s} s"

# --- smoke test: one container ------------------------------------------------------------------
# Host network (no CNI here); every server listens on loopback only, so nothing is exposed while it
# runs. A read-only root with no tmpfs: the server writes nothing (as under readOnlyRootFilesystem).
# No systemd here to run the HEALTHCHECK on a timer (podman 4 asks systemd even with
# --health-interval disable): it is off, and its command runs once below, with podman exec.
run_replica() { # NAME PORT [ENV=VALUE...]
  local name=$1 port=$2 envs=()
  shift 2
  for e in "$@"; do envs+=(--env "$e"); done
  containers+=("$name")
  # gRPC on a free port unless ENV names one: the replicas share the host's ports
  podman run --detach --name "$name" --network host --no-healthcheck \
    --read-only --read-only-tmpfs=false \
    --env SARNN_PORT="$port" --env SARNN_HOST=127.0.0.1 --env SARNN_GRPC_PORT=0 \
    "${envs[@]}" "$IMAGE" >/dev/null
}

port=$(free_port)
container=sarnn-smoke-$$
run_replica "$container" "$port"
t0=$(now)
python3 docker/smoke_client.py rest "http://127.0.0.1:$port" "$SMOKE_MODEL"
log "one container: ready and answered in $(since "$t0") s"

# The image's own HEALTHCHECK command, its user, and no torch.
mapfile -d '' health < <(podman image inspect --format '{{json .HealthCheck.Test}}' "$IMAGE" \
  | python3 -c 'import json, sys; t = json.load(sys.stdin); assert t[0] == "CMD", t
sys.stdout.write("".join(a + "\0" for a in t[1:]))')
[ ${#health[@]} -gt 0 ] || { log "the image has no HEALTHCHECK"; exit 1; }
podman exec "$container" "${health[@]}" || { log "HEALTHCHECK command failed"; exit 1; }
uid=$(podman exec "$container" id -u)
[ "$uid" != 0 ] || { log "the container runs as root"; exit 1; }
if podman exec "$container" python -c 'import torch' 2>/dev/null; then
  log "torch is importable in the image"
  exit 1
fi
podman rm --force --time 10 "$container" >/dev/null
summary="ready, chunk 0 answered, healthcheck ok, uid $uid, no torch"

# --- smoke test: the compose stack, on the host network -----------------------------------------
if [ "${SKIP_STACK:-0}" != 1 ]; then
  t0=$(now)
  rport=$(free_port)
  mkdir "$work/redis"
  # docker/compose.yaml's Redis settings: AOF, fsync every second, noeviction
  redis-server --bind 127.0.0.1 --port "$rport" --dir "$work/redis" --save '' \
    --appendonly yes --appendfsync everysec --maxmemory 256mb --maxmemory-policy noeviction \
    --logfile "$work/redis.log" &
  pids+=($!)
  ports=()
  grpc_ports=()
  for i in 1 2; do
    ports+=("$(free_port)")
    grpc_ports+=("$(free_port)")
    run_replica "sarnn-smoke-$$-$i" "${ports[-1]}" SARNN_STORE=redis \
      SARNN_REDIS_URL="redis://127.0.0.1:$rport/0" SARNN_GRPC_PORT="${grpc_ports[-1]}"
  done
  # docker/haproxy.cfg as shipped, but bound to loopback and with the two replicas as its servers
  # (compose finds them by DNS, which the host network has not).
  lbport=$(free_port)
  lbgrpc=$(free_port)
  sed -e "s/^\( *\)bind :8000$/\1bind 127.0.0.1:$lbport/" \
    -e "s/^\( *\)bind :8001$/\1bind 127.0.0.1:$lbgrpc/" \
    -e "s/^\( *\)server-template grpc .*/\1server g1 127.0.0.1:${grpc_ports[0]}\n\1server g2 127.0.0.1:${grpc_ports[1]}/" \
    -e "s/^\( *\)server-template .*/\1server s1 127.0.0.1:${ports[0]}\n\1server s2 127.0.0.1:${ports[1]}/" \
    docker/haproxy.cfg >"$work/haproxy.cfg"
  if ! grep -q "bind 127.0.0.1:$lbport" "$work/haproxy.cfg" \
    || ! grep -q 'server s2' "$work/haproxy.cfg"; then
    log "docker/haproxy.cfg: no 'bind :8000' or 'server-template' line to point at the replicas"
    exit 1
  fi
  haproxy -c -q -f "$work/haproxy.cfg"
  haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
  pids+=($!)
  sleep 1
  kill -0 "${pids[-1]}" 2>/dev/null || { log "haproxy stopped"; exit 1; }
  python3 docker/smoke_client.py stack "http://127.0.0.1:$lbport" \
    "http://127.0.0.1:${ports[0]}" "http://127.0.0.1:${ports[1]}" "$SMOKE_MODEL"
  log "stack: 2 replicas + Redis + haproxy in $(since "$t0") s"
  summary="$summary; stack ok (2 replicas, Redis AOF, haproxy, WebSocket)"
fi

log "PASS: $IMAGE ($((size / 1000000)) MB, built in ${build_s} s): $summary"
