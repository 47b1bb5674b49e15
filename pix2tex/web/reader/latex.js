// Token ids -> the LaTeX that pix2tex shows: LatexTokenizer.decode_latex (pix2tex/tokenizer.py), that is
// the Hugging Face tokenizer's decode of the model folder's own tokenizer.json followed by
// pix2tex.normalize.normalize, ported rule for rule (pix2tex/normalize.py).  Strings are handled as
// arrays of code points, as Python indexes them.

// Python's str.isspace() and the digits that str.isdigit() accepts beyond the decimal ones (Unicode 14).
const SPACE = /^[\u{9}-\u{d}\u{1c}-\u{20}\u{85}\u{a0}\u{1680}\u{2000}-\u{200a}\u{2028}-\u{2029}\u{202f}\u{205f}\u{3000}]$/u;
const DIGIT = new RegExp("^[\\p{Nd}\\u{b2}-\\u{b3}\\u{b9}\\u{1369}-\\u{1371}\\u{19da}\\u{2070}\\u{2074}-\\u{2079}" +
  "\\u{2080}-\\u{2089}\\u{2460}-\\u{2468}\\u{2474}-\\u{247c}\\u{2488}-\\u{2490}\\u{24ea}\\u{24f5}-\\u{24fd}\\u{24ff}" +
  "\\u{2776}-\\u{277e}\\u{2780}-\\u{2788}\\u{278a}-\\u{2792}\\u{10a40}-\\u{10a43}\\u{10e60}-\\u{10e68}" +
  "\\u{11052}-\\u{1105a}\\u{1f100}-\\u{1f10a}]$", "u");
const ALPHA = /^\p{L}$/u;

const chars = (s) => Array.from(s);
const isSpace = (c) => SPACE.test(c);
const isAlpha = (s) => s.length > 0 && chars(s).every((c) => ALPHA.test(c));
const isDigit = (s) => s.length > 0 && chars(s).every((c) => DIGIT.test(c));
const isAsciiLetter = (c) => /^[A-Za-z]$/.test(c);
const isAsciiAlnum = (c) => /^[A-Za-z0-9]$/.test(c);
const cpLength = (s) => chars(s).length;

/** Python's str.strip(): whitespace off both ends. */
function strip(s) {
  const a = chars(s);
  let i = 0, j = a.length;
  while (i < j && isSpace(a[i])) i++;
  while (j > i && isSpace(a[j - 1])) j--;
  return a.slice(i, j).join("");
}

// -- the tokenizer's decode ---------------------------------------------------------------------------

/** Decoding of one tokenizer.json: ids -> text, as ``tokenizers`` decodes with skip_special_tokens. */
export class TokenDecoder {
  constructor(json, special) {
    const model = json.model;
    if (model.type !== "WordLevel" && model.type !== "BPE") {
      throw new Error(`tokenizer.json: model type ${model.type} is not supported in the browser`);
    }
    this.tokens = new Map(Object.entries(model.vocab).map(([token, id]) => [id, token]));
    this.skip = new Set();
    for (const added of json.added_tokens || []) {
      this.tokens.set(added.id, added.content);
      if (added.special) this.skip.add(added.id);
    }
    const decoder = json.decoder;
    if (decoder && decoder.type !== "Metaspace") {
      throw new Error(`tokenizer.json: decoder ${decoder.type} is not supported in the browser`);
    }
    this.metaspace = decoder ? { replacement: decoder.replacement, prependScheme: decoder.prepend_scheme } : null;
    this.special = special;
  }

  /** LatexTokenizer.decode for one row: cut at EOS, drop PAD/BOS and special tokens, strip. */
  decode(ids) {
    const { pad, bos, eos } = this.special;
    const end = ids.indexOf(eos);
    const row = (end >= 0 ? ids.slice(0, end) : ids).filter((t) => t !== pad && t !== bos);
    const tokens = row.filter((t) => !this.skip.has(t) && this.tokens.has(t)).map((t) => this.tokens.get(t));
    let text;
    if (!this.metaspace) {
      text = tokens.join(" "); // no decoder: tokenizers joins the tokens with single spaces
    } else {
      const { replacement, prependScheme } = this.metaspace;
      text = tokens.map((token, i) => chars(token).map((c) => {
        if (c !== replacement) return c;
        return i === 0 && prependScheme !== "never" ? "" : " ";
      }).join("")).join("");
    }
    return strip(text);
  }

