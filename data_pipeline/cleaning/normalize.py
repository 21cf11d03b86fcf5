"""清洗第 1 课：文本规范化——Unicode 范式、空白与控制字符、乱码（mojibake）修复、去重前的文本简化。

    python data_pipeline/cleaning/normalize.py          # SMOKE=1 时一秒内跑完

网页文本进入过滤、去重之前，先要让"看起来一样的文本"在码位上也一样，否则后面的每一步都在比较噪声。

1. Unicode 范式（UAX #15）。同一个"é"可以是一个码位 U+00E9，也可以是 "e" + 组合重音 U+0301。
   - NFD：把每个字符按 UnicodeData 的**规范分解**（canonical decomposition）递归拆开，再把连续的组合记号
     按组合类（canonical combining class, ccc）做稳定排序——"规范顺序"。
   - NFC：先 NFD，再把能组合的 (起始字符, 记号) 对合回预组合字符。网页、键盘输入几乎都是 NFC；它**不改变含义**，
     清洗时总可以做。
   - NFKD / NFKC：同上，但也展开**兼容分解**（decomposition 字段带 `<font>`、`<wide>`、`<super>` 等标签的）：
     "ﬁ"→"fi"、全角 "Ａ１"→"A1"、"①"→"1"、"x²"→"x2"、"Ⅻ"→"XII"、"…"→"..."、NBSP→空格、半角 "ｶ"→"カ"。
     它会**改变含义**（x² 变成 x2），所以只用在"比较/哈希用的键"上，或者明确接受这种折叠的场合。
   本课从零实现 NFD/NFKD（decompose：递归分解 + 韩文音节的算术分解 + 规范排序），并在全部码位上与
   unicodedata.normalize 逐字符对照；组合（NFC）涉及组合排除表，直接用标准库。
2. 空白与控制字符：CRLF/CR、U+2028/U+2029 统一成 "\\n"；各种空格（NBSP、全角空格 U+3000、EN/EM 空格……）
   统一成一个 " "；行首行尾空白去掉；三个以上换行压成两个（保留段落边界——Gopher 重复规则按段落计数）。
   控制字符（Cc，除 \\t \\n）和几个不可见格式字符（零宽空格 U+200B、BOM U+FEFF、软连字符 U+00AD、
   词连接符 U+2060）删除；ZWJ/ZWNJ（U+200D/U+200C）保留：emoji 组合序列与波斯语正字法要用它们。
3. 乱码修复：UTF-8 字节被当成 cp1252（或 latin-1）解码，"café"→"cafÃ©"、"don’t"→"donâ€™t"、"中文"→"ä¸\\xadæ–‡"。
   修复 = 把这些字符按 cp1252/latin-1 编回字节、再按 UTF-8 解码。只在"像 UTF-8 多字节序列"的片段上做
   （一个首字节字符 + 正确个数的续字节字符），ASCII 永远不动；重复几轮以修复被编码了两次的文本。
4. 去重前的文本简化（datatrove 的 simplify_text / TextNormConfig）：小写、数字 → "0"、标点 → 空格、
   空白合并、去掉变音符号。近似去重用它生成 shingle，让"Hello, World 2024!"与"hello world 2023"更相近。
   我们的 simplify_text 与 datatrove 的逐字符相同（测试在莎士比亚语料、多语言样例与随机文本上对照，
   7 个开关的全部 128 种组合）。datatrove 的几个怪癖照搬，见 simplify_text 的文档字符串。
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

import regex

from utils.io import is_smoke
from utils.lesson_cli import lesson_args

# ---------------------------------------------------------------------------
# 1. Unicode 范式
# ---------------------------------------------------------------------------
UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")


def normalize_unicode(text: str, form: str = "NFC") -> str:
    """Unicode 规范化（unicodedata.normalize 的带校验版本）。NFC 不改变含义；NFKC 会折叠兼容字符。"""
    if form not in UNICODE_FORMS:
        raise ValueError(f"form={form!r} 不是 Unicode 范式；请用 {', '.join(UNICODE_FORMS)} 之一（一般用 NFC）")
    return unicodedata.normalize(form, text)


# 韩文音节 U+AC00..U+D7A3 不在 UnicodeData 的分解字段里，而是按公式分解（Unicode 标准 §3.12）：
#   S = SBase + (L·VCount + V)·TCount + T   →   L = LBase + s // NCount, V = VBase + (s % NCount) // TCount,
#   T = TBase + s % TCount（T == TBase 表示没有收音）
HANGUL_S_BASE, HANGUL_L_BASE, HANGUL_V_BASE, HANGUL_T_BASE = 0xAC00, 0x1100, 0x1161, 0x11A7
HANGUL_V_COUNT, HANGUL_T_COUNT = 21, 28
HANGUL_N_COUNT = HANGUL_V_COUNT * HANGUL_T_COUNT  # 588
HANGUL_S_COUNT = 19 * HANGUL_N_COUNT  # 11172


@lru_cache(maxsize=65536)
def _decompose_char(ch: str, compat: bool) -> str:
    """一个字符的完全分解（递归到不能再分）。compat=True 时也展开兼容分解（NFKD）。"""
    s = ord(ch) - HANGUL_S_BASE
    if 0 <= s < HANGUL_S_COUNT:
        lv = chr(HANGUL_L_BASE + s // HANGUL_N_COUNT) + chr(HANGUL_V_BASE + (s % HANGUL_N_COUNT) // HANGUL_T_COUNT)
        t = s % HANGUL_T_COUNT
        return lv + chr(HANGUL_T_BASE + t) if t else lv
    fields = unicodedata.decomposition(ch)  # 例如 "0065 0301" 或 "<compat> 0066 0069"
    if not fields:
        return ch
    if fields.startswith("<"):
        if not compat:
            return ch  # 兼容分解只属于 NFKD
        fields = fields.split(" ", 1)[1]
    # 分解结果里的字符可能还能再分（"ǖ" → "ü" + U+0304 → "u" + U+0308 + U+0304），所以要递归
    return "".join(_decompose_char(chr(int(code, 16)), compat) for code in fields.split())


def decompose(text: str, compat: bool = False) -> str:
    """从零实现的 NFD（compat=False）/ NFKD（compat=True）：完全分解，再按 ccc 做规范排序。

    规范排序：组合类 ccc>0 的记号连续出现时按 ccc 稳定排序（ccc=0 的"起始字符"是屏障，不跨越它排序）。
    这样 "a + 下加点(ccc 220) + 尖音(ccc 230)" 与 "a + 尖音 + 下加点" 得到同一个序列——两种输入顺序看起来一样。
    """
    chars = "".join(_decompose_char(ch, compat) for ch in text)
    out: list[str] = []
    run: list[str] = []  # 当前一串非起始字符
    for ch in chars:
        if unicodedata.combining(ch):
            run.append(ch)
            continue
        if run:
            out.extend(sorted(run, key=unicodedata.combining))  # sorted 是稳定的：同 ccc 保持原顺序
            run.clear()
        out.append(ch)
    out.extend(sorted(run, key=unicodedata.combining))
    return "".join(out)


# 各范式折叠了什么：(说明, 原文)。main() 打印 NFC/NFKC 的结果，测试逐条核对
FOLD_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("组合重音 e+U+0301", "cafe\u0301"),
    ("韩文字母 ᄒ+ᅡ+ᆫ", "\u1112\u1161\u11ab"),
    ("连字 ﬁ", "\ufb01le"),
    ("全角字母数字", "ＡＢＣ１２３"),
    ("带圈数字", "①②"),
    ("上标", "x²"),
    ("罗马数字 Ⅻ", "Ⅻ"),
    ("省略号 …", "wait…"),
    ("不换行空格 NBSP", "10\u00a0km"),
    ("半角片假名", "ｶﾀｶﾅ"),
    ("欧姆符号 Ω(U+2126)", "\u2126"),
)


# ---------------------------------------------------------------------------
# 2. 空白与控制字符
# ---------------------------------------------------------------------------
# 删除：全部 Cc 控制字符（\t \n \r 除外：\r 在 normalize_whitespace 里变成 \n），以及几个不可见格式字符
INVISIBLE_FORMAT_CHARS = "\u200b\ufeff\u00ad\u2060"  # 零宽空格、BOM、软连字符、词连接符
_CONTROL_TABLE = {
    code: None
    for code in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0), *map(ord, INVISIBLE_FORMAT_CHARS)]
    if chr(code) not in "\t\n\r"
}
_LINE_BREAKS_RE = re.compile(r"\r\n|[\r\u2028\u2029\x0b\x0c\x85]")
_HSPACE_RE = re.compile(r"[^\S\n]+")  # 除换行以外的任何空白：\t、NBSP、U+3000、U+2000..U+200A……
_EDGE_SPACE_RE = re.compile(r" *\n *")
_MANY_NEWLINES_RE = re.compile(r"\n{3,}")


def remove_control_chars(text: str) -> str:
    """删除控制字符与不可见格式字符（保留 \\t \\n \\r、ZWJ/ZWNJ）。

    顺序要紧：先 fix_mojibake 再删控制字符——latin-1 式乱码里 U+0080..U+009F 正是被误解码的 UTF-8 续字节，
    先删掉就再也修不回来了。
    """
    return text.translate(_CONTROL_TABLE)


def normalize_whitespace(text: str) -> str:
    """换行统一成 \\n，其他空白统一成一个空格，去掉行首行尾空白，段落之间最多一个空行，首尾去空白。"""
    text = _LINE_BREAKS_RE.sub("\n", text)
    text = _HSPACE_RE.sub(" ", text)
    text = _EDGE_SPACE_RE.sub("\n", text)
    return _MANY_NEWLINES_RE.sub("\n\n", text).strip()


# ---------------------------------------------------------------------------
# 3. 乱码修复：UTF-8 被当成 cp1252 / latin-1 解码
# ---------------------------------------------------------------------------
# 字节 → 误解码出的字符。cp1252 有 5 个未定义字节（0x81 0x8D 0x8F 0x90 0x9D），Windows 的解码器
# 把它们当成同号码位的 C1 控制字符，和 latin-1 一样——所以这里也这样映射。
def _cp1252_char(byte: int) -> str:
    try:
        return bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:
        return chr(byte)


BYTE_TO_CHAR = tuple(_cp1252_char(b) for b in range(256))
# 反向表：cp1252 的字符，以及 latin-1 的 U+0080..U+009F（latin-1 误解码时续字节变成 C1 控制字符）。
# 两者不冲突：cp1252 在 0x80..0x9F 的字符（€ ‚ ƒ „ …）码位都大于 0xFF。
CHAR_TO_BYTE = {**{chr(b): b for b in range(256)}, **{ch: b for b, ch in enumerate(BYTE_TO_CHAR)}}


def _char_class(byte_ranges: list[range]) -> str:
    chars = {ch for r in byte_ranges for b in r for ch in CHAR_TO_BYTE if CHAR_TO_BYTE[ch] == b}
    return "[" + "".join(re.escape(ch) for ch in sorted(chars)) + "]"


# UTF-8 的多字节序列：首字节 C2..DF + 1 个续字节；E0..EF + 2 个；F0..F4 + 3 个；续字节 80..BF
_CONT = _char_class([range(0x80, 0xC0)])
MOJIBAKE_RE = re.compile(
    f"{_char_class([range(0xC2, 0xE0)])}{_CONT}"
    f"|{_char_class([range(0xE0, 0xF0)])}{_CONT}{{2}}"
    f"|{_char_class([range(0xF0, 0xF5)])}{_CONT}{{3}}"
)


def break_encoding(text: str) -> str:
    """制造乱码：把 UTF-8 字节按 cp1252 解码（未定义字节按 latin-1）。fix_mojibake 的逆操作，用于演示与测试。"""
    return "".join(BYTE_TO_CHAR[b] for b in text.encode("utf-8"))


def _plausible(decoded: str) -> bool:
    """修复结果是否可信。

    2 字节序列（首字节 Â..ß）在正常的西欧文本里也会出现：德语 „Fuß“ 的 "ß“" 正好是 DF 93，
    按 UTF-8 解码得到 NKo 字母 U+07D3；法语大写 "CAFÉ»" 的 "É»" 得到国际音标 U+027B。
    所以 2 字节的结果只接受 U+0080..U+024F（C1 控制字符——编码两次的文本第一轮会得到它们——与拉丁字母
    补充/扩展区）、希腊、西里尔（U+0370..U+052F）
    以及希伯来、阿拉伯字母（U+0590..U+06FF 中的字母）；3、4 字节序列（首字符 à..ï、ð..ô 后跟两三个符号）
    在正常文本里几乎不出现，只拒绝未分配、私用区与代理项。ftfy 用一套"坏度"模型做得更细。
    """
    cp = ord(decoded)
    category = unicodedata.category(decoded)
    if cp < 0x800:
        if 0x80 <= cp <= 0x24F or 0x370 <= cp <= 0x52F:
            return category != "Cn"
        return 0x590 <= cp <= 0x6FF and category.startswith("L")
    return category not in ("Cn", "Co", "Cs")


def _repair(match: re.Match) -> str:
    piece = match.group()
    try:
        decoded = bytes(CHAR_TO_BYTE[ch] for ch in piece).decode("utf-8")
    except UnicodeDecodeError:  # 过长编码（E0 80..）、代理项（ED A0..）、超出 U+10FFFF：不是乱码
        return piece
    return decoded if _plausible(decoded) else piece


def fix_mojibake(text: str, max_rounds: int = 3) -> str:
    """修复 UTF-8→cp1252/latin-1 的误解码；重复至多 max_rounds 轮（被编码两次的文本要两轮）。

    前提：原文本身不含"Ã©"这样的序列。一轮之后不再变化就停止，所以正常文本原样返回。
    """
    if max_rounds < 1:
        raise ValueError(f"max_rounds={max_rounds} 必须 ≥ 1（被编码两次的文本需要 2 轮）")
    for _ in range(max_rounds):
        fixed = MOJIBAKE_RE.sub(_repair, text)
        if fixed == text:
            break
        text = fixed
    return text


def looks_like_mojibake(text: str) -> bool:
    """文本里是否有可修复的乱码片段。"""
    return fix_mojibake(text, max_rounds=1) != text


def normalize_text(text: str, form: str = "NFC", *, repair_mojibake: bool = True) -> str:
    """清洗流水线用的组合：修乱码 → Unicode 范式 → 删控制字符 → 规范空白，重复到不再变化。

    顺序的理由：乱码修复需要原始的 C1 字符（先于删控制字符）；范式化可能产生 NBSP 之类的空白（先于空白规范）。
    为什么要重复：删掉一个字符会让它两边的字符相邻，可能拼出新的乱码片段（"×\\x1f¡" 删掉 \\x1f 后是 "×¡"，
    正是 "ס" 的乱码）。结果要幂等——清洗过的文本再清洗一遍不变——所以重复整个流程直到稳定（通常第二轮只是确认）。
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_text 需要 str，收到 {type(text).__name__}；bytes 请先 .decode('utf-8')")
    for _ in range(MAX_NORMALIZE_ROUNDS):
        fixed = fix_mojibake(text) if repair_mojibake else text
        fixed = normalize_whitespace(remove_control_chars(normalize_unicode(fixed, form)))
        if fixed == text:
            break
        text = fixed
    return text


