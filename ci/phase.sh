#!/usr/bin/env bash
# usage: ci/phase.sh REPORT_DIR NAME COMMAND...
# Runs COMMAND and appends "NAME<TAB>seconds<TAB>exit status<TAB>start (epoch seconds)" to
# REPORT_DIR/phases.tsv, for ci/report.py; exits with COMMAND's status.
dir=$1
name=$2
shift 2
mkdir -p "$dir"
start=$(date +%s)
"$@"
code=$?
printf '%s\t%s\t%s\t%s\n' "$name" "$(($(date +%s) - start))" "$code" "$start" >> "$dir/phases.tsv"
exit "$code"
