// The in-browser reader's JavaScript run by Node, for tests/test_web_reader.py: the same modules the
// page loads (from a web export's folder), fed JSON lines on stdin, answering JSON lines on stdout.
//
//   node tests/web_reader_node.mjs DIR prepare      {"path"}          -> {"height", "width", "data" (base64)} | {"error"}
//   node tests/web_reader_node.mjs DIR decode       [ids...]          -> "latex"
//   node tests/web_reader_node.mjs DIR normalize    "latex"           -> "normalized"
//   node tests/web_reader_node.mjs DIR loops        [ids...]          -> {"looping", "cut"}
//   node tests/web_reader_node.mjs DIR glyph        {"path", "method"} -> glyph height (px) | null

import { readFile } from "node:fs/promises";
import path from "node:path";
import readline from "node:readline";
import { pathToFileURL } from "node:url";

const [dir, command] = process.argv.slice(2);
const load = (name) => import(pathToFileURL(path.join(dir, name)).href);
const settings = JSON.parse(await readFile(path.join(dir, "reader.json"), "utf-8"));
const { loadImage } = await load("image.js");
const { estimateGlyphHeight, inkContent, prepare, toGray } = await load("preprocess.js");
const { TokenDecoder, normalize } = await load("latex.js");
const { cutLoop, looping } = await load("decode.js");
const tokenizer = new TokenDecoder(JSON.parse(await readFile(path.join(dir, settings.tokenizer), "utf-8")),
  settings.tokens);
const depth = settings.latex.max_group_depth;

async function answer(job) {
  if (command === "prepare") {
    try {
      const input = prepare(await loadImage(new Uint8Array(await readFile(job.path)), settings.preprocess), settings);
      return { height: input.height, width: input.width, data: Buffer.from(input.data).toString("base64") };
    } catch (err) {
      return { error: err.message };
    }
  }
  if (command === "glyph") {
    const gray = toGray(await loadImage(new Uint8Array(await readFile(job.path)), settings.preprocess));
    return estimateGlyphHeight(inkContent(gray, settings.preprocess), job.method, settings.preprocess);
  }
  if (command === "decode") return tokenizer.decodeLatex(job, depth);
  if (command === "normalize") return normalize(job, depth);
  if (command === "loops") return { looping: looping(job, settings.decoding), cut: cutLoop(job, settings.decoding) };
  throw new Error(`unknown command ${command}`);
}

for await (const line of readline.createInterface({ input: process.stdin })) {
  if (line.trim()) process.stdout.write(JSON.stringify(await answer(JSON.parse(line))) + "\n");
}
