"""LaTeX normalization in the im2markup style: the one place that decides what a label looks like.

Every dataset label and every prediction goes through :func:`normalize`.  The result is a
sequence of tokens separated by single spaces, with every argument of a known command and every
super/subscript in braces::

    >>> normalize(r"x^2+\\frac12")
    'x ^ { 2 } + \\\\frac { 1 } { 2 }'

The rules are chosen so that (a) the output typesets like the input in math mode (where TeX
ignores spaces) and (b) ``normalize(normalize(s)) == normalize(s)``.  Text-mode arguments
(``\\text{...}``) are split into characters like the rest, which matches im2latex-100k's labels
but loses the spaces between words; that is the one place where the rendering may differ.

Everything here is a pure function of strings.
"""

from __future__ import annotations

import re

__all__ = ["tokenize", "normalize", "latex_tokens", "group_depth", "MAX_GROUP_DEPTH"]

# Real formulas nest braces a few levels deep (the shared corpora: at most 16); deeper input
# is refused by the renderer and passed through unparsed by normalize (no recursion limit to hit).
MAX_GROUP_DEPTH = 64

# Commands whose arguments get braces, by number of mandatory arguments.
_ARITY: dict[str, int] = {
    **dict.fromkeys(
        [r"\frac", r"\dfrac", r"\tfrac", r"\cfrac", r"\binom", r"\dbinom", r"\tbinom",
         r"\stackrel", r"\overset", r"\underset", r"\frac"], 2),
    **dict.fromkeys(
        [r"\sqrt", r"\hat", r"\bar", r"\vec", r"\dot", r"\ddot", r"\dddot", r"\tilde",
         r"\widehat", r"\widetilde", r"\overline", r"\underline", r"\overrightarrow",
         r"\overleftarrow", r"\overleftrightarrow", r"\overbrace", r"\underbrace", r"\check",
         r"\breve", r"\acute", r"\grave", r"\mathring", r"\mathrm", r"\mathbf", r"\mathit",
         r"\mathcal", r"\mathbb", r"\mathfrak", r"\mathsf", r"\mathtt", r"\mathscr",
         r"\boldsymbol", r"\bm", r"\pmb", r"\operatorname", r"\text", r"\textrm", r"\textbf",
         r"\textit", r"\textsf", r"\texttt", r"\textnormal", r"\mbox", r"\emph", r"\boxed",
         r"\phantom", r"\vphantom", r"\hphantom", r"\textcircled", r"\overparen",
         r"\underparen", r"\xrightarrow", r"\xleftarrow", r"\cancel", r"\fbox"], 1),
}
# Commands whose (braced) argument is a TeX dimension: its characters must stay together.
_DIMENSION_ARG = {r"\hspace": 1, r"\vspace": 1, r"\rule": 2, r"\raisebox": 1}
# Primitive spacing commands followed by an unbraced dimension (``\kern 2pt``).
_DIMENSION_FOLLOWS = {r"\kern", r"\mkern", r"\hskip", r"\mskip", r"\vskip"}
# Commands that may carry an optional [argument] before their mandatory ones.
_OPTIONAL_ARG = {r"\sqrt", r"\xrightarrow", r"\xleftarrow"}
# Commands that accept a star form (``\operatorname*``).
_STARRED = {r"\operatorname", r"\hspace", r"\vspace"}
# Spellings that typeset identically; the first is folded into the second.
_SYNONYMS = {
    r"\sp": "^", r"\sb": "_", r"\le": r"\leq", r"\ge": r"\geq", r"\ne": r"\neq",
    r"\to": r"\rightarrow", r"\gets": r"\leftarrow", r"\lbrace": r"\{", r"\rbrace": r"\}",
    r"\lbrack": "[", r"\rbrack": "]", r"\dag": r"\dagger", r"\vert": "|",
}

