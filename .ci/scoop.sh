#!/usr/bin/env bash
# What the SCOOP tests need besides the Python packages, made ready before pytest runs:
#  - OpenSSH's server: tests/test_scoop_hosts.py starts its own sshd on 127.0.0.2 and
#    127.0.0.3 (keys made per run, loopback only); here it is only installed if missing.
#  - SCOOP's own examples directory, from SCOOP 0.7.2's source package, unpacked to
#    .ci/cache/scoop-0.7.2.0/examples: tests/test_scoop.py runs them through the launcher.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
    if [ "$(id -u)" -eq 0 ]; then
        echo "== installing openssh-server (the SSH host tests start their own sshd)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            openssh-server >/dev/null
    else
        echo "!! sshd is missing and this is not root: the SSH host tests will be skipped" >&2
    fi
fi

examples=.ci/cache/scoop-0.7.2.0/examples
if [ ! -d "$examples" ]; then
    echo "== SCOOP 0.7.2's examples (from its source package)"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python -m pip download --quiet --no-deps --no-binary :all: "scoop==0.7.2.0" -d "$tmp"
    mkdir -p .ci/cache
    tar -xzf "$tmp"/scoop-0.7.2.0.tar.gz -C .ci/cache scoop-0.7.2.0/examples
fi
echo "== sshd: $(command -v sshd || echo /usr/sbin/sshd); SCOOP examples: $examples"