  /** LatexTokenizer.decode_latex for one row: the LaTeX that is shown and scored. */
  decodeLatex(ids, maxGroupDepth) {
    return normalize(this.decode(ids), maxGroupDepth);
  }
}

// -- pix2tex.normalize -----------------------------------------------------------------------------------

const fromEntries = (names, value) => Object.fromEntries(names.map((n) => [n, value]));
const ARITY = {
  ...fromEntries(String.raw`\frac \dfrac \tfrac \cfrac \binom \dbinom \tbinom \stackrel \overset \underset`.split(" "), 2),
  ...fromEntries(String.raw`\sqrt \hat \bar \vec \dot \ddot \dddot \tilde \widehat \widetilde \overline \underline
    \overrightarrow \overleftarrow \overleftrightarrow \overbrace \underbrace \check \breve \acute \grave \mathring
    \mathrm \mathbf \mathit \mathcal \mathbb \mathfrak \mathsf \mathtt \mathscr \boldsymbol \bm \pmb \operatorname
    \text \textrm \textbf \textit \textsf \texttt \textnormal \mbox \emph \boxed \phantom \vphantom \hphantom
    \textcircled \overparen \underparen \xrightarrow \xleftarrow \cancel \fbox`.split(/\s+/), 1),
};
const DIMENSION_ARG = { [String.raw`\hspace`]: 1, [String.raw`\vspace`]: 1, [String.raw`\rule`]: 2, [String.raw`\raisebox`]: 1 };
const DIMENSION_FOLLOWS = new Set(String.raw`\kern \mkern \hskip \mskip \vskip`.split(" "));
const OPTIONAL_ARG = new Set(String.raw`\sqrt \xrightarrow \xleftarrow`.split(" "));
const STARRED = new Set(String.raw`\operatorname \hspace \vspace`.split(" "));
const SYNONYMS = {
  [String.raw`\sp`]: "^", [String.raw`\sb`]: "_", [String.raw`\le`]: String.raw`\leq`, [String.raw`\ge`]: String.raw`\geq`,
  [String.raw`\ne`]: String.raw`\neq`, [String.raw`\to`]: String.raw`\rightarrow`, [String.raw`\gets`]: String.raw`\leftarrow`,
  [String.raw`\lbrace`]: String.raw`\{`, [String.raw`\rbrace`]: String.raw`\}`, [String.raw`\lbrack`]: "[",
  [String.raw`\rbrack`]: "]", [String.raw`\dag`]: String.raw`\dagger`, [String.raw`\vert`]: "|",
};
// normalize._NAMED_OPERATORS: "name" or "name*" (the letters of the \operatorname argument) -> command.
const NAMED_OPERATORS = Object.fromEntries([
  ...`arccos arcsin arctan arg cos cosh cot coth csc deg dim exp hom ker lg ln log sec sin sinh tan tanh`
    .split(" ").map((n) => [n, "\\" + n]),
  ...`det gcd inf lim max min Pr sup`.split(" ").map((n) => [n + "*", "\\" + n]),
  [String.raw`lim\,sup*`, String.raw`\limsup`], [String.raw`lim\,inf*`, String.raw`\liminf`],
]);
const FONT_SWITCHES = {
  [String.raw`\cal`]: String.raw`\mathcal`, [String.raw`\bf`]: String.raw`\mathbf`, [String.raw`\rm`]: String.raw`\mathrm`,
  [String.raw`\it`]: String.raw`\mathit`, [String.raw`\sf`]: String.raw`\mathsf`, [String.raw`\tt`]: String.raw`\mathtt`,
};
const TEXT_ARG = new Set([
  ...String.raw`\text \textrm \textbf \textit \textsf \texttt \textnormal \mbox \hbox \vbox \emph \fbox \operatorname`.split(" "),
  "\\d", "\\b", "\\c", "\\u", "\\v", "\\H", "\\t", "\\r", "\\k", "\\'", "\\`", '\\"', "\\^", "\\~", "\\=", "\\.",
]);
const SCOPE_BREAKS = new Set(["&", "\\\\", String.raw`\cr`, String.raw`\over`, String.raw`\atop`, String.raw`\choose`, String.raw`\middle`]);
const SCOPE_BREAK_PREFIXES = [String.raw`\left`, String.raw`\right`, String.raw`\begin`, String.raw`\end`];
const ORDINARY_WORDS = new Set(("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi " +
  "pi varpi rho varrho sigma varsigma tau upsilon phi varphi chi psi omega Gamma Delta Theta " +
  "Lambda Xi Pi Sigma Upsilon Phi Psi Omega partial infty ell hbar nabla prime").split(" ").map((n) => "\\" + n));
