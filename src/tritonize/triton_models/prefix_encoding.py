"""Tokenize no more of a text than a window of tokens can use.

A text far longer than the window (a 900 kB document for a 256-token encoder, a 10 MB prompt
for a 64-token decoder) used to be tokenized whole, and its overflowing tokens kept: seconds
of work and gigabytes of memory for tokens that are then thrown away. Here each text is
tokenized by prefixes of doubling length until the window's tokens are proven to be those of
the whole text.

Why a prefix is enough: cutting a text can change only the tokens near the cut (the word, or
the normalised character run, that the cut splits). Prefixes end where a word ends, before a
whitespace run, so no word and no combining sequence is split (WordPiece, for one, turns a
word over 100 characters into one unknown token: half a word would tokenize differently).
Where a long stretch has no whitespace the cut falls inside it, but at least
`min_prefix_chars / 2` characters into it, so an over-long word is already over-long in the
prefix. Once a prefix yields more tokens than the window holds, and the window's tokens stay
the same when the prefix doubles, the cut is far enough behind the window that the whole text
yields the same window. A text that never reaches that point is tokenized whole (exact).

The tokenizer must truncate at the window (`enable_truncation`). An encoding returned here
has the whole text's ids; its `overflowing` is non-empty exactly when the whole text has more
tokens than the window, but holds only the prefix's overflow (use it as a flag, not as data).
"""

from __future__ import annotations

import re
import sys
import unicodedata

import tokenizers

CHARS_PER_TOKEN = 8  # the first prefix: most languages need far fewer characters per token
MIN_PREFIX_CHARS = 256  # over twice WordPiece's default longest word (100 characters)
_WORD_END = re.compile(r"\S(?=\s)")

# Characters that carry no text by themselves: whitespace, control and format characters
# (NUL, zero-width space U+200B, BOM U+FEFF, ...), separators and combining marks.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Mc", "Me"})


def encode_within(
    tokenizer: tokenizers.Tokenizer, texts: list[str], window: int
) -> list[tokenizers.Encoding]:
    """The encodings of `texts` truncated at `window` tokens, each tokenizing a bounded prefix."""
    results: dict[int, tokenizers.Encoding] = {}
    previous: dict[int, tokenizers.Encoding] = {}
    pending = list(range(len(texts)))
    size = max(CHARS_PER_TOKEN * window, min_prefix_chars(tokenizer))
    while pending:
        encodings = tokenizer.encode_batch([prefix(texts[i], size) for i in pending])
        still: list[int] = []
        for i, encoding in zip(pending, encodings, strict=True):
            if len(texts[i]) <= size or _settled(previous.get(i), encoding):
                results[i] = encoding
            else:
                previous[i] = encoding
                still.append(i)
        pending, size = still, size * 2
    return [results[i] for i in range(len(texts))]


def encode_pairs_within(
    tokenizer: tokenizers.Tokenizer,
    sides: tokenizers.Tokenizer,
    pairs: list[tuple[str, str]],
    window: int,
) -> list[tokenizers.Encoding]:
    """The encodings of text pairs truncated at `window` tokens, longest first, each side
    tokenized no further than the window can use; `overflowing` flags a truncated pair.

    Longest-first truncation keeps at most `budget + 1` tokens of a side (`budget`: the window
    less the pair's special tokens) and depends on the other side's length only through which
    side is longer. So a side longer than `budget + 2` tokens is cut after `budget + 2` of them
    (by `sides`, a copy of `tokenizer` truncating there) and keeps every token truncation keeps;
    where the other side is not cut, it is cut after `budget + 1` tokens, so that the cut side
    stays the longer one. Where both sides are cut and the budget is odd, which one is longer
    decides who gets the odd token: their tokens are counted (not paired: truncating two long
    texts as a pair enumerates every pair of their pieces), and the shorter one, or the first
    of two equal ones, is cut one token earlier.
    """
    budget = window - tokenizer.num_special_tokens_to_add(is_pair=True)
    side_window = sides.truncation["max_length"] if sides.truncation else window
    cut_sides = [encode_within(sides, [pair[i] for pair in pairs], side_window) for i in (0, 1)]
    cut = []
    for (a, b), first, second in zip(pairs, *cut_sides, strict=True):
        keep = [budget + 2, budget + 2]
        if first.overflowing and second.overflowing and budget % 2:
            a_longer = _count_tokens(tokenizer, a) > _count_tokens(tokenizer, b)
            keep[1 if a_longer else 0] = budget + 1
        elif first.overflowing != second.overflowing:  # one of `budget + 2` would tie with it
            keep[1 if first.overflowing else 0] = budget + 1
        cut.append((_cut_after(a, first, keep[0]), _cut_after(b, second, keep[1])))
    return tokenizer.encode_batch(cut)


