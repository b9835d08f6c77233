#!/usr/bin/env bash
# Peak memory of tokenize and of streaming through the Loader, on a 20 MB and a 200 MB text-like
# corpus (documents of 0.5-20 KB of Zipf-distributed words): by default one .jsonl file (a
# document per line); with --txt the same text as ONE .txt file, i.e. one 20 MB or 200 MB document.
# Prints one JSON line per run and a final line with the 200 MB / 20 MB ratios; exits 1 if a ratio
# exceeds 1.5 (memory must not grow with corpus or document size). Needs GNU time (/usr/bin/time;
# apt-get install -y time).
# Usage: bench/data-rss.sh [--txt] [tokenizer ...]      (default: byte gpt2)
set -euo pipefail
cd "$(dirname "$0")/.."
BUN="${BUN:-$PWD/node_modules/.bin/bun}"
EXT=jsonl
if [ "${1:-}" = "--txt" ]; then EXT=txt; shift; fi
TOKENIZERS=("${@:-byte}")
[ $# -eq 0 ] && TOKENIZERS=(byte gpt2)
WORK="${TMPDIR:-/tmp}/mhmoe-data-rss"
[ -x /usr/bin/time ] || { echo "error: /usr/bin/time not found (apt-get install -y time)" >&2; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT

cat > "$WORK/make-corpus.ts" <<'EOF'
// Deterministic text-like corpus: Zipf word frequencies, sentences, paragraphs, some non-ASCII.
// OUT.jsonl: one document per line; OUT.txt: the same documents as one text, a blank line apart.
const [out, mbArg] = process.argv.slice(2);
const target = Number(mbArg) * 1e6;
let s = 12345;
const rand = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
const syll = ["ka", "to", "ri", "en", "sta", "mo", "lu", "ver", "an", "qui", "é", "ß", "ion", "der", "al", "pre"];
const words = Array.from({ length: 5000 }, (_, i) => Array.from({ length: 1 + (i % 4) }, (_, j) => syll[(i * 7 + j * 13 + (i >> 3)) % syll.length]).join(""));
const zipf = () => words[Math.min(words.length - 1, Math.floor(Math.exp(rand() * Math.log(words.length))) - 1)];
const file = Bun.file(out).writer();
let written = 0;
while (written < target) {
  const want = 500 + rand() * 19500;
  let doc = "";
  while (doc.length < want) {
    let sentence = zipf();
    sentence = sentence[0].toUpperCase() + sentence.slice(1);
    for (let n = 3 + Math.floor(rand() * 15); n > 0; n--) sentence += (rand() < 0.08 ? ", " : " ") + zipf();
    doc += sentence + (rand() < 0.1 ? ".\n\n" : ". ");
  }
  const line = out.endsWith(".txt") ? doc + "\n\n" : JSON.stringify({ text: doc }) + "\n";
  file.write(line);
  written += Buffer.byteLength(line);
}
await file.end();
EOF

peak_mb() { awk -F': ' '/Maximum resident set size/ {printf "%.1f", $2/1024}' "$1"; }

declare -A RSS
for mb in 20 200; do
  corpus="$WORK/corpus-$mb.$EXT"
  "$BUN" "$WORK/make-corpus.ts" "$corpus" "$mb"
  for tok in "${TOKENIZERS[@]}"; do
    out="$WORK/shards-$mb-$tok"
    # The test entry point registers exactly the `tokenize` command the real CLI registers.
    /usr/bin/time -v "$BUN" test/fixtures/tokenize-cli.ts tokenize --input "$corpus" --out "$out" \
      --tokenizer "$tok" --json >"$WORK/summary.json" 2>"$WORK/time-tokenize.txt"
    /usr/bin/time -v "$BUN" bench/loader.ts --dir "$out" --shapes 16x1024 >"$WORK/loader.json" 2>"$WORK/time-stream.txt"
    RSS[tokenize-$tok-$mb]=$(peak_mb "$WORK/time-tokenize.txt")
    RSS[stream-$tok-$mb]=$(peak_mb "$WORK/time-stream.txt")
    W="$WORK" EXT="$EXT" "$BUN" -e '
      const [mb, tok, t, st] = process.argv.slice(1);
      const s = JSON.parse(await Bun.file(process.env.W + "/summary.json").text());
      const l = JSON.parse(await Bun.file(process.env.W + "/loader.json").text());
      console.log(JSON.stringify({ bench: "data-rss", corpus_mb: +mb, input: process.env.EXT, documents: s.documents, tokenizer: tok, tokens: s.tokens, shards: s.train.shards + s.val.shards,
        tokenize_mb_per_s: s.input_mb_per_s, tokenize_peak_rss_mb: +t, stream_tokens_per_s: l.tokens_per_s, stream_peak_rss_mb: +st }));
    ' "$mb" "$tok" "${RSS[tokenize-$tok-$mb]}" "${RSS[stream-$tok-$mb]}"
    rm -rf "$out"
  done
  rm -f "$corpus"
done

status=0
for tok in "${TOKENIZERS[@]}"; do
  rt=$(awk -v a="${RSS[tokenize-$tok-200]}" -v b="${RSS[tokenize-$tok-20]}" 'BEGIN {printf "%.3f", a/b}')
  rs=$(awk -v a="${RSS[stream-$tok-200]}" -v b="${RSS[stream-$tok-20]}" 'BEGIN {printf "%.3f", a/b}')
  ok=$(awk -v a="$rt" -v b="$rs" 'BEGIN {print (a <= 1.5 && b <= 1.5) ? "true" : "false"}')
  echo "{\"bench\":\"data-rss-ratio\",\"input\":\"$EXT\",\"tokenizer\":\"$tok\",\"tokenize_rss_ratio_200_over_20\":$rt,\"stream_rss_ratio_200_over_20\":$rs,\"within_1_5x\":$ok}"
  [ "$ok" = true ] || status=1
done
exit $status