const ACCENTS = new Set(String.raw`\hat \bar \vec \dot \ddot \dddot \tilde \widehat \widetilde \overline \underline \check \breve \acute \grave \mathring`.split(" "));
const ONE_ATOM_COMMANDS = new Set([...ACCENTS,
  ...String.raw`\mathrm \mathbf \mathit \mathcal \mathbb \mathfrak \mathsf \mathtt \mathscr \boldsymbol \bm`.split(" ")]);
const ROW_SPACE = /^[-+]?(\p{Nd}+\.?\p{Nd}*|\.\p{Nd}+)(pt|pc|in|bp|cm|mm|dd|cc|sp|em|ex|mu)$/u;

const has = (table, key) => Object.prototype.hasOwnProperty.call(table, key);

/** normalize.tokenize: TeX-like tokens (control words, control symbols, characters). */
export function tokenize(latex) {
  const s = chars(latex), n = s.length, tokens = [];
  const find = (c, from) => s.indexOf(c, from);
  let i = 0;
  while (i < n) {
    const c = s[i];
    if (isSpace(c)) {
      i += 1;
    } else if (c === "%") {
      const newline = find("\n", i);
      i = newline < 0 ? n : newline + 1;
    } else if (c === "\\") {
      let j = i + 1;
      while (j < n && isAsciiLetter(s[j])) j += 1;
      if (j === i + 1) { // control symbol: backslash plus one character (or a lone backslash)
        if (s[i + 1] === "\\") {
          const [token, next] = rowBreak(s, i);
          tokens.push(token);
          i = next;
          continue;
        }
        tokens.push(i + 1 < n ? s.slice(i, i + 2).join("") : "\\");
        i += 2;
        continue;
      }
      let word = s.slice(i, j).join("");
      while (j < n && isSpace(s[j])) j += 1; // TeX skips spaces after a control word
      if ((word === String.raw`\begin` || word === String.raw`\end`) && j < n && s[j] === "{") {
        const close = find("}", j);
        if (close > 0) {
          word += "{" + s.slice(j + 1, close).filter((ch) => !isSpace(ch)).join("") + "}";
          j = close + 1;
        }
      }
      tokens.push(word);
      i = j;
    } else {
      tokens.push(c);
      i += 1;
    }
  }
  return tokens.map((t) => (has(SYNONYMS, t) ? SYNONYMS[t] : t));
}

/** normalize._row_break: ``\\`` with an optional star and touching ``[length]``, as one token. */
function rowBreak(s, i) {
  let j = i + 2;
  if (s[j] === "*") j += 1;
  if (s[j] === "[") {
    const close = s.indexOf("]", j);
    const length = close > 0 ? s.slice(j + 1, close).filter((c) => !isSpace(c)).join("") : "";
    if (ROW_SPACE.test(length)) return [`\\\\[${length}]`, close + 1];
  }
  return ["\\\\", j];
}

export function groupDepth(tokens) {
  let depth = 0, deepest = 0;
  for (const tok of tokens) {
    if (tok === "{") deepest = Math.max(deepest, ++depth);
    else if (tok === "}" && depth) depth -= 1;
  }
  return deepest;
}

function groupEnd(tokens, start, closer = "}") {
  let depth = 0;
  for (let k = start; k < tokens.length; k++) {
    if (tokens[k] === "{") depth += 1;
    else if (tokens[k] === "}") depth -= 1;
    if (tokens[k] === closer && depth === 0 && (closer !== "}" || k > start)) return k + 1;
  }
  return tokens.length;
}

