"""Character-level normalisation of model answers, shared by the numeric and the MATH graders.

Two kinds of characters make equal answers look different to a parser:
- characters that render as nothing (zero-width spaces and joiners, direction marks and embeddings,
  the BOM, the soft hyphen, invisible operators): `4<U+200B>2` is shown, and read by a person, as 42;
- look-alikes of ASCII: the minus sign U+2212 and the dashes are a `-`, the thin, narrow and
  no-break spaces are spaces (inside a number they are digit-group separators).
"""

from __future__ import annotations

# Rendered as nothing, so deleted: U+00AD soft hyphen, U+061C Arabic letter mark, U+180E Mongolian vowel
# separator, U+200B-U+200F zero-width space/non-joiner/joiner and LRM/RLM, U+202A-U+202E embeddings and
# overrides, U+2060-U+2064 word joiner and invisible operators, U+2066-U+2069 isolates, U+FEFF BOM.
INVISIBLE = (
    "\u00ad\u061c\u180e"
    + "".join(map(chr, range(0x200B, 0x2010)))
    + "".join(map(chr, range(0x202A, 0x202F)))
    + "".join(map(chr, range(0x2060, 0x2065)))
    + "".join(map(chr, range(0x2066, 0x206A)))
    + "\ufeff"
)
# Read as `-`: minus sign, hyphen, non-breaking hyphen, figure dash, en/em dash, horizontal bar, small and
# full-width hyphen-minus. (U+2212 is what a model copying typeset math writes for a negative number.)
MINUS_SIGNS = "\u2212\u2010\u2011\u2012\u2013\u2014\u2015\ufe58\ufe63\uff0d"
# Space characters a typesetter puts between digit groups: no-break, figure, thin, narrow no-break.
GROUP_SPACES = "\u00a0\u2007\u2009\u202f"

_DROP_INVISIBLE = dict.fromkeys(map(ord, INVISIBLE))
_NUMERIC_TABLE = {**_DROP_INVISIBLE, **dict.fromkeys(map(ord, MINUS_SIGNS), "-")}


def drop_invisible(text: str) -> str:
    """`text` without the INVISIBLE characters (one linear pass)."""
    return text.translate(_DROP_INVISIBLE)


def plain_numeric_text(text: str) -> str:
    """`drop_invisible` plus every MINUS_SIGNS character as `-`: `"\u22124\u200b2"` -> `"-42"`."""
    return text.translate(_NUMERIC_TABLE)
