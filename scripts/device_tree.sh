#!/usr/bin/env bash
# The device tool sends the working tree (tracked + untracked-not-ignored files + carry) and refuses more than 64 MiB.
# The shipped weights alone are ~63 MB, so GPU calls that carry anything need them out of the tree for a while:
#   bash scripts/device_tree.sh off   # untrack + ignore the shipped weights (files stay on disk; do not commit now)
#   bash scripts/device_tree.sh on    # track them again (run before any commit)
set -euo pipefail
W=src/vidfusion/weights/tiny-t2v
EXCLUDE=.git/info/exclude
case "$1" in
off) git rm -r -q --cached "$W" && echo "/$W/" >> $EXCLUDE && echo "shipped weights out of the device tree" ;;
on) sed -i "\#^/$W/\$#d" $EXCLUDE && git add "$W" && echo "shipped weights tracked again" ;;
*) echo "usage: $0 off|on" >&2; exit 2 ;;
esac
