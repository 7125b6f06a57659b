# Helpers the benchmark scripts share; they source it after cd-ing to the repository root: . scripts/lib.sh

# median NUMBERS...: the middle one (the mean of the two middle ones for an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}

# sweep_seconds BIN ARGS...: the wall seconds a `camscope sweep` reports on its summary line.
sweep_seconds() {
    "$@" 2>&1 | grep -E "swept [0-9]+ images in [0-9.]+ s" | sed -E "s/.* in ([0-9.]+) s.*/\1/" | head -1
}
