#!/usr/bin/env bash
# Builds a stand-in for the base image `python:3.11-slim` where no container
# registry is reachable, from Debian packages instead:
#   docker/stand-in-base.sh [TAG]        (default tag: python:3.11-slim)
# Needs root, debootstrap and a running Docker engine (DOCKER_HOST is honoured).
# The mirror is the first Debian one in this machine's apt sources (DEBIAN_MIRROR
# overrides it). The image has Debian bookworm's Python 3.11, pip and venv,
# `python`/`pip` in /usr/local/bin like the real image, pip allowed to install
# into the system, and this machine's CA bundle, so that pip reaches the
# package index through whatever TLS inspection this machine's network does.
set -euo pipefail

readonly TAG="${1:-python:3.11-slim}"
readonly SUITE=bookworm
readonly PACKAGES=python3,python3-pip,python3-venv,ca-certificates
readonly HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
root=""  # the tree being built; global so that the EXIT trap can remove it

# Prints the first http(s) URI ending in /debian from the apt sources (one-line or deb822).
debian_mirror() {
    local files
    shopt -s nullglob
    files=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
    cat -- "${files[@]}" /dev/null 2>/dev/null | grep -oE 'https?://[^ ]+/debian/?( |$)' |
        head -n 1 | tr -d ' ' || true
}

main() {
    local mirror
    mirror="${DEBIAN_MIRROR:-$(debian_mirror)}"
    if [[ -z "$mirror" ]]; then
        printf 'stand-in-base: error: no Debian mirror in the apt sources; set DEBIAN_MIRROR\n' >&2
        exit 2
    fi
    root="$(mktemp -d /var/tmp/stand-in-base.XXXXXX)"
    trap 'rm -rf -- "$root"' EXIT
    printf 'stand-in-base: debootstrap %s from %s\n' "$SUITE" "$mirror" >&2
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$mirror" >/dev/null
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
    ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
    cp "$HOST_CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" --numeric-owner -c . |
        docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$TAG" >/dev/null
    printf 'stand-in-base: imported %s\n' "$TAG" >&2
}

main "$@"