function braced(unit) {
  return unit.length && unit[0] === "{" && groupEnd(unit, 0) === unit.length ? unit : ["{", ...unit, "}"];
}

function dimension(tokens, i) {
  if (i < tokens.length && tokens[i] === "{") {
    const end = groupEnd(tokens, i);
    const inner = tokens.slice(i + 1, end - 1).join("");
    return [inner ? ["{", inner, "}"] : ["{", "}"], end];
  }
  return unit(tokens, i);
}

function unit(tokens, i) {
  if (i >= tokens.length) return [[], i];
  const tok = tokens[i];
  if (tok === "{") {
    const end = groupEnd(tokens, i);
    const closed = end <= tokens.length && tokens[end - 1] === "}" && end - 1 > i;
    const inner = normalizeTokens(closed ? tokens.slice(i + 1, end - 1) : tokens.slice(i + 1, end));
    return [closed ? ["{", ...inner, "}"] : ["{", ...inner], end];
  }
  if (has(ARITY, tok) || has(DIMENSION_ARG, tok)) {
    const out = [tok];
    i += 1;
    if (STARRED.has(tok) && tokens[i] === "*") {
      out.push("*");
      i += 1;
    }
    if (OPTIONAL_ARG.has(tok) && tokens[i] === "[") {
      const close = groupEnd(tokens, i, "]");
      out.push("[", ...normalizeTokens(tokens.slice(i + 1, close - 1)), "]");
      i = close;
    }
    const count = (has(ARITY, tok) ? ARITY[tok] : 0) || DIMENSION_ARG[tok] || 0;
    for (let k = 0; k < count; k++) {
      if (i >= tokens.length) break;
      let arg;
      [arg, i] = has(DIMENSION_ARG, tok) ? dimension(tokens, i) : unit(tokens, i);
      out.push(...braced(arg));
    }
    return [out, i];
  }
  return [[tok], i + 1];
}

function normalizeTokens(tokens) {
  const out = [];
  let i = 0;
  while (i < tokens.length) {
    const tok = tokens[i];
    if ((tok === "^" || tok === "_") && i + 1 < tokens.length) {
      let arg;
      [arg, i] = unit(tokens, i + 1);
      out.push(tok, ...braced(arg));
    } else if (DIMENSION_FOLLOWS.has(tok)) {
      // \kern 2pt: glue sign, digits and the two-letter unit back together.
      let j = i + 1, dim = "";
      while (j < tokens.length && ("+-.".includes(tokens[j]) || isDigit(tokens[j]))) dim += tokens[j++];
      const unitTokens = tokens.slice(j, j + 2);
      if (dim && unitTokens.every((t) => cpLength(t) === 1 && isAlpha(t)) && j + 2 <= tokens.length) {
        dim += unitTokens.join("");
        j += 2;
      }
      out.push(...(dim ? [tok, dim] : [tok]));
      i = j;
    } else {
      let u;
      [u, i] = unit(tokens, i);
      out.push(...u);
    }
  }
  return out;
}

function isControlWord(tok) {
  if (tok == null || cpLength(tok) < 2 || tok[0] !== "\\" || !isAlpha(chars(tok)[1])) return false;
  for (const sized of [String.raw`\left`, String.raw`\right`]) {
    const rest = chars(tok).slice(sized.length);
    if (tok.startsWith(sized) && rest.length && !isAlpha(rest[0])) return false;
  }
  return true;
}

function closedGroup(tokens, i) {
  const end = groupEnd(tokens, i);
  return end - 1 > i && tokens[end - 1] === "}" ? tokens.slice(i + 1, end - 1) : null;
}

const switchScopeIsPlain = (rest) => !rest.some((t) => SCOPE_BREAKS.has(t) || SCOPE_BREAK_PREFIXES.some((p) => t.startsWith(p)));

function foldFontSwitches(tokens, keep = false) {
  const out = [];
  let i = 0;
  while (i < tokens.length) {
    const tok = tokens[i];
    if (tok === "{") {
      const inner = closedGroup(tokens, i);
      if (inner === null) return [...out, ...tokens.slice(i)];
      const last = out[out.length - 1];
      const kept = keep || (out.length > 0 && (TEXT_ARG.has(last) || ACCENTS.has(last)));
      out.push("{", ...foldFontSwitches(inner, kept), "}");
      i += inner.length + 2;
    } else if (has(FONT_SWITCHES, tok) && !keep && i + 1 < tokens.length && switchScopeIsPlain(tokens.slice(i + 1))) {
      return [...out, FONT_SWITCHES[tok], "{", ...foldFontSwitches(tokens.slice(i + 1)), "}"];
    } else {
      out.push(tok);
      i += 1;
    }
  }
  return out;
}

