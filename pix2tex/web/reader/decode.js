// Greedy decoding of one image, as pix2tex.models.decoding.generate does it at temperature 0: from
// BOS, PAD and BOS never chosen, argmax, stop at EOS or when the tail loops (a block of at most
// loop_period tokens repeated loop_min_copies times over loop_min_tokens or more), at most
// max_seq_len - 1 tokens; a sequence without EOS keeps one copy of its repeating tail (cut_loop).
// The confidence is the mean log-probability of the chosen tokens, EOS included, in float32 as
// PyTorch computes it.  The rules' constants come from reader.json ("decoding", "tokens").

const f32 = Math.fround;

/** decoding._looping for one sequence. */
export function looping(ids, rules) {
  for (let period = 1; period <= rules.loop_period; period++) {
    const window = Math.max(rules.loop_min_tokens, rules.loop_min_copies * period);
    if (window > ids.length) break; // the window only grows with the period
    const tail = ids.slice(ids.length - window);
    let repeats = true;
    for (let i = 0; i + period < tail.length && repeats; i++) repeats = tail[i + period] === tail[i];
    if (repeats) return true;
  }
  return false;
}

/** decoding.cut_loop: a repeating tail cut to one copy of its block (the longest such tail). */
export function cutLoop(ids, rules, minCopies = rules.cut_loop_min_copies) {
  let keep = ids.length;
  for (let period = 1; period <= rules.loop_period; period++) {
    let start = ids.length - period; // walk back while the token a period later is the same
    while (start > 0 && ids[start - 1] === ids[start - 1 + period]) start -= 1;
    if (start >= 0 && ids.length - start >= minCopies * period) keep = Math.min(keep, start + period);
  }
  return ids.slice(0, keep);
}

/** decoding.generation_logprobs + argmax: the chosen token and its log-probability (float32). */
export function chooseToken(logits, tokens) {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (i !== tokens.pad && i !== tokens.bos && logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) if (i !== tokens.pad && i !== tokens.bos) sum += Math.exp(logits[i] - max);
  const logSum = f32(Math.log(sum));
  let best = -1, bestLp = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    if (i === tokens.pad || i === tokens.bos) continue;
    const lp = f32(f32(logits[i] - max) - logSum); // log_softmax's (x - max) - log(sum exp), in float32
    if (lp > bestLp) [best, bestLp] = [i, lp];
  }
  return [best, bestLp];
}

/**
 * Decode one image: ``step(token)`` resolves to the next-token logits (Float32Array) after
 * ``token`` and keeps its own cache.  Resolves to {ids (without BOS), confidence}.
 */
export async function generate(step, settings) {
  const tokens = settings.tokens, rules = settings.decoding;
  const steps = settings.model.max_seq_len - 1; // BOS takes the first position
  const window = Math.max(rules.loop_min_tokens, rules.loop_min_copies * rules.loop_period);
  let ids = [], last = tokens.bos, sum = 0;
  for (let t = 0; t < steps; t++) {
    const [next, lp] = chooseToken(await step(last), tokens);
    sum = f32(sum + lp);
    ids.push(next);
    if (next === tokens.eos) break;
    if (ids.length >= rules.loop_min_tokens && looping(ids.slice(Math.max(0, ids.length - window)), rules)) break;
    last = next;
  }
  const confidence = f32(sum / ids.length);
  if (!ids.includes(tokens.eos)) ids = cutLoop(ids, rules); // stopped as a loop or at the length limit
  return { ids, confidence };
}