def side_tokenizer(tokenizer: tokenizers.Tokenizer, window: int) -> tokenizers.Tokenizer:
    """The copy of `tokenizer` that `encode_pairs_within` cuts long sides with."""
    budget = window - tokenizer.num_special_tokens_to_add(is_pair=True)
    sides = tokenizers.Tokenizer.from_str(tokenizer.to_str())
    sides.no_padding()
    sides.enable_truncation(budget + 2 + tokenizer.num_special_tokens_to_add(is_pair=False))
    return sides


def _count_tokens(tokenizer: tokenizers.Tokenizer, text: str) -> int:
    """The tokens of the whole of `text` (its truncated pieces, one after another)."""
    encoding = tokenizer.encode(text, add_special_tokens=False)
    return len(encoding.ids) + sum(len(piece.ids) for piece in encoding.overflowing)


def _cut_after(text: str, encoding: tokenizers.Encoding, tokens: int) -> str:
    """`text` up to the end of its `tokens`-th token, or whole when it has no more."""
    ends = [end for (_, end), special in zip(encoding.offsets, encoding.special_tokens_mask,
                                             strict=True) if not special]  # fmt: skip
    more = len(ends) > tokens or (bool(encoding.overflowing) and len(ends) == tokens)
    return text[: ends[tokens - 1]] if more else text


def min_prefix_chars(tokenizer: tokenizers.Tokenizer) -> int:
    """The shortest first prefix: twice the longest word the tokenizer's model splits."""
    longest_word = getattr(tokenizer.model, "max_input_chars_per_word", 0) or 0
    return max(MIN_PREFIX_CHARS, 2 * int(longest_word) + 2)


def prefix(text: str, size: int) -> str:
    """At most `size` characters of `text`, ending at the last word end in its second half."""
    if len(text) <= size:
        return text
    ends = list(_WORD_END.finditer(text, size // 2, size))
    return text[: ends[-1].end()] if ends else text[:size]


def _settled(shorter: tokenizers.Encoding | None, longer: tokenizers.Encoding) -> bool:
    """The window is full beyond doubt: both prefixes overflow it with the same tokens."""
    return (
        shorter is not None
        and bool(shorter.overflowing)
        and bool(longer.overflowing)
        and shorter.ids == longer.ids
    )


def content_tokens(encoding: tokenizers.Encoding) -> int:
    """Tokens of the text itself, not the ones the tokenizer adds ([CLS], <s>, ...)."""
    return len(encoding.special_tokens_mask) - sum(encoding.special_tokens_mask)


def _visible_class() -> re.Pattern[str]:
    """A pattern matching any character outside the invisible categories."""
    ranges: list[tuple[int, int]] = []
    for code in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code)) in _INVISIBLE_CATEGORIES or chr(code).isspace():
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    body = "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)
    return re.compile(f"[^{body}]")


_VISIBLE = _visible_class()


def has_visible_text(text: str) -> bool:
    """Whether `text` holds a letter, digit, punctuation mark or symbol (a C-speed scan)."""
    return _VISIBLE.search(text) is not None


def decode_text(item: object, where: str, max_bytes: int | None = None) -> str:
    """One request text from a BYTES element: at most `max_bytes`, valid UTF-8, with something
    visible in it; else `RequestError` naming it by `where` (e.g. "`TEXT`[3]")."""
    from .common import RequestError

    data = item if isinstance(item, bytes) else str(item).encode()
    if max_bytes is not None and len(data) > max_bytes:
        raise RequestError(f"{where} is {len(data)} bytes: at most {max_bytes} allowed")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"{where} is not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    if not text.strip():
        raise RequestError(f"{where} is empty or whitespace only: expected some text")
    if not has_visible_text(text):
        raise RequestError(
            f"{where} has no visible character (only control or format characters such as "
            "U+0000, U+200B or U+FEFF, whitespace or combining marks): expected some text"
        )
    return text
