#!/usr/bin/env bash
# Run a benchmark with other heavy processes paused, so that they do not share its cores.
#
#     benchmarks/quiet.sh PATTERN -- COMMAND [ARGS...]
#     benchmarks/quiet.sh python -- python benchmarks/feed.py --images 320
#
# The current user's processes whose command line matches PATTERN (`pgrep -f`, an extended
# regular expression) are stopped with SIGSTOP, COMMAND runs, and they get SIGCONT when it ends,
# however it ends (an error, Ctrl-C, SIGTERM). This script, its parents and COMMAND itself are
# never paused. Processes started while COMMAND runs are not paused: say so beside the figures.
set -euo pipefail

if [[ $# -lt 3 || $2 != "--" ]]; then
    echo "usage: $0 PATTERN -- COMMAND [ARGS...]" >&2
    exit 2
fi
pattern=$1
shift 2

# This shell and its ancestors: pausing one of them would pause the benchmark too.
keep=" $$ "
pid=$$
while [[ $pid -gt 1 ]]; do
    pid=$(ps -o ppid= -p "$pid" | tr -d ' ')
    keep+="$pid "
done

paused=()
resume() {
    if [[ ${#paused[@]} -gt 0 ]]; then
        kill -CONT "${paused[@]}" 2>/dev/null || true
        echo "quiet.sh: resumed ${#paused[@]} process(es)" >&2
    fi
}
trap resume EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for pid in $(pgrep -u "$(id -u)" -f -- "$pattern" || true); do
    if [[ $keep != *" $pid "* ]] && kill -STOP "$pid" 2>/dev/null; then
        paused+=("$pid")
    fi
done
echo "quiet.sh: paused ${#paused[@]} process(es) matching '$pattern': ${paused[*]:-none}" >&2

"$@"
