#!/usr/bin/env bash
# Draws the training loss and the surrogate's held-out error against the
# solver step from a metrics file of heat2d (or burgers1d: same records).
#
#   examples/heat2d/plot.sh [metrics.jsonl] [plot.png]
#
# Needs gnuplot (Debian: gnuplot-nox). Without it, says so and exits 0: the
# run is still good, only the picture is missing.
set -euo pipefail
metrics=${1:-heat2d.jsonl}
png=${2:-${metrics%.jsonl}.png}

if ! command -v gnuplot >/dev/null 2>&1; then
  echo "plot.sh: gnuplot not found (Debian: apt-get install gnuplot-nox); skipping $png" >&2
  exit 0
fi
if [ ! -r "$metrics" ]; then
  echo "plot.sh: cannot read $metrics" >&2
  exit 1
fi

data=$(mktemp)
trap 'rm -f "$data"' EXIT
# One row per interval record: step, loss, rel_l2, no_change_rel_l2 and
# field_rel_l2 (heat2d's mode = 'both': the whole-field surrogate's error).
awk '
  function field(key,    s) {
    if (!match($0, "\"" key "\": *[-+0-9.eE]+")) return "NaN"
    s = substr($0, RSTART, RLENGTH)
    sub(/^[^:]*: */, "", s)
    return s
  }
  /"event": "interval"/ {
    print field("step"), field("loss"), field("rel_l2"), field("no_change_rel_l2"), field("field_rel_l2")
  }' "$metrics" >"$data"
if [ ! -s "$data" ]; then
  echo "plot.sh: no interval records in $metrics" >&2
  exit 1
fi
final=$(awk '/"event": "held_out"/ { if (match($0, /"rel_l2": *[-+0-9.eE]+/)) {
  s = substr($0, RSTART, RLENGTH); sub(/^[^:]*: */, "", s); printf "%.2e\n", s } }' "$metrics")

# pngcairo draws nicer lines; the gd png terminal is the fallback.
terminal="png size 900,560"
if gnuplot -e "set terminal" 2>&1 | grep -q pngcairo; then
  terminal="pngcairo size 900,560 font ',10'"
fi
title="$(basename "$metrics" .jsonl)"
# A run resumed from a checkpoint: a dotted line at each solver step it resumed after.
resumes=$(awk '/"event": "resumed"/ { if (match($0, /"step": *[0-9]+/)) {
  s = substr($0, RSTART, RLENGTH); sub(/^[^:]*: */, "", s)
  printf "set arrow from %s, graph 0 to %s, graph 1 nohead dashtype 3 lc rgb \"gray40\"\n", s, s
  printf "set label \"resumed\" at %s, graph 0.04 offset 0.5, 0 font \",9\"\n", s } }' "$metrics")
[ -n "$final" ] && title="$title: held-out relative L2 error at the end $final"
# gnuplot stops on a column with no number at all: the whole-field curve only when there is one.
field_curve="" main_title="surrogate" loss_title="training loss (MSE)"
if awk '$5 != "NaN" { found = 1 } END { exit !found }' "$data"; then
  field_curve=", '' using 1:5 with linespoints pt 9 ps 0.6 title 'whole-field surrogate relative L2 error (held out)'"
  main_title="per-patch surrogate" loss_title="per-patch training loss (MSE)"
fi

gnuplot <<GNUPLOT
set terminal $terminal
set output '$png'
set title "$title"
set xlabel 'solver step'
set logscale y
set format y '10^{%L}'
set grid
set key top right
$resumes
plot '$data' using 1:2 with linespoints pt 7 ps 0.6 title '$loss_title', \
     '' using 1:3 with linespoints pt 5 ps 0.6 title '$main_title relative L2 error (held out)', \
     '' using 1:4 with lines dashtype 2 title "relative L2 error of predicting 'no change'"$field_curve
GNUPLOT
echo "plot.sh: wrote $png"