# LaTeX's and amsmath's named operators, which \operatorname typesets identically (pixel for pixel
# in all six fonts, display style too): those without limits from \operatorname{sin}, those with
# limits from \operatorname*{max}.  The corpora spell them both ways (im2latex and arXiv
# \operatorname { s i n }, school formulas \sin); one normal form makes one label per image.
_NAMED_OPERATORS = {
    **{(name, False): "\\" + name for name in """arccos arcsin arctan arg cos cosh cot coth csc deg dim exp hom
        ker lg ln log sec sin sinh tan tanh""".split()},
    **{(name, True): "\\" + name for name in "det gcd inf lim max min Pr sup".split()},
    ("lim\\,sup", True): r"\limsup", ("lim\\,inf", True): r"\liminf",
}

# Old-style font switches and the math alphabet each selects in math mode (LaTeX's
# \DeclareOldFontCommand): ``{\cal L}`` typesets as ``\mathcal{L}``, which is folded into.
_FONT_SWITCHES = {
    r"\cal": r"\mathcal", r"\bf": r"\mathbf", r"\rm": r"\mathrm", r"\it": r"\mathit",
    r"\sf": r"\mathsf", r"\tt": r"\mathtt",
}
# Commands whose braced argument is text-mode material (text accents included): a switch there
# stays a text switch.
_TEXT_ARG = {
    r"\text", r"\textrm", r"\textbf", r"\textit", r"\textsf", r"\texttt", r"\textnormal", r"\mbox",
    r"\hbox", r"\vbox", r"\emph", r"\fbox", r"\operatorname",
    r"\d", r"\b", r"\c", r"\u", r"\v", r"\H", r"\t", r"\r", r"\k", r"\'", r"\`", r'\"', r"\^", r"\~", r"\=", r"\.",
}
# Tokens after which a switch's scope is not simply "the rest of the group" (table cells, \left …
# \right, generalized fractions): a switch followed by one of these is left as it is.
_SCOPE_BREAKS = {"&", "\\\\", r"\cr", r"\over", r"\atop", r"\choose", r"\middle"}
_SCOPE_BREAK_PREFIXES = (r"\left", r"\right", r"\begin", r"\end")
# Ordinary symbols that may lose a pair of braces around them alone: ``{x}`` and ``x`` typeset
# alike, while ``{+}`` (an ordinary atom) is spaced unlike ``+`` (a binary operator).
_ORDINARY_WORDS = {
    "\\" + name for name in (
        "alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi "
        "pi varpi rho varrho sigma varsigma tau upsilon phi varphi chi psi omega Gamma Delta Theta "
        "Lambda Xi Pi Sigma Upsilon Phi Psi Omega partial infty ell hbar nabla prime").split()
}
# Accents and bars: their argument is kept with a switch in it (see _fold_font_switches).
_ACCENTS = {
    r"\hat", r"\bar", r"\vec", r"\dot", r"\ddot", r"\dddot", r"\tilde", r"\widehat", r"\widetilde",
    r"\overline", r"\underline", r"\check", r"\breve", r"\acute", r"\grave", r"\mathring",
}
# One-argument commands whose unit (``\bar { x }``, ``\mathbf { x }``) typesets as one ordinary
# atom with or without braces around it, unless a script follows: TeX attaches a script to a
# braced group and to an accented (or font-switched) character differently.
_ONE_ATOM_COMMANDS = _ACCENTS | {
    r"\mathrm", r"\mathbf", r"\mathit", r"\mathcal", r"\mathbb", r"\mathfrak", r"\mathsf", r"\mathtt",
    r"\mathscr", r"\boldsymbol", r"\bm",
}


def tokenize(latex: str) -> list[str]:
    """Split LaTeX source into TeX-like tokens (control words, control symbols, characters).

    Whitespace is dropped (math mode ignores it) except the control space ``\\ ``.  Comments
    (an unescaped ``%`` to the end of the line) are dropped.  ``\\begin{env}``/``\\end{env}``
    become one token each, as in im2markup.
    """
    tokens: list[str] = []
    i, n = 0, len(latex)
    while i < n:
        c = latex[i]
        if c.isspace():
            i += 1
        elif c == "%":
            newline = latex.find("\n", i)
            i = n if newline < 0 else newline + 1
        elif c == "\\":
            j = i + 1
            while j < n and latex[j].isascii() and latex[j].isalpha():
                j += 1
            if j == i + 1:  # control symbol: backslash plus one character (or a lone backslash)
                if latex.startswith("\\\\", i):
                    token, i = _row_break(latex, i)
                    tokens.append(token)
                    continue
                tokens.append(latex[i : i + 2] if i + 1 < n else "\\")
                i += 2
                continue
            word = latex[i:j]
            while j < n and latex[j].isspace():  # TeX skips spaces after a control word
                j += 1
            if word in (r"\begin", r"\end") and j < n and latex[j] == "{":
                close = latex.find("}", j)
                if close > 0:
                    word += "{" + "".join(latex[j + 1 : close].split()) + "}"
                    j = close + 1
            tokens.append(word)
            i = j
        else:
            tokens.append(c)
            i += 1
    return [_SYNONYMS.get(t, t) for t in tokens]