MAX_NORMALIZE_ROUNDS = 4


# ---------------------------------------------------------------------------
# 4. 去重前的文本简化（与 datatrove.utils.text.simplify_text 逐字符相同）
# ---------------------------------------------------------------------------
# datatrove 的标点表：全部 ASCII 标点、C0 控制字符（\t \n 除外，\r 在内）、DEL 与 C1 控制字符，
# 以及一组常见的 CJK/排版标点。注意它不完整（没有 "‘" "¿" "§"），还收了全角数字 "１"——照搬，测试核对集合相等。
PUNCTUATION = (
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    + "".join(map(chr, [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0D, 0x20), *range(0x7F, 0xA0)]))
    + "«´»–—’“”„…∶━►、。〈〉《》「」【】！％（），．１：；？～"
)
# 句末标点：基本是 Unicode 的 Sentence_Terminal 属性（某个较早的版本），另加高棉文的三个符号（U+17D6 U+17D9 U+17DA）。
# datatrove 的 FineWeb 过滤与 WhitespaceTokenizer 的断句都用它；按码位区间写出，测试核对与 datatrove 的集合相等。
_TERMINAL_RANGES = (
    (0x21,), (0x2E,), (0x3F,), (0x589,), (0x61D, 0x61F), (0x6D4,), (0x700, 0x702), (0x7F9,), (0x837,), (0x839,),
    (0x83D, 0x83E), (0x964, 0x965), (0x104A, 0x104B), (0x1362,), (0x1367, 0x1368), (0x166E,), (0x1735, 0x1736),
    (0x17D4, 0x17D6), (0x17D9, 0x17DA), (0x1803,), (0x1809,), (0x1944, 0x1945), (0x1AA8, 0x1AAB), (0x1B5A, 0x1B5B),
    (0x1B5E, 0x1B5F), (0x1B7D, 0x1B7E), (0x1C3B, 0x1C3C), (0x1C7E, 0x1C7F), (0x203C, 0x203D), (0x2047, 0x2049),
    (0x2E2E,), (0x2E3C,), (0x2E53, 0x2E54), (0x3002,), (0xA4FF,), (0xA60E, 0xA60F), (0xA6F3,), (0xA6F7,),
    (0xA876, 0xA877), (0xA8CE, 0xA8CF), (0xA92F,), (0xA9C8, 0xA9C9), (0xAA5D, 0xAA5F), (0xAAF0, 0xAAF1), (0xABEB,),
    (0xFE52,), (0xFE56, 0xFE57), (0xFF01,), (0xFF0E,), (0xFF1F,), (0xFF61,), (0x10A56, 0x10A57), (0x10F55, 0x10F59),
    (0x10F86, 0x10F89), (0x11047, 0x11048), (0x110BE, 0x110C1), (0x11141, 0x11143), (0x111C5, 0x111C6), (0x111CD,),
    (0x111DE, 0x111DF), (0x11238, 0x11239), (0x1123B, 0x1123C), (0x112A9,), (0x1144B, 0x1144C), (0x115C2, 0x115C3),
    (0x115C9, 0x115D7), (0x11641, 0x11642), (0x1173C, 0x1173E), (0x11944,), (0x11946,), (0x11A42, 0x11A43),
    (0x11A9B, 0x11A9C), (0x11C41, 0x11C42), (0x11EF7, 0x11EF8), (0x11F43, 0x11F44), (0x16A6E, 0x16A6F), (0x16AF5,),
    (0x16B37, 0x16B38), (0x16B44,), (0x16E98,), (0x1BC9F,), (0x1DA88,),
)  # fmt: skip
TERMINAL_PUNCTUATION = frozenset(chr(c) for r in _TERMINAL_RANGES for c in range(r[0], r[-1] + 1))
PUNCTUATION_SET = frozenset(PUNCTUATION) | TERMINAL_PUNCTUATION  # Gopher 规则判断"纯符号词"用