function isArgument(out) {
  let k = out.length;
  while (k && out[k - 1] === "}") {
    let depth = 0, j = k - 1;
    for (; j >= 0; j--) { // back to the "{" that opened this group
      depth += out[j] === "}" ? 1 : out[j] === "{" ? -1 : 0;
      if (depth === 0) break;
    }
    k = Math.max(j, 0);
  }
  const prev = k ? out[k - 1] : null;
  return isControlWord(prev) || prev === "^" || prev === "_" || prev === "]";
}

function isOneAtom(inner, scripted) {
  if (inner.length === 1) {
    const tok = inner[0];
    return (cpLength(tok) === 1 && isAsciiAlnum(tok)) || ORDINARY_WORDS.has(tok);
  }
  if (scripted || !inner.length || !ONE_ATOM_COMMANDS.has(inner[0])) return false;
  return inner[1] === "{" && groupEnd(inner, 1) === inner.length;
}

function dropRedundantBraces(tokens, keep = false) {
  const out = [];
  let i = 0;
  while (i < tokens.length) {
    if (tokens[i] !== "{") {
      out.push(tokens[i]);
      i += 1;
      continue;
    }
    let inner = closedGroup(tokens, i);
    if (inner === null) return [...out, ...tokens.slice(i)];
    const end = i + inner.length + 2;
    inner = dropRedundantBraces(inner, isControlWord(out.length ? out[out.length - 1] : null));
    const scripted = end < tokens.length && (tokens[end] === "^" || tokens[end] === "_");
    if (!keep && !isArgument(out) && isOneAtom(inner, scripted)) out.push(...inner);
    else out.push("{", ...inner, "}");
    i = end;
  }
  return out;
}

/** normalize._name_operators: \operatorname { s i n } -> \sin, \operatorname * { m a x } -> \max. */
function nameOperators(tokens) {
  const out = [];
  let i = 0;
  while (i < tokens.length) {
    if (tokens[i] === String.raw`\operatorname`) {
      const star = i + 1 < tokens.length && tokens[i + 1] === "*";
      const start = i + 1 + (star ? 1 : 0);
      if (start < tokens.length && tokens[start] === "{") {
        const end = groupEnd(tokens, start);
        const key = tokens.slice(start + 1, end - 1).join("") + (star ? "*" : "");
        if (has(NAMED_OPERATORS, key) && tokens[end - 1] === "}") {
          out.push(NAMED_OPERATORS[key]);
          i = end;
          continue;
        }
      }
    }
    out.push(tokens[i]);
    i += 1;
  }
  return out;
}

function glueDelimiters(tokens) {
  const out = [];
  let i = 0;
  while (i < tokens.length) {
    const tok = tokens[i], nxt = i + 1 < tokens.length ? tokens[i + 1] : null;
    if ((tok === String.raw`\left` || tok === String.raw`\right`) && nxt !== null && !["{", "}", "^", "_"].includes(nxt)) {
      out.push(tok + nxt);
      i += 2;
    } else {
      out.push(tok);
      i += 1;
    }
  }
  return out;
}

/** normalize.latex_tokens. */
export function latexTokens(latex, maxGroupDepth) {
  const raw = tokenize(latex);
  if (groupDepth(raw) > maxGroupDepth) return raw.map((t) => (t === "\\ " ? "\\" : t));
  const tokens = dropRedundantBraces(foldFontSwitches(nameOperators(glueDelimiters(normalizeTokens(raw)))));
  while (tokens.length && tokens[tokens.length - 1] === "\\ ") tokens.pop();
  return tokens.map((t) => (t === "\\ " ? "\\" : t));
}

/** normalize.normalize: space-separated im2markup-style tokens. */
export function normalize(latex, maxGroupDepth) {
  return latexTokens(latex, maxGroupDepth).join(" ");
}
