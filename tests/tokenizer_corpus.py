"""A deterministic corpus of varied strings for tokenizer parity (clip_rt vs open_clip).

``corpus()`` returns (category, text) pairs: CLIP's ImageNet templates x class names, plus
punctuation, digits, emoji, scripts, accents, HTML entities, mojibake, odd whitespace, control
characters, literal special tokens, over-long text and seeded random strings.
"""

from __future__ import annotations

import random
import unicodedata
from pathlib import Path

from clip_rt.templates import IMAGENET, SIMPLE

LABELS_FILE = Path(__file__).resolve().parent / "data" / "tokenizer_labels.txt"


def labels() -> list[str]:
    return [line.strip() for line in LABELS_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


PUNCTUATION = [
    "hello, world!",
    "what?!?",
    "a.b.c",
    "e.g. this",
    "(parenthesised) [bracketed] {braced}",
    "semi;colon:colon",
    "quote \"double\" 'single'",
    "it's they're we've I'm we'll he'd don't",
    "IT'S THEY'RE WE'LL",
    "rock'n'roll",
    "'tis",
    "o'clock",
    "'s 't 're 've 'm 'll 'd",
    "snake_case_name",
    "kebab-case-name",
    "path/to/file.jpg",
    "C:\\Users\\photo.png",
    "user@example.com",
    "https://example.com/a?b=c&d=e#frag",
    "#hashtag @mention $100 100%",
    "~!@#$%^&*()_+`-=[]\\{}|;':\",./<>?",
    "...",
    "--",
    "—em dash–en dash",
    "a+b=c",
    "1/2 ½ ¾",
    "<b>bold</b>",
    "<div class='x'>html</div>",
    "a < b > c",
    "x<y",
    "<<>>",
    "¿qué? ¡sí!",
    "«guillemets» „low“ ‚single‘",
    "‘curly’ “double”",
    "ʼmodifier apostrophe",
    "„“‟”",
    "ellipsis… bullet • dagger † section § pilcrow ¶",
    "™ ® © ℠",
    "°C °F µm Å Ω",
]
DIGITS = [
    "0",
    "7",
    "42",
    "123456789",
    "3.14159",
    "1,000,000",
    "1e10",
    "-5",
    "+7",
    "0x1F",
    "2023-11-25",
    "12:30pm",
    "v1.2.3",
    "covid-19",
    "a1b2c3",
    "1st 2nd 3rd 4th",
    "①②③",
    "²³¹",
    "٠١٢٣٤٥٦٧٨٩",
    "०१२३४५",
    "一二三",
    "ⅠⅡⅢⅣ ⅰⅱⅲ",
    "１２３",
    "𝟙𝟚𝟛",
    "⁰¹²",
]
EMOJI = [
    "😀",
    "cat 🐱 dog 🐶",
    "👍🏻👍🏼👍🏽👍🏾👍🏿",
    "👩‍🚀",
    "👩🏽‍🚀",
    "👨‍👩‍👧‍👦",
    "🏳️‍🌈",
    "🏴‍☠️",
    "🇯🇵🇺🇸🇫🇷",
    "🏴󠁧󠁢󠁥󠁮󠁧󠁿 england",
    "1️⃣ #️⃣ *️⃣",
    "❤️ ❤ ♥",
    "☕️",
    "🧑‍🤝‍🧑",
    "👁️‍🗨️",
    "🫠🫶🪿",
    "a photo of a 🐕.",
    "🎉🎉🎉 party 🎉",
    "😂😂😂😂😂😂",
    "🙂‍↔️",
    "🐦‍🔥",
]
SCRIPTS = [
    "猫の写真",
    "一只猫的照片",
    "고양이 사진",
    "صورة قطة",
    "तस्वीर एक बिल्ली की",
    "รูปแมว",
    "חתול בתמונה",
    "фотография кошки",
    "ΦΩΤΟΓΡΑΦΊΑ ΓΆΤΑΣ",
    "ΟΔΥΣΣΕΥΣ",
    "σοφός ΣΟΦΟΣ",
    "İstanbul ıIiİ",
    "ქართული",
    "Հայերեն",
    "ᠮᠣᠩᠭᠣᠯ",
    "ᚠᚢᚦᚨᚱᚲ",
    "𓀀𓀁",
    "ꦗꦮ",
    "𝔉𝔯𝔞𝔨𝔱𝔲𝔯",
    "𝐁𝐨𝐥𝐝",
    "ｶﾀｶﾅ ﾊﾝｶｸ",
    "Ａ ｆｕｌｌｗｉｄｔｈ ｐｈｏｔｏ",
    "ﬁsh ﬂower ﬀ ﬃ ﬅ ﬆ Ĳssel ǅ",
    "straße STRASSE ß ẞ",
    "Æsir æble Œuvre œ",
    "Ǆungla",
    "Kelvin K Ångström Å",
    "ſhip long s",
    "ᾳ ᾼ aͅb",
    "ǰ ΐ ﬓ",
    "ʻokina ʼ",
    "Ⓐⓑⓒ 🅐",
]
ACCENTS = [
    "café",
    "naïve",
    "résumé",
    "piñata",
    "crème brûlée",
    "Zoë",
    "Ångström",
    "São Tomé",
    "Dvořák",
    "Łódź",
    "Ελλάδα",
    "Việt Nam",
    "Curaçao",
    "Ñandú",
    "fiancée",
    "señor",
]
HTML = [
    "fish &amp; chips",
    "fish &amp;amp; chips",
    "fish &amp;amp;amp; chips",
    "it&#39;s",
    "it&#x27;s",
    "&lt;b&gt;bold&lt;/b&gt;",
    "&quot;quoted&quot;",
    "caf&eacute;",
    "CAF&EACUTE;",
    "&nbsp;space&nbsp;",
    "&copy; 2024",
    "&hellip;",
    "&#128512;",
    "&#x1F600;",
    "&amp;#39;",
    "&amp;lt;",
    "a &amp b",
    "&notanentity;",
    "&amp;amp;amp;amp;amp;",
    "&#0;",
    "&#xD800;",
    "&#1114112;",
    "a < b &amp; c",
    "line1 &amp;\n<tag> &amp;",
    "<p>&amp;</p>\n&amp; after",
    "&NTILDE;",
    "&Ntilde;",
    "&ntilde",
    "&AMP;",
    "&#65;&#66;&#67;",
    "&#X41;",
    "&lt;3",
    "&gt;&gt;&gt;",
    "&amp;nbsp;",
    "&frac12;",
    "&bull;",
    "&mdash;&ndash;",
]
MOJIBAKE = [
    "sÃ³",
    "cafÃ©",
    "Ã©tÃ©",
    "donâ€™t",
    "â€œquotedâ€\x9d",
    "Ã¼ber",
    "naÃ¯ve",
    "ÐŸÑ€Ð¸Ð²ÐµÑ‚",
    "voilÃ  le travail",
    "â€”",
    "Â£100",
    "Ã\xa0 la carte",
    "ãƒ†ã‚¹ãƒˆ",
    "ðŸ˜€",
    "Ã¢â‚¬â„¢",
    "&macr;\\_(ã\x83\x84)_/&macr;",
    "âœ” No problems",
    "Broken text&hellip; it&#x2019;s ﬂubberiﬁc!",
]
WHITESPACE = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    "\t\n \r",
    "\u00a0",
    "\u200b",
    "\u3000",
    "\u2028\u2029",
    "tab\tseparated",
    "new\nline",
    "crlf\r\nline",
    "cr\ronly",
    "nbsp\u00a0here",
    "zero\u200bwidth",
    "zwj\u200dzwnj\u200c",
    "ideographic\u3000space",
    "em\u2003space thin\u2009space",
    "\u00a0\u00a0lead",
    "trail \t\n",
    "  multiple   spaces  ",
    "vt\x0bff\x0c",
    "fs\x1cgs\x1drs\x1eus\x1f",
    "nel\x85here",
    "bom\ufeffhere",
    "\ufeffbom",
    "soft\u00adhyphen",
    "word\u2060joiner",
    "mongolian\u180evs",
    "line\u2028sep",
    "para\u2029sep",
    "ogham\u1680space",
    "narrow\u202fnbsp",
    "math\u205fspace",
]
CONTROL = [
    "nul\x00byte",
    "bell\x07",
    "esc\x1b[31mred\x1b[0m",
    "\x1b[1;32mgreen",
    "del\x7f",
    "c1\x80\x81\x9f",
    "c1 quote \x93x\x94",
    "\x96dash",
    "interlinear\ufff9a\ufffab\ufffb",
    "obj\ufffc",
    "repl\ufffd",
    "arabic\u206a\u206fctl",
    "rtl\u200fmark\u200e",
    "bidi\u202ea\u202c",
    "tag\U000e0041chars",
    "variation\ufe0fsel",
    "\U000e0001lang",
    "musical\U0001d173x",
    "private\ue000use",
    "\U0010fffd",
    "lone \ud83d surrogate",
    "pair \ud83d\ude00 surrogate",
    "\udc00 low first",
]
SPECIALS = [
    "<start_of_text>",
    "<end_of_text>",
    "a <end_of_text> b",
    "x<end_of_text>y",
    "!<end_of_text>",
    "'<start_of_text>",
    "<start_of_text><end_of_text>",
    "<end_of_text>>",
    "<<end_of_text>",
    "<START_OF_TEXT>",
    "<ſtart_of_text>",
    "<|startoftext|>",
    "<|endoftext|>",
    "a.<end_of_text>",
    "1<end_of_text>",
    "it's<end_of_text>",
    "<end_of_text",
    "end_of_text>",
    "\u0345<end_of_text>",
]


