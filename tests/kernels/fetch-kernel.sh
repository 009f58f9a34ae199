#!/usr/bin/env bash
# Downloads one Debian cloud kernel (linux-image-*-cloud-amd64) and prints the path of its
# vmlinuz. Usage: fetch-kernel.sh SUITE CACHE_DIR
#
# The mirror is this machine's own: the URI of the first deb822 stanza in
# /etc/apt/sources.list.d/debian.sources that lists a plain Debian suite (not -security).
# apt runs on a private state directory under CACHE_DIR, so the host's apt lists, cache and
# sources are neither read nor changed. A kernel already downloaded is not fetched again.
set -euo pipefail

suite=${1:?suite (bullseye, bookworm, bookworm-backports)}
cache=${2:?cache directory}
mkdir -p "$cache" && cache=$(cd "$cache" && pwd)
sources=${PERISCOPE_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}

mirror_uri() {
  awk '
    /^[[:space:]]*$/ { if (uri != "" && plain) { print uri; exit } uri = ""; plain = 0; next }
    /^URIs:/ { uri = $2 }
    /^Suites:/ { for (i = 2; i <= NF; i++) if ($i !~ /-security$/) plain = 1 }
    END { if (uri != "" && plain) print uri }
  ' "$sources" | head -n1
}

dir="$cache/$suite"
if vmlinuz=$(ls "$dir"/root/boot/vmlinuz-* 2>/dev/null | head -n1) && [ -n "$vmlinuz" ]; then
  echo "$vmlinuz"; exit 0
fi

uri=$(mirror_uri)
[ -n "$uri" ] || { echo "no Debian mirror URI found in $sources" >&2; exit 1; }
state="$dir/apt"
mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/etc/preferences.d" "$state/etc/sources.list.d"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
echo "deb [signed-by=$keyring] $uri $suite main" > "$state/etc/sources.list"
: > "$state/status"
apt_private=(
  -o "Dir=/" -o "Dir::State::Lists=$state/lists" -o "Dir::State::status=$state/status"
  -o "Dir::Cache=$state/cache" -o "Dir::Etc::SourceList=$state/etc/sources.list"
  -o "Dir::Etc::SourceParts=$state/etc/sources.list.d" -o "Dir::Etc::Preferences=$state/etc/preferences"
  -o "Dir::Etc::PreferencesParts=$state/etc/preferences.d" -o "APT::Architecture=amd64"
  -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root" -o "Acquire::Languages=none"
)
apt-get -qq "${apt_private[@]}" update >&2
# The metapackage depends on the versioned image package of the suite's newest kernel.
image=$(apt-cache "${apt_private[@]}" depends linux-image-cloud-amd64 \
  | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$image" ] || { echo "$suite: linux-image-cloud-amd64 names no kernel package" >&2; exit 1; }
(cd "$dir" && apt-get -qq "${apt_private[@]}" download "$image" >&2)
deb=$(ls "$dir"/"$image"_*.deb | head -n1)
rm -rf "$dir/root"
dpkg-deb -x "$deb" "$dir/root"
rm -f "$deb"
ls "$dir"/root/boot/vmlinuz-* | head -n1
