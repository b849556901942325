#!/usr/bin/env bash
# Docker's Compose v2 and buildx plugins, when missing: `make compose-check` needs both, and
# `.ci/run` installs Compose so that tests/test_deployment.py (`docker compose config` on the
# compose files) runs instead of skipping. Debian bookworm ships only the Python Compose 1, so
# they come from Debian trixie's docker-compose and docker-buildx packages (static Go binaries
# needing only libc6 >= 2.34), downloaded with a private apt state, so this machine's sources
# stay as they are, then installed by dpkg. Needs root and the Debian mirror apt already uses.
# Environment: FLEXBIN_APT_DIR (the private apt state; /var/tmp/flexbin-apt-trixie).
set -euo pipefail

plugins=()
docker compose version >/dev/null 2>&1 || plugins+=(docker-compose)
docker buildx version >/dev/null 2>&1 || plugins+=(docker-buildx)
[ ${#plugins[@]} -gt 0 ] || exit 0

echo "installing ${plugins[*]} from Debian trixie"
# shellcheck disable=SC2016  # $(REPO_URI) is apt's own field syntax
mirror=$(apt-get indextargets --format '$(REPO_URI)' 'Release: bookworm' 'Identifier: Packages' | head -n1)
apt_dir=${FLEXBIN_APT_DIR:-/var/tmp/flexbin-apt-trixie}
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
chown _apt "$apt_dir/debs" 2>/dev/null || true  # apt downloads as _apt
echo "deb $mirror trixie main" > "$apt_dir/sources.list"
opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache")
apt-get "${opts[@]}" update -q
(cd "$apt_dir/debs" && rm -f ./*.deb && apt-get "${opts[@]}" download "${plugins[@]}")
dpkg -i "$apt_dir"/debs/*.deb
docker compose version