def _long_texts() -> list[str]:
    words = labels()[:200]
    return [
        " ".join(words),
        "a photo of " + " and ".join(words[:60]),
        "word " * 74,
        "word " * 75,
        "word " * 76,
        "word " * 200,
        "a" * 1000,
        "ab" * 300,
        "😀" * 100,
        "猫" * 300,
        "x " * 38,
        "x " * 75,
        "!" * 500,
        "supercalifragilisticexpialidocious " * 20,
    ]


def _random_texts(seed: int, count: int) -> list[str]:
    """Seeded random strings over a pool that mixes every kind of character above."""
    rng = random.Random(seed)
    pool = sorted(set("".join(PUNCTUATION + DIGITS + EMOJI + SCRIPTS + ACCENTS + WHITESPACE)))
    pool += list("&;#<>'") * 20 + list("abcdefghijklmnopqrstuvwxyz ") * 10
    out = []
    for _ in range(count):
        n = rng.randint(0, 40)
        chars = []
        for _ in range(n):
            if rng.random() < 0.15:  # any codepoint outside the surrogates
                cp = rng.randrange(0x110000 - 0x800)
                chars.append(chr(cp + 0x800 if cp >= 0xD800 else cp))
            else:
                chars.append(rng.choice(pool))
        out.append("".join(chars))
    return out


