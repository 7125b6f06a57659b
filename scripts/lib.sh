# Helpers the benchmark scripts share; they source it after cd-ing to the repository root: . scripts/lib.sh

# median NUMBERS...: the middle one (the mean of the two middle ones for an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}

# sweep_seconds BIN ARGS...: the wall seconds a `camscope sweep` reports on its summary line.
sweep_seconds() {
    "$@" 2>&1 | grep -E "swept [0-9]+ images in [0-9.]+ s" | sed -E "s/.* in ([0-9.]+) s.*/\1/" | head -1
}

# class_folders DATA IMAGES COPIES: a class-folder data set in DATA of COPIES links to each sample
# photo found in IMAGES, in a folder named by its ImageNet class (photos absent from IMAGES are
# left out: both.png is only in ../shared/images).
class_folders() {
    local data=$1 images=$2 copies=$3 photo i
    declare -A class=([chelsea.png]=tabby [both.png]=tabby [coffee.png]=espresso
        [dogs.png]="golden retriever" [grace_hopper.jpg]="military uniform")
    for photo in "${!class[@]}"; do
        [ -f "$images/$photo" ] || continue
        mkdir -p "$data/${class[$photo]}"
        for i in $(seq 1 "$copies"); do
            ln -s "$(realpath "$images/$photo")" "$data/${class[$photo]}/$i-$photo"
        done
    done
}
