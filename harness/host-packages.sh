#!/usr/bin/env bash
# Installs the Debian packages Steward's demo and tests run for real, when missing, saying what it installs.
# Usage: harness/host-packages.sh [demo|test]   (test also needs what a local node and image builds run)
set -euo pipefail

# "command-or-path:package": the package is needed when neither the command nor the path is found.
demo=(
    "promtool:prometheus"
    "/usr/lib/postgresql/*/bin/initdb:postgresql"
)
# Kafka's broker runs from its Maven Central jars on a JDK.
stream=(
    "java:openjdk-17-jre-headless"
    "mvn:maven"
)
node=(
    "dockerd:docker.io"
    "containerd:containerd"
    "runc:runc"
    "/usr/lib/cni/bridge:containernetworking-plugins"
    "debootstrap:debootstrap"
    "iptables:iptables"
    "conntrack:conntrack"
)
case "${1:-test}" in
    demo) wanted=("${demo[@]}") ;;
    test) wanted=("${demo[@]}" "${stream[@]}" "${node[@]}") ;;
    *) echo "usage: $0 [demo|test]" >&2; exit 2 ;;
esac

missing=()
for entry in "${wanted[@]}"; do
    probe=${entry%%:*} package=${entry##*:}
    if [[ $probe == /* ]]; then
        compgen -G "$probe" >/dev/null && continue
    else
        PATH="$PATH:/usr/sbin:/sbin" command -v "$probe" >/dev/null && continue
    fi
    missing+=("$package")
done
((${#missing[@]})) || exit 0

echo "[steward] installing Debian packages: ${missing[*]}" >&2
sudo=()
if ((EUID != 0)); then
    command -v sudo >/dev/null || { echo "[steward] run as root: apt-get install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
fi
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
