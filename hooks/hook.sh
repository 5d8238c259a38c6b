#!/bin/sh
# git-sidecar hook (managed by `git sidecar hooks install`; `git sidecar hooks uninstall` removes it)
# It runs the hook that was here before (kept beside it as HOOKNAME.pre-sidecar),
# then starts git-sidecar in the background and returns. Until it returns it
# runs only shell builtins and one fork: git never waits for Go to start, for
# a git call or for a sync.
status=0
if [ -x "$0.pre-sidecar" ]; then
  "$0.pre-sidecar" "$@" || status=$?
fi
# The git dir. git exports GIT_DIR to hooks only in linked worktrees; a hook
# runs at the top of the work tree, where .git is the folder itself or a
# file saying "gitdir: PATH".
gd=${GIT_DIR:-.git}
if [ -f "$gd" ]; then
  IFS= read -r gd <"$gd" || :
  gd=${gd#gitdir: }
fi
# During a rebase, post-commit and post-checkout fire for every replayed
# commit; post-rewrite fires once at the end, and that is when we sync. It
# is checked here, while it is true: the background start may run after the
# rebase has ended.
case HOOKNAME in
post-rewrite) ;;
*)
  if [ -d "$gd/rebase-merge" ] || [ -d "$gd/rebase-apply" ]; then
    exit $status
  fi
  ;;
esac
# `git sidecar status --wait` waits while this marker exists: it goes once
# git-sidecar has recorded the request and started the sync.
mark="$gd/sidecar-hook.$$"
# (true, not the special builtin :, whose failed redirection would end the
# script.)
{ true >"$mark"; } 2>/dev/null || mark=
# The background part, with every descriptor away from git's, so that git
# does not wait on them. It runs at low CPU and I/O priority, and so does
# the sync it starts (both are inherited).
(
  set -- hook HOOKNAME "$@"
  if command -v git-sidecar >/dev/null 2>&1; then
    set -- git-sidecar "$@"
  else
    set -- git sidecar "$@"
  fi
  if command -v ionice >/dev/null 2>&1 && ionice -c3 true; then
    set -- ionice -c3 "$@"
  fi
  if command -v nice >/dev/null 2>&1; then
    set -- nice -n 10 "$@"
  fi
  "$@" || :
  if [ -n "$mark" ]; then
    rm -f "$mark"
  fi
) </dev/null >/dev/null 2>&1 &
exit $status
