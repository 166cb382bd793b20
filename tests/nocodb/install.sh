#!/bin/bash
# Install (once) one NocoDB version that the acceptance test runs, into a cache outside the
# repository. Each version has its own directory versions/<version>/ with package.json (NocoDB,
# express, and in "engines" the Node.js it runs on) and package-lock.json.
#
# The install is keyed by NocoDB's version and a hash of package.json + package-lock.json, so a
# re-run with the same files takes no time and a changed lock gets a fresh directory. It is
# built in a scratch directory and renamed when complete: a half-finished install is never used.
#
# A plain `npm install` of nocodb 0.262.5 fails three ways; what this script does instead:
#   - the xlsx dependency is a download link outside the registry: package.json overrides it
#     with the registry's xlsx 0.18.5;
#   - nocodb-sdk's preinstall runs `npx only-allow pnpm`: install with --ignore-scripts, then
#     rebuild the three native modules that need their scripts (sqlite3, sharp, msgpackr-extract);
#   - sqlite3 finds no prebuilt binary it may download and compiles itself (about 45-130 s):
#     it needs g++, make, python3 and Node's headers (--nodedir).
#   - 0.301.3 also builds lz4 natively.
# NocoDB 0.262.5 needs Node.js 20, 0.301.3 needs 22. Unless the machine's node has the major
# version that package.json's "engines" names, that Node.js comes from the registry's
# node-linux-<arch> package (the registry the machine's npm is configured with), installed into
# the cache too.
#
# usage: tests/nocodb/install.sh VERSION [CACHE_DIR]  (default /var/cache/facusync-test/nocodb)
# env:   FACUSYNC_NOCODB_NODE_PACKAGE=1         use the registry's Node.js even when the
#                                               machine's node has the right major version
# prints the install directory (holding node_modules/ and bin/node) as its last line.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { echo "usage: $0 VERSION [CACHE_DIR]; versions: $(ls "$HERE/versions")" >&2; exit 64; }
SPEC="$HERE/versions/$1"
[ -f "$SPEC/package.json" ] || { echo "no $SPEC/package.json; versions: $(ls "$HERE/versions")" >&2; exit 64; }
CACHE=${2:-${FACUSYNC_NOCODB_CACHE:-/var/cache/facusync-test/nocodb}}

log() { echo "nocodb-install: $*" >&2; }
die() { log "$*"; exit "${2:-1}"; }

apt_install() {
    [ "$(id -u)" = 0 ] || die "missing $*: install them (apt-get install $*) or run as root" 69
    log "installing Debian packages: $*"
    apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
}

node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

# --- tools ------------------------------------------------------------------------------------
missing=()
command -v npm >/dev/null || missing+=(npm)
command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
command -v python3 >/dev/null || missing+=(python3)
command -v flock >/dev/null || missing+=(util-linux)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]][sys.argv[3]])' \
    "$SPEC/package.json" "$@"; }
VERSION=$(field dependencies nocodb)
NODE_PACKAGE_VERSION=$(field engines node)
NODE_MAJOR=${NODE_PACKAGE_VERSION%%.*}
KEY=$(cat "$SPEC/package.json" "$SPEC/package-lock.json" | sha256sum | cut -c1-12)

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock-$VERSION"
flock -w 1800 9 || die "another install holds $CACHE/.lock-$VERSION" 75

# --- Node.js -------------------------------------------------------------------------------
NODE_DIR=""   # a directory with bin/node and include/node/node.h
system_node=$(command -v node || true)
if [ -z "${FACUSYNC_NOCODB_NODE_PACKAGE:-}" ] && [ -n "$system_node" ] \
        && [ "$(node_major "$system_node")" = "$NODE_MAJOR" ]; then
    prefix=$(dirname "$(dirname "$(readlink -f "$system_node")")")
    if [ -f "$prefix/include/node/node.h" ]; then
        NODE_DIR=$prefix
    fi
fi
if [ -z "$NODE_DIR" ]; then
    case "$(uname -m)" in
        x86_64) arch=x64 ;;
        aarch64) arch=arm64 ;;
        *) die "no node-linux package for $(uname -m): install Node.js $NODE_MAJOR by hand" 69 ;;
    esac
    NODE_HOME="$CACHE/node-$NODE_PACKAGE_VERSION-$arch"
    if [ ! -x "$NODE_HOME/node_modules/node-linux-$arch/bin/node" ]; then
        log "fetching Node.js $NODE_PACKAGE_VERSION (node-linux-$arch) into $NODE_HOME"
        rm -rf "$NODE_HOME.tmp"
        mkdir -p "$NODE_HOME.tmp"
        echo '{"name": "facusync-node", "private": true}' >"$NODE_HOME.tmp/package.json"
        npm install --prefix "$NODE_HOME.tmp" --no-audit --no-fund --ignore-scripts \
            "node-linux-$arch@$NODE_PACKAGE_VERSION" >&2
        rm -rf "$NODE_HOME"
        mv "$NODE_HOME.tmp" "$NODE_HOME"
    fi
    NODE_DIR="$NODE_HOME/node_modules/node-linux-$arch"
fi
# npm's own scripts and node-gyp run under the node found first on PATH.
export PATH="$NODE_DIR/bin:$PATH"

# The native modules are built for this Node.js: it is part of the install's key.
DEST="$CACHE/$VERSION-$(node -p '"node" + process.versions.node.split(".")[0] + "-abi" + process.versions.modules')-$KEY"
if [ -f "$DEST/.complete" ]; then
    echo "$DEST"
    exit 0
fi
log "Node.js $(node -v) from $NODE_DIR"

# --- NocoDB -----------------------------------------------------------------------------------
started=$(date +%s)
TMP="$DEST.tmp.$$"
trap 'rm -rf "$TMP"' EXIT
rm -rf "$CACHE/$VERSION-"*.tmp.*
mkdir -p "$TMP"
cp "$SPEC/package.json" "$SPEC/package-lock.json" "$TMP/"
log "installing nocodb $VERSION into $DEST (once; a few minutes)"
(
    cd "$TMP"
    npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2
    native=()
    for module in sqlite3 sharp msgpackr-extract lz4; do
        [ ! -d "node_modules/$module" ] || native+=("$module")
    done
    npm rebuild "${native[@]}" --nodedir="$NODE_DIR" --loglevel=error >&2
)
node -e 'require(process.argv[1] + "/node_modules/sqlite3")' "$TMP" \
    || die "sqlite3's native module does not load; see the output above"
mkdir -p "$TMP/bin"
ln -s "$NODE_DIR/bin/node" "$TMP/bin/node"
echo "$VERSION" >"$TMP/.complete"
rm -rf "$DEST"
mv "$TMP" "$DEST"
trap - EXIT
log "installed in $(( $(date +%s) - started )) s"
echo "$DEST"