_PUNCTUATION_TO_SPACE = str.maketrans(PUNCTUATION, " " * len(PUNCTUATION))
# 任何文字的十进制数字串，可带一个小数点/千分位（. , 以及阿拉伯文等的小数点）。用第三方 regex 而不是 re：
# \p{Nd} 跟随 regex 自带的 Unicode 版本，与 datatrove 一致；re 的 \d 跟随 Python 自己的 unicodedata 版本
NUMBERS_RE = regex.compile(r"\p{Nd}+([.,،٫⎖⎗⎘]\p{Nd}+)?")
_WHITESPACE_RE = re.compile(r"\s+")
WEEKDAYS_RE = re.compile(r"monday|tuesday|wednesday|thursday|friday|saturday|sunday")
MONTHS_RE = re.compile(r"january|february|march|april|may|june|july|august|september|october|november|december")


@dataclass(frozen=True)
class TextNormConfig:
    """simplify_text 的开关（字段名与默认值同 datatrove.utils.text.TextNormConfig）。"""

    lowercase: bool = True
    norm_whitespace: bool = True
    remove_punctuation: bool = True
    norm_unicode_diacritics: bool = True
    norm_numbers: bool = True
    norm_weekdays: bool = False
    norm_monthnames: bool = False


DEFAULT_TEXT_NORM = TextNormConfig()