# A length as a row break's optional space takes it: a number and one of TeX's units.
_ROW_SPACE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)(pt|pc|in|bp|cm|mm|dd|cc|sp|em|ex|mu)")


def _row_break(latex: str, i: int) -> tuple[str, int]:
    r"""The row break ``\\`` at ``latex[i]`` as one token, and where the text after it starts.

    ``\\*`` (no page break there) looks the same as ``\\``: the star is dropped.  An optional
    space ``\\[2pt]`` must touch the ``\\`` (amsmath's environments read ``\\ [x]`` as a
    bracket), so it stays glued to it, its length without spaces: one token, ``\\[2pt]``, which
    TeX reads back as it was written.
    """
    j = i + 2
    if latex.startswith("*", j):
        j += 1
    if latex.startswith("[", j):
        close = latex.find("]", j)
        length = "".join(latex[j + 1 : close].split()) if close > 0 else ""
        if _ROW_SPACE.fullmatch(length):  # else the brackets are read as they come
            return f"\\\\[{length}]", close + 1
    return "\\\\", j


def group_depth(tokens: list[str]) -> int:
    """The deepest ``{`` … ``}`` nesting among ``tokens`` (unbalanced closers are ignored)."""
    depth = deepest = 0
    for tok in tokens:
        if tok == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif tok == "}" and depth:
            depth -= 1
    return deepest


def _group_end(tokens: list[str], start: int, closer: str = "}") -> int:
    """Index just past the ``closer`` that ends the group opened at ``start`` (``{`` … ``}`` or an
    optional ``[`` … ``]``, whose ``]`` counts only outside braces); len(tokens) if unbalanced."""
    depth = 0
    for k in range(start, len(tokens)):
        if tokens[k] == "{":
            depth += 1
        elif tokens[k] == "}":
            depth -= 1
        if tokens[k] == closer and depth == 0 and (closer != "}" or k > start):
            return k + 1
    return len(tokens)


def _braced(unit: list[str]) -> list[str]:
    return unit if unit and unit[0] == "{" and _group_end(unit, 0) == len(unit) else ["{", *unit, "}"]


def _dimension(tokens: list[str], i: int) -> tuple[list[str], int]:
    """A braced dimension argument, glued into one token: ``{ 1 c m }`` -> ``{ 1cm }``."""
    if i < len(tokens) and tokens[i] == "{":
        end = _group_end(tokens, i)
        inner = "".join(tokens[i + 1 : end - 1])
        return (["{", inner, "}"] if inner else ["{", "}"]), end
    return _unit(tokens, i)


def _unit(tokens: list[str], i: int) -> tuple[list[str], int]:
    """Parse one argument unit at ``i``: a braced group, a command with its arguments, or a token."""
    if i >= len(tokens):
        return [], i
    tok = tokens[i]
    if tok == "{":
        end = _group_end(tokens, i)
        closed = end <= len(tokens) and tokens[end - 1] == "}" and end - 1 > i
        inner = _normalize_tokens(tokens[i + 1 : end - 1] if closed else tokens[i + 1 : end])
        return ["{", *inner, "}"] if closed else ["{", *inner], end
    if tok in _ARITY or tok in _DIMENSION_ARG:
        out, i = [tok], i + 1
        if tok in _STARRED and i < len(tokens) and tokens[i] == "*":
            out.append("*")
            i += 1
        if tok in _OPTIONAL_ARG and i < len(tokens) and tokens[i] == "[":
            close = _group_end(tokens, i, "]")
            out += ["[", *_normalize_tokens(tokens[i + 1 : close - 1]), "]"]
            i = close
        for _ in range(_ARITY.get(tok, 0) or _DIMENSION_ARG.get(tok, 0)):
            if i >= len(tokens):
                break
            arg, i = _dimension(tokens, i) if tok in _DIMENSION_ARG else _unit(tokens, i)
            out += _braced(arg)
        return out, i
    return [tok], i + 1


