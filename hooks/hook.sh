#!/bin/sh
# git-sidecar hook (managed by `git sidecar hooks install`; `git sidecar hooks uninstall` removes it)
# It runs the hook that was here before (kept beside it as HOOKNAME.pre-sidecar),
# then asks git-sidecar to sync in the background; it never delays git.
status=0
if [ -x "$0.pre-sidecar" ]; then
  "$0.pre-sidecar" "$@" || status=$?
fi
if command -v git-sidecar >/dev/null 2>&1; then
  git-sidecar hook HOOKNAME "$@" </dev/null >/dev/null 2>&1 || :
else
  git sidecar hook HOOKNAME "$@" </dev/null >/dev/null 2>&1 || :
fi
exit $status
