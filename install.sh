#!/bin/sh
# Builds the three git-relay programs and installs them.
#
#   ./install.sh           into ${PREFIX:-$HOME/.local}/bin (a developer machine)
#   ./install.sh --server  into ${PREFIX:-/usr/local}/bin, plus the systemd unit
#                          /etc/systemd/system/git-relay-server.service and, only if
#                          there is none yet, the settings file /etc/git-relay/server.env
#                          (mode 0600). An existing settings file or key is never touched.
#
# DESTDIR, when set, stages every file under that folder instead of / (for
# packages, and for the tests); the unit still names $PREFIX/bin.
set -eu

usage() {
  sed -n '2,12s/^# \{0,1\}//p' "$0"
}

server=
case "${1:-}" in
'') ;;
--server) server=1 ;;
-h | --help) usage; exit 0 ;;
*) echo "install.sh: unknown option $1; run ./install.sh --help" >&2; exit 2 ;;
esac

cd "$(dirname "$0")"
destdir=${DESTDIR:-}
if [ -n "$server" ]; then
  prefix=${PREFIX:-/usr/local}
else
  prefix=${PREFIX:-$HOME/.local}
fi
bindir=$destdir$prefix/bin
mkdir -p "$bindir"
version=$(git describe --tags --always --dirty 2>/dev/null || echo devel)
CGO_ENABLED=0 go build -ldflags "-X github.com/git-relay/git-relay/internal/cli.Version=$version" -o "$bindir/" ./cmd/git-remote-relay ./cmd/git-relay-server ./cmd/git-sidecar
echo "installed git-remote-relay, git-relay-server and git-sidecar into $bindir"

if [ -z "$server" ]; then
  case ":$PATH:" in
  *":$bindir:"*) ;;
  *) echo "note: $bindir is not on your PATH; add it so that git finds git-remote-relay and git-sidecar:" >&2
     echo "  export PATH=\"$bindir:\$PATH\"" >&2 ;;
  esac
  exit 0
fi

# The systemd unit, pointed at the binaries just installed.
unitdir=$destdir/etc/systemd/system
unit=$unitdir/git-relay-server.service
mkdir -p "$unitdir"
sed "s#/usr/local/bin/#$prefix/bin/#g" deploy/systemd/git-relay-server.service >"$unit.tmp"
chmod 0644 "$unit.tmp"
mv "$unit.tmp" "$unit"
echo "installed the systemd unit $unit"

# The settings hold the upstream token: created 0600 from the start, and
# never replaced once there.
confdir=$destdir/etc/git-relay
if [ ! -d "$confdir" ]; then
  (umask 077 && mkdir -p "$confdir")
fi
env=$confdir/server.env
if [ -e "$env" ]; then
  echo "kept $env as it is"
else
  (umask 077 && cp deploy/systemd/server.env "$env.tmp" && chmod 0600 "$env.tmp" && mv "$env.tmp" "$env")
  echo "installed the settings file $env (mode 0600)"
fi
key=/etc/git-relay/relay.key
if [ -e "$destdir$key" ]; then
  echo "kept $destdir$key as it is"
fi

# The service's own user, on a live install by root.
if [ -z "$destdir" ] && [ "$(id -u)" = 0 ]; then
  if ! getent passwd git-relay >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/git-relay --no-create-home --shell /usr/sbin/nologin git-relay
    echo "created the system user git-relay"
  fi
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
  fi
  user_step=
else
  user_step="  - create the service's user: useradd --system --user-group --home-dir /var/lib/git-relay --shell /usr/sbin/nologin git-relay
"
fi

printf '%s' "
next steps:
${user_step}  - put the upstream token and the serve flags in /etc/git-relay/server.env
"
if [ ! -e "$destdir$key" ]; then
  printf '%s\n' "  - create the shared key once: git-relay-server keygen -o $key
    (it stays root's, mode 0600: systemd hands the service a private copy; give each
    developer a copy as relay.keyFile)"
else
  printf '%s\n' "  - the shared key is $key (kept)"
fi
printf '%s\n' "  - start it now and at boot: systemctl daemon-reload && systemctl enable --now git-relay-server
  - follow it: journalctl -u git-relay-server -f"