def _normalize_tokens(tokens: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("^", "_") and i + 1 < len(tokens):
            arg, i = _unit(tokens, i + 1)
            out += [tok, *_braced(arg)]
        elif tok in _DIMENSION_FOLLOWS:
            # \kern 2pt: glue sign, digits and the two-letter unit back together.
            j = i + 1
            dim = ""
            while j < len(tokens) and (tokens[j] in "+-." or tokens[j].isdigit()):
                dim += tokens[j]
                j += 1
            if dim and all(len(t) == 1 and t.isalpha() for t in tokens[j : j + 2]) and j + 2 <= len(tokens):
                dim += "".join(tokens[j : j + 2])
                j += 2
            out += [tok, dim] if dim else [tok]
            i = j
        else:
            unit, i = _unit(tokens, i)
            out += unit
    return out


def _name_operators(tokens: list[str]) -> list[str]:
    r"""``\operatorname { s i n }`` -> ``\sin`` and ``\operatorname * { m a x }`` -> ``\max``
    (:data:`_NAMED_OPERATORS`); other names, and a star where the operator has none, stay."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] == r"\operatorname":
            star = i + 1 < len(tokens) and tokens[i + 1] == "*"
            start = i + 1 + star
            if start < len(tokens) and tokens[start] == "{":
                end = _group_end(tokens, start)
                name = _NAMED_OPERATORS.get(("".join(tokens[start + 1 : end - 1]), star))
                if name is not None and tokens[end - 1] == "}":
                    out.append(name)
                    i = end
                    continue
        out.append(tokens[i])
        i += 1
    return out


def _is_control_word(tok: str | None) -> bool:
    """A command that may take arguments (a glued delimiter such as ``\\left(`` takes none)."""
    if tok is None or len(tok) < 2 or tok[0] != "\\" or not tok[1].isalpha():
        return False
    for sized in (r"\left", r"\right"):
        if tok.startswith(sized) and len(tok) > len(sized) and not tok[len(sized)].isalpha():
            return False
    return True


def _closed_group(tokens: list[str], i: int) -> list[str] | None:
    """The tokens inside the balanced ``{`` … ``}`` opened at ``i`` (None if it is not closed)."""
    end = _group_end(tokens, i)
    return tokens[i + 1 : end - 1] if end - 1 > i and tokens[end - 1] == "}" else None


def _switch_scope_is_plain(rest: list[str]) -> bool:
    return not any(t in _SCOPE_BREAKS or t.startswith(_SCOPE_BREAK_PREFIXES) for t in rest)


def _fold_font_switches(tokens: list[str], keep: bool = False) -> list[str]:
    r"""``{ a \bf b }`` -> ``{ a \mathbf { b } }``: a switch applies to the rest of its group, which
    becomes the argument of the command it stands for (``{ \cal L }`` -> ``{ \mathcal { L } }``,
    whose outer braces :func:`_drop_redundant_braces` removes where they are no argument).

    Switches are kept (``keep``) in text-mode arguments; in an accent's argument, because TeX puts
    an accent over one character of a switched font unlike over the extra group ``\mathcal`` adds
    (``\bar { \tilde { \cal H } } ^ { j }`` typesets 3 px narrower than with ``\mathcal { H }``);
    and where the rest of the group crosses a cell or a ``\left`` … ``\right`` (_SCOPE_BREAKS).
    """
    out: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "{":
            inner = _closed_group(tokens, i)
            if inner is None:
                return out + tokens[i:]
            kept = keep or (bool(out) and (out[-1] in _TEXT_ARG or out[-1] in _ACCENTS))
            out += ["{", *_fold_font_switches(inner, kept), "}"]
            i += len(inner) + 2
        elif (tok in _FONT_SWITCHES and not keep and i + 1 < len(tokens)
                and _switch_scope_is_plain(tokens[i + 1 :])):
            return out + [_FONT_SWITCHES[tok], "{", *_fold_font_switches(tokens[i + 1 :]), "}"]
        else:
            out.append(tok)
            i += 1
    return out


def _is_argument(out: list[str]) -> bool:
    """Whether a group written next, after ``out``, may be an argument of something before it: it
    follows a command, a script sign, an optional ``[…]``, or a run of groups that does."""
    k = len(out)
    while k and out[k - 1] == "}":
        depth = 0
        for j in range(k - 1, -1, -1):  # back to the "{" that opened this group
            depth += {"}": 1, "{": -1}.get(out[j], 0)
            if depth == 0:
                break
        k = j
    prev = out[k - 1] if k else None
    return _is_control_word(prev) or prev in ("^", "_", "]")


def _is_one_atom(inner: list[str], scripted: bool) -> bool:
    """Whether ``{ inner }`` typesets as ``inner`` would (see _ORDINARY_WORDS, _ONE_ATOM_COMMANDS)."""
    if len(inner) == 1:
        tok = inner[0]
        return (len(tok) == 1 and tok.isascii() and tok.isalnum()) or tok in _ORDINARY_WORDS
    if scripted or not inner or inner[0] not in _ONE_ATOM_COMMANDS:
        return False
    return inner[1] == "{" and _group_end(inner, 1) == len(inner)


def _drop_redundant_braces(tokens: list[str], keep: bool = False) -> list[str]:
    r"""``{ \bar { x } }`` -> ``\bar { x }``, ``{ x }`` -> ``x``: braces around one ordinary atom
    that are no command's argument add nothing to the typeset formula.  Directly inside a command's
    argument they stay (``keep``): ``\widehat { { \beta } }`` puts the hat higher than
    ``\widehat { \beta }``, and ``\boldsymbol { { W } } _ { 1 }`` sets the 1 further right."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] != "{":
            out.append(tokens[i])
            i += 1
            continue
        inner = _closed_group(tokens, i)
        if inner is None:
            return out + tokens[i:]
        end = i + len(inner) + 2
        inner = _drop_redundant_braces(inner, keep=_is_control_word(out[-1] if out else None))
        scripted = end < len(tokens) and tokens[end] in ("^", "_")
        if not keep and not _is_argument(out) and _is_one_atom(inner, scripted):
            out += inner
        else:
            out += ["{", *inner, "}"]
        i = end
    return out


def _glue_delimiters(tokens: list[str]) -> list[str]:
    """``\\left (`` -> ``\\left(``: a sized delimiter is one token, as in im2markup."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok in (r"\left", r"\right") and nxt is not None and nxt not in ("{", "}", "^", "_"):
            out.append(tok + nxt)
            i += 2
        else:
            out.append(tok)
            i += 1
    return out


def latex_tokens(latex: str) -> list[str]:
    """The normalized tokens of a formula, i.e. ``normalize(latex).split(" ")``.

    A control space is written as a bare backslash: the single space that separates it from
    the next token is the space it controls (im2markup writes ``0 \\ .`` the same way).
    Trailing control spaces are dropped: they add no ink and the tight crop removes their space
    (leading ones stay: they shift the formula by a fraction of a pixel).
    """
    raw = tokenize(latex)
    if group_depth(raw) > MAX_GROUP_DEPTH:
        # The argument parser recurses once per group level; a formula nested this deep is not a
        # real formula (the renderer refuses it), and its tokens are returned as they are.
        return ["\\" if t == "\\ " else t for t in raw]
    tokens = _drop_redundant_braces(_fold_font_switches(_name_operators(_glue_delimiters(_normalize_tokens(raw)))))
    while tokens and tokens[-1] == "\\ ":
        tokens.pop()
    return ["\\" if t == "\\ " else t for t in tokens]


def normalize(latex: str) -> str:
    """Normalize a formula to space-separated im2markup-style tokens (idempotent)."""
    return " ".join(latex_tokens(latex))

