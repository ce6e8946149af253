#!/usr/bin/env bash
# Runs the make targets given, in order, stopping at the first failure, and prints how long each took.
# Usage: harness/timed-steps.sh TARGET...   (MAKE names the make to run; default make)
set -uo pipefail

declare -a names seconds
status=0
for target in "$@"; do
    started=$SECONDS
    ${MAKE:-make} --no-print-directory "$target"
    status=$?
    names+=("$target")
    seconds+=($((SECONDS - started)))
    ((status == 0)) || break
done

echo
echo "where the time went:"
total=0
for i in "${!names[@]}"; do
    printf '  %-18s %5d s\n' "${names[$i]}" "${seconds[$i]}"
    total=$((total + seconds[i]))
done
printf '  %-18s %5d s\n' total "$total"
((status == 0)) || echo "stopped: make ${names[-1]} failed (exit $status)"
exit "$status"
