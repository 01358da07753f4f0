# shellcheck shell=bash
# Helpers shared by run_gpu_bench.sh and run_gpu_scaling.sh (sourced, not run).
# They read the key=value result lines the benchmark programs print; the
# sourcing script sets $outdir, where each program's log is $outdir/NAME.log.

# result_line NAME WORD: the last "WORD config=..." line of NAME's log, from
# anywhere in a line, as launchers may put a prefix before it.
# shellcheck disable=SC2154 # outdir: set by the sourcing script
result_line() { grep -o "$2 config=.*" "$outdir/$1.log" 2>/dev/null | tail -n 1 || true; }
# field LINE KEY: the value of KEY in the key=value line LINE ("" if absent).
field() {
    awk -v k="$2=" '{
        for (i = 1; i <= NF; i++)
            if (index($i, k) == 1) { print substr($i, length(k) + 1); exit }
    }' <<<"$1"
}
is_num() { [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; }
# calc FORMAT EXPR A B C: awk arithmetic on a, b, c when every operand is a
# number, else "n/a".
calc() {
    local fmt=$1 expr=$2 v
    shift 2
    for v in "$@"; do is_num "$v" || { echo n/a; return; }; done
    awk -v a="${1:-0}" -v b="${2:-0}" -v c="${3:-0}" "BEGIN { printf \"$fmt\", $expr }" 2>/dev/null ||
        echo n/a
}
# verdict VALUE LIMIT [IF_MISSING]: PASS when VALUE >= LIMIT, MISS when below,
# IF_MISSING (n/a) when there is no value.
verdict() {
    is_num "$1" || { echo "${3:-n/a}"; return; }
    awk -v v="$1" -v l="$2" 'BEGIN { print (v >= l) ? "PASS" : "MISS" }'
}
# gt A B: A > B, both numbers.
gt() { is_num "$1" && is_num "$2" && awk -v a="$1" -v b="$2" 'BEGIN { exit !(a > b) }'; }
