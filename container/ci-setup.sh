#!/usr/bin/env bash
# Prepares a CI or developer machine for the `container` tests (pytest -m container): a container engine and a
# local Debian base image to build the Dockerfile on, since no image registry is reachable from CI.
#   - docker, when its daemon answers; otherwise podman from Debian, with runc and the settings it needs here;
#   - localhost/debian:bookworm, made with debootstrap and imported, when the engine does not have it yet;
#   - Debian's chromium and chromium-driver, for the serving page's browser test (tests/test_serve.py).
# Idempotent: a second run changes nothing and takes seconds. When no engine can be had it prints why and exits 0;
# the container tests then skip with their own reason.
#   sudo container/ci-setup.sh
set -uo pipefail

BASE_IMAGE="${BASE_IMAGE:-localhost/debian:bookworm}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# A drop-in, so a machine's own containers.conf stays as it is; podman reads drop-ins after the main file.
CONF_DROP_IN=/etc/containers/containers.conf.d/50-dialogsum-ci.conf

say() { echo "ci-setup: $*"; }
no_engine() {
    say "no container engine: $*; the container tests will skip"
    exit 0
}
as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif sudo -n true 2>/dev/null; then sudo "$@"; else return 1; fi
}

install_packages() {
    command -v apt-get >/dev/null || no_engine "$* missing and this is not a Debian-family system (install them)"
    say "installing $*"
    # With recommends, as checked here: podman's networking and storage helpers come as recommendations.
    if ! { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
        && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }; then
        no_engine "apt-get could not install $* (needs root and the Debian mirror)"
    fi
}

configure_podman() {
    # crun and the default RLIMIT_NOFILE fail under this machine's cgroup setup; runc with no default ulimits works.
    local wanted
    wanted=$'[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"'
    if [ "$(cat "$CONF_DROP_IN" 2>/dev/null)" != "$wanted" ]; then
        if ! { as_root mkdir -p "$(dirname "$CONF_DROP_IN")" \
            && printf '%s\n' "$wanted" | as_root tee "$CONF_DROP_IN" >/dev/null; }; then
            no_engine "cannot write $CONF_DROP_IN (needs root)"
        fi
        say "wrote $CONF_DROP_IN"
    fi
}

ROOTFS=""
trap '[ -z "$ROOTFS" ] || as_root rm -rf "$ROOTFS"' EXIT

make_base_image() {
    local engine=$1
    if "$engine" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "$BASE_IMAGE is present"
        return
    fi
    command -v debootstrap >/dev/null || install_packages debootstrap
    ROOTFS=$(mktemp -d /var/tmp/dialogsum-rootfs.XXXXXX)
    say "building $BASE_IMAGE with debootstrap (about a minute)"
    as_root debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >/dev/null \
        || no_engine "debootstrap of $SUITE from $MIRROR failed"
    as_root tar -C "$ROOTFS" -c . | "$engine" import - "$BASE_IMAGE" >/dev/null \
        || no_engine "$engine import of the Debian root file system failed"
    say "imported $BASE_IMAGE"
}

install_browser() {
    # Not needed by the engine: without them only the page's browser test skips, so a failure is no reason to stop.
    command -v chromium >/dev/null && command -v chromedriver >/dev/null && return
    command -v apt-get >/dev/null || { say "chromium missing (not a Debian-family system): the page test will skip"; return; }
    say "installing chromium chromium-driver"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
        && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
        || say "apt-get could not install chromium chromium-driver: the page test will skip"
}
install_browser

if docker info >/dev/null 2>&1; then
    engine=docker
else
    missing=()
    for tool in podman runc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    [ ${#missing[@]} -eq 0 ] || install_packages "${missing[@]}"
    engine=podman
    configure_podman
    podman info >/dev/null 2>&1 || no_engine "podman is installed but \`podman info\` fails"
fi
say "engine: $engine"
make_base_image "$engine"
say "ready: pytest -m container"