def strip_accents(text: str) -> str:
    """NFD 分解后删掉全部非间距组合记号（Mn）："Crème Brûlée" → "Creme Brulee"。"""
    return "".join(ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) != "Mn")


def simplify_text(text: str, config: TextNormConfig = DEFAULT_TEXT_NORM) -> str:
    """去重/哈希前的文本简化，与 datatrove 的 simplify_text 逐字符相同。

    顺序（与 datatrove 相同）：小写 → 数字串变 "0" → 星期/月份（默认关）→ 标点变空格 → 空白合并 → 去变音符号。
    先换数字再删标点："3.14" 整体变成一个 "0"；若先删标点就成了 "0 0"。

    照搬的 datatrove 怪癖：
    - 标点表不完整（"‘" "¿" "§" 留着），且把全角 "１" 当标点——它在数字替换之后才被删，所以 "１" 先变 "0"；
    - 去变音符号只做 NFD、不再合成：韩文音节被拆成字母（"한"→"한"，三个 jamo），"ﬁ" 这类兼容字符不折叠；
    - 星期/月份是子串替换且只有英文："mayor" → "MONTHor"（所以默认关闭）；
    - 梵文句号 "।" 等句末标点不在标点表里，不会被删。
    """
    if config.lowercase:
        text = text.lower()
    if config.norm_numbers:
        text = NUMBERS_RE.sub("0", text)
    if config.norm_weekdays:
        text = WEEKDAYS_RE.sub("WEEKDAY", text)
    if config.norm_monthnames:
        text = MONTHS_RE.sub("MONTH", text)
    if config.remove_punctuation:
        text = text.translate(_PUNCTUATION_TO_SPACE)
    if config.norm_whitespace:
        text = _WHITESPACE_RE.sub(" ", text.strip())
    if config.norm_unicode_diacritics:
        text = strip_accents(text)
    return text.strip()