def corpus() -> list[tuple[str, str]]:
    names = labels()
    items: list[tuple[str, str]] = []
    for i, name in enumerate(names):
        for template in SIMPLE:
            items.append(("template", template.format(name)))
        if i % 3 == 0:
            for template in IMAGENET:
                items.append(("template", template.format(name)))
        items.append(("label", name.upper()))
        items.append(("label", name.title()))
    for category, texts in (
        ("punctuation", PUNCTUATION),
        ("digits", DIGITS),
        ("emoji", EMOJI),
        ("scripts", SCRIPTS),
        ("accents", ACCENTS),
        ("html", HTML),
        ("mojibake", MOJIBAKE),
        ("whitespace", WHITESPACE),
        ("control", CONTROL),
        ("specials", SPECIALS),
        ("long", _long_texts()),
    ):
        items += [(category, t) for t in texts]
    for text in ACCENTS + SCRIPTS:  # decomposed and compatibility forms of the same strings
        items.append(("accents", unicodedata.normalize("NFD", text)))
        items.append(("accents", unicodedata.normalize("NFKD", text)))
    for text in PUNCTUATION + EMOJI + SCRIPTS + HTML:  # inside a prompt template
        items.append(("in-template", f"a photo of a {text}."))
    items += [("random", t) for t in _random_texts(seed=20240601, count=3000)]
    return items
