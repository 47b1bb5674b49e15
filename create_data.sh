#!/usr/bin/env bash
# One command from formulas to training data (the seed's create_data.sh):
#
#   ./create_data.sh FORMULAS OUT_DIR [VOCAB_SIZE]
#
# FORMULAS is a formula file (one formula per line) or a folder of *.txt formula files.
# Renders every file with real TeX (OUT_DIR/render/<name>/), deduplicates on the normalized
# formula and splits train/valid/test without overlap, trains the BPE tokenizer on the training
# labels and writes OUT_DIR/{train,valid,test}.pkl, OUT_DIR/tokenizer.json (BPE),
# OUT_DIR/tokenizer_tokens.json (one id per LaTeX token; the datasets work with either), and one
# OUT_DIR/valid_<name>.pkl and OUT_DIR/test_<name>.pkl per formula file (per-corpus validation
# and scores).
# A formula file whose render folder already has its labels.tsv (newer than the file) is not
# rendered again, so an interrupted run continues; RERENDER=1 renders everything.
# Settings through the environment: PYTHON (default .venv/bin/python if present), RENDER_ARGS
# (extra renderer options, e.g. "--dpi 110 150 --workers 2"), SPLIT_ARGS (e.g. "--val 0.01"),
# GLYPH_ESTIMATOR (how the datasets measure glyph heights: soft, the default, or stroke).
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 FORMULAS_FILE_OR_DIR OUT_DIR [VOCAB_SIZE]" >&2
    exit 2
fi
formulas=$1
out=$2
vocab=${3:-8000}
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-$([ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3)}
glyphs=${GLYPH_ESTIMATOR:-soft}

if [ -d "$formulas" ]; then
    files=("$formulas"/*.txt)
elif [ -f "$formulas" ]; then
    files=("$formulas")
else
    echo "error: $formulas: no such formula file or folder" >&2
    exit 2
fi
[ -e "${files[0]}" ] || { echo "error: $formulas: no *.txt formula files" >&2; exit 2; }
mkdir -p "$out"

labels=()
for f in "${files[@]}"; do
    name=$(basename "$f" .txt)
    if [ -z "${RERENDER:-}" ] && [ "$out/render/$name/labels.tsv" -nt "$f" ]; then
        # A finished render of this file exists (labels.tsv is written last): a re-run after an
        # interruption continues from here.  RERENDER=1 renders again.
        echo "== render $f: kept $out/render/$name (finished before; RERENDER=1 renders again)"
    else
        echo "== render $f -> $out/render/$name"
        # shellcheck disable=SC2086
        "$python" -m pix2tex.render --formulas "$f" --out "$out/render/$name" ${RENDER_ARGS:-}
    fi
    labels+=("$out/render/$name/labels.tsv")
done

echo "== split"
# shellcheck disable=SC2086
"$python" -m pix2tex.dataset.split --labels "${labels[@]}" --out "$out" ${SPLIT_ARGS:-}

echo "== tokenizer"
"$python" -m pix2tex.dataset.dataset -e "$out/train.tsv" -s "$vocab" -o "$out/tokenizer.json"
"$python" -m pix2tex.dataset.dataset -e "$out/train.tsv" -s "$vocab" --kind tokens -o "$out/tokenizer_tokens.json"

echo "== datasets"
for split in train valid test; do
    "$python" -m pix2tex.dataset.dataset -i "$out" -e "$out/$split.tsv" -t "$out/tokenizer.json" -o "$out/$split.pkl" \
        --glyph-estimator "$glyphs"
done
for f in "${files[@]}"; do
    name=$(basename "$f" .txt)
    for split in valid test; do
        grep -F "render/$name/" "$out/$split.tsv" > "$out/${split}_$name.tsv" || true
        if [ -s "$out/${split}_$name.tsv" ]; then
            "$python" -m pix2tex.dataset.dataset -i "$out" -e "$out/${split}_$name.tsv" -t "$out/tokenizer.json" \
                -o "$out/${split}_$name.pkl" --glyph-estimator "$glyphs"
        fi
    done
done
echo "done: $out/{train,valid,test}.pkl, $out/tokenizer.json and $out/tokenizer_tokens.json"