# ---------------------------------------------------------------------------
# 演示
# ---------------------------------------------------------------------------
MOJIBAKE_EXAMPLES = ("café", "don’t", "“quoted”", "naïve – résumé", "中文", "Ελληνικά", "🙂 ok", "Größe € 5")


def main() -> None:
    print("1. Unicode 范式：NFC 只合并规范等价；NFKC 还折叠兼容字符（会改变含义，只用于比较键）")
    for name, text in FOLD_EXAMPLES:
        nfc, nfkc = normalize_unicode(text, "NFC"), normalize_unicode(text, "NFKC")
        print(f"  {name:<16} {text!r:<16} NFC {nfc!r:<14} NFKC {nfkc!r}")
    sample = "".join(ch for _, text in FOLD_EXAMPLES for ch in text) + "한국어 ǖ a\u0323\u0301"
    for compat, form in ((False, "NFD"), (True, "NFKD")):
        assert decompose(sample, compat) == unicodedata.normalize(form, sample), form
    limit = 0x3000 if is_smoke() else 0x110000
    mismatches = sum(
        decompose(chr(c), compat) != unicodedata.normalize(form, chr(c))
        for c in range(limit)
        if not 0xD800 <= c < 0xE000
        for compat, form in ((False, "NFD"), (True, "NFKD"))
    )
    print(f"  从零实现的 NFD/NFKD 与 unicodedata 对照：U+0000..U+{limit - 1:04X}，不一致 {mismatches} 个")

    print("\n2. 空白与控制字符")
    messy = "  Hello,\u00a0\u3000world!\r\n\r\n\r\n\tSecond\u200b para\x07graph.\u2028End  "
    print(f"  {messy!r}\n  → {normalize_text(messy)!r}")

    print("\n3. 乱码修复（UTF-8 被当成 cp1252 解码；以及编码两次）")
    for text in MOJIBAKE_EXAMPLES:
        broken = break_encoding(text)
        twice = break_encoding(broken)
        ok = fix_mojibake(broken) == text and fix_mojibake(twice) == text
        print(f"  {text!r:<18} → {broken!r:<32} 一次/两次编码（{len(twice)} 字符）都修回：{'✓' if ok else '✗'}")
    for legit in ("„Fuß“", "« CAFÉ»", "ÖSTERREICH”"):
        print(f"  正常文本不动：{legit!r} → {fix_mojibake(legit)!r}")

    print("\n4. 去重前的文本简化（datatrove simplify_text）")
    for text in ("Hello, World! It's 2024-05-01.", "Crème Brûlée costs €3,50…", "“Quoted” — ＡＢＣ１２３"):
        print(f"  {text!r} → {simplify_text(text)!r}")
    try:
        from datatrove.utils.text import simplify_text as reference
    except ImportError:
        print("  （未安装 datatrove，跳过对照）")
        return
    from data_pipeline.corpora import load_corpus

    corpus = load_corpus("shakespeare")[: 20_000 if is_smoke() else 400_000]
    chunks = [corpus[i : i + 2000] for i in range(0, len(corpus), 2000)]
    same = sum(simplify_text(chunk) == reference(chunk) for chunk in chunks)
    print(f"  与 datatrove 对照：{same}/{len(chunks)} 段莎士比亚文本逐字符相同")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
