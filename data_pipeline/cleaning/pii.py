"""PII 遮盖：把邮箱、电话号码、IPv4/IPv6 地址换成占位符 <EMAIL>、<PHONE>、<IP_ADDRESS>，并按种类计数。

    python data_pipeline/cleaning/pii.py          # SMOKE=1 时几秒跑完

为什么要遮盖：模型会逐字背下训练语料里出现过多次的字符串（Carlini et al. 2021 从 GPT-2 里抽出了真实的
邮箱与电话）。预训练语料在分词之前把个人信息换成占位符：占位符保留了"这里有一个邮箱"的语法信息，
模型仍学得会"请发邮件到 <EMAIL>"这种句式，却背不到具体的人。

做法：候选正则 + 校验。正则负责"长得像"，校验负责"真的是"——
- 邮箱：local@domain.tld，local 部分允许 RFC 5322 的那些符号（与 datatrove 相同），域名最后一段必须是字母
  （排除 "a@b" 与 "x@1.2"）。
- IPv4：四段点分十进制；是否每段 ≤ 255、有没有前导零，交给标准库 ipaddress 判断，而不是在正则里写
  25[0-5]|2[0-4][0-9]|... 那样难读的分支。两端不能再连着数字或点："1.2.3.4.5"（版本号）不是 IP。
- IPv6：由十六进制段与冒号组成、至少两个冒号的片段（完整的 8 段，或用 "::" 压缩掉一串 0 段，
  末尾还可以是内嵌的 IPv4，如 ::ffff:192.0.2.1），再交给 ipaddress.IPv6Address 校验。
  "12:30:45"（时间）、"std::vector"（前面连着字母）、孤零零的 "::" 都不会通过。
- 电话：最难，因为各国格式五花八门——(460)648-7647x5938、+1-641-985-8398、281.256.5938、
  +44 20 7946 0000、+49 (0) 4115 781565、05 62 04 87 64、138 1234 5678、13812345678。
  候选正则：可选的 "+"、数字段与括号段，段之间最多一个分隔符（空格、点、横线），可选分机号 x123。
  然后按 E.164（国际号码最多 15 位数字）与常见的误报来源校验：
    数字总数 7~15；带 "+" 或括号的直接接受（这是电话号码的强信号）；
    没有分隔符的纯数字串要 ≥ 10 位，以 0 开头的 ≥ 9 位（更短的纯数字更可能是金额、编号）；
    只有一个分隔符时要 ≥ 10 位且分隔符不能是点（"3.1415926" 是小数，"1999-2005" 是年份区间）；
    除第一段外每段至少 2 位数字（"1 2 3 4 5 6 7" 是列表，"1.2.3.4.5.6.7" 是版本号）；
    形如日期的三段（2024-03-15、15.03.2024）与全是年份的列表（1990 2000 2010）不算。
  这些规则是"精度 vs 召回"的取舍：它们会漏掉不带区号、也没有分隔符的 7 位本地号码，换来对数字密集文本
  （Python 文档、表格）几乎没有误报——测试里对两者都有数字。

顺序：邮箱 → IPv6 → IPv4 → 电话。先认领的片段不会再被后面的种类匹配（例如 IPv4 "192.168.1.1" 不会又被当成
电话；邮箱里的数字也不会）。所有片段都在原文上定位（PIISpan 给出 start/end），最后一次性拼出遮盖后的文本。

与 datatrove 的 PIIFormatter 对照（测试里逐个片段比较）：它只管邮箱与 IPv4（没有电话、没有 IPv6），
邮箱用同一个 RFC 5322 风格的正则，所以在生成的数据上片段完全相同；IPv4 的差别是：
它默认只遮公网地址（only_remove_public_ips=True，10.x/192.168.x 等私网地址原样保留——它的理由是私网地址
不指向具体的人；我们全遮，宁可多遮），它的正则两端没有边界（"1.2.3.4.5" 里会遮掉 "1.2.3.4"），
前导零（"192.168.001.001"）它的正则接受、校验（ipaddress）拒绝，结果原样留下；我们去掉前导零再校验，照样遮。
另外它把占位符换成一串真实样子的假地址（轮流使用），而不是 <EMAIL> 这样的标记。
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from dataclasses import dataclass

from utils.io import is_smoke
from utils.lesson_cli import lesson_args

PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "ipv4": "<IP_ADDRESS>", "ipv6": "<IP_ADDRESS>"}
KINDS = ("email", "ipv6", "ipv4", "phone")  # 认领的先后顺序

# 边界一律用 ASCII 字符类而不是 \w/\b：Python 的 \w 包含汉字，"电话13812345678" 里号码前面紧挨着汉字，
# 用 \b 就永远匹配不到；[0-9] 也不写成 \d——\d 还匹配阿拉伯-印度数字等全部 Unicode 数字。
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9!#$%&'*+/=?^_`{|}~.-])"
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
    r"(?![A-Za-z0-9-]|\.[A-Za-z0-9])"
)
_IPV4 = re.compile(r"(?<![A-Za-z0-9_.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![A-Za-z0-9_]|\.[0-9])")
_IPV6 = re.compile(
    r"(?<![A-Za-z0-9_:.])(?:[0-9A-Fa-f]{0,4}:){2,7}"
    r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![A-Za-z0-9_])"
)
# 电话候选：[+] [(区号)] 数字段 { 分隔符 [(段)] 数字段 } [分机]。数字段之间的分隔符是必需的，
# 所以两个 \d{1,15} 不会直接相邻——避免 (\d+)+ 那种指数级回溯。
_PHONE = re.compile(
    r"(?<![A-Za-z0-9_.+\-])"
    r"(?P<main>\+?[ ]?(?:\([0-9]{1,5}\)[ .\-]?)?[0-9]{1,15}"
    r"(?:(?:[ .\-]|[ .\-]?\([0-9]{1,5}\)[ .\-]?)[0-9]{1,15}){0,8})"
    r"(?P<ext>[ ]?(?:x|ext\.?[ ]?)[0-9]{1,6})?"
    r"(?![A-Za-z0-9_]|[.\-][0-9])"
)
_DATE = re.compile(r"[0-9]{4}[-./][0-9]{1,2}[-./][0-9]{1,2}|[0-9]{1,2}[-./][0-9]{1,2}[-./][0-9]{2,4}")
_YEAR = re.compile(r"1[0-9]{3}|20[0-9]{2}")


@dataclass(frozen=True, slots=True)
class PIISpan:
    kind: str  # "email" | "phone" | "ipv4" | "ipv6"
    start: int
    end: int
    value: str


@dataclass(frozen=True, slots=True)
class MaskResult:
    text: str  # 遮盖后的文本
    counts: dict[str, int]  # 每种 PII 的个数（KINDS 里的每一种都有，没有出现时为 0）
    spans: tuple[PIISpan, ...]  # 原文中的片段，按 start 排序


def is_valid_ipv4(s: str) -> bool:
    """每段 0..255 才是地址。前导零（"192.168.001.001"）先去掉再交给 ipaddress：标准库拒绝前导零
    （有的实现把 "010" 读成八进制 8，含义不明），但写出这种地址的人显然指的是十进制，仍然是 PII，照样遮。"""
    try:
        ipaddress.IPv4Address(".".join(str(int(octet)) for octet in s.split(".")))
    except ValueError:
        return False
    return True


def valid_ipv6(s: str) -> str | None:
    """返回 s 中合法的 IPv6 地址（s 本身，或去掉句末多带的一个冒号），否则 None。

    正则是贪心的："地址是 fe80::1: 后面是说明" 会把冒号也吃进来；"::" 结尾本身合法，只去掉单个多余的冒号。
    """
    candidates = [s] + ([s[:-1]] if s.endswith(":") and not s.endswith("::") else [])
    for c in candidates:
        if not any(ch in "0123456789abcdefABCDEF" for ch in c):
            continue  # "::"、":::" 不算：文本里的 "::" 几乎从来不是"全零地址"
        try:
            ipaddress.IPv6Address(c)
        except ValueError:
            continue
        return c
    return None


def is_valid_phone(main: str) -> bool:
    """电话候选的校验（main 不含分机号）。规则与理由见模块文档。"""
    digits = sum(ch.isdigit() for ch in main)
    if not 7 <= digits <= 15:  # E.164：国家码 + 号码最多 15 位；少于 7 位的号码不存在
        return False
    groups = re.findall(r"[0-9]+", main)
    seps = re.sub(r"[0-9+()]", "", main.replace(" (", "(").replace(") ", ")"))
    if seps == ".":
        return False  # 唯一的分隔符是一个点：小数（"+3.140000"、"3.1415926535"）
    if main.startswith("+"):
        return main[1:].lstrip()[:1] != "0"  # 国家码不以 0 开头："+000000120" 是格式化的数字
    if "(" in main:
        return True
    if not seps:
        # 纯数字串：≥ 10 位，或以 0 开头（国内长途前缀）且 ≥ 9 位——金额、编号很少以 0 开头
        return digits >= 10 or (digits >= 9 and main.startswith("0"))
    if len(seps) == 1:
        return digits >= 10
    if any(len(g) < 2 for g in groups[1:]):
        return False
    if _DATE.match(main):
        return False  # 日期开头："2024-03-15"、"2010-07-04 12"（后面跟着时间 12:15:58）
    return not all(len(g) == 4 and _YEAR.fullmatch(g) for g in groups)


def _candidates(kind: str, work: str):
    """一种 PII 在 work 中通过校验的 (start, end)，从左到右、互不重叠。"""
    if kind == "email":
        if "@" in work:  # 没有 @ 就不可能有邮箱：跳过最贵的那个正则
            yield from (m.span() for m in _EMAIL.finditer(work))
    elif kind == "ipv6":
        if ":" in work:
            for m in _IPV6.finditer(work):
                ip = valid_ipv6(m.group())
                if ip is not None:
                    yield m.start(), m.start() + len(ip)
    elif kind == "ipv4":
        yield from (m.span() for m in _IPV4.finditer(work) if is_valid_ipv4(m.group()))
    else:
        yield from _phone_spans(work)


def _phone_spans(work: str):
    """电话候选的贪心匹配会把空格隔开的两个数字接成一个（"+44 115 496 0436 01632 960 362"、
    "Tel 0909 8790366 1999-2005"），整体通不过校验。于是退一步：在空格处从长到短截断，取最长的合法前缀，
    再从它后面接着找；一个前缀都不合法时从下一个字符重新找（"ISBN 978-3-16-148410-0 774-917-2532"
    里 ISBN 不合法，后面的号码仍然找得到）。只在空格处截断：截在 "-"、"." 处会把一个号码劈成两半。"""
    pos = 0
    while (m := _PHONE.search(work, pos)) is not None:
        main = m.group("main")
        start = m.start() + len(main) - len(main.lstrip())
        main_end = m.end("main")
        cuts = [main_end] + [i for i in range(main_end - 1, start, -1) if work[i] == " " and work[i - 1].isdigit()]
        end = next((c for c in cuts if is_valid_phone(work[start:c])), None)
        if end is None:
            pos = m.start() + 1
            continue
        if end == main_end:
            end = m.end()  # 完整的候选才带上分机号
        yield start, end
        pos = end


def find_pii(text: str) -> list[PIISpan]:
    """原文里所有 PII 片段，互不重叠，按 start 排序。"""
    if not isinstance(text, str):
        raise TypeError(f"find_pii 需要 str，收到 {type(text).__name__}；bytes 请先 decode('utf-8')")
    spans: list[PIISpan] = []
    # 每认领完一种，就把它的片段用等长的 \x00 盖住：位置不变，且 \x00 不在任何正则的字符类里，
    # 后面的种类匹配不到它，也不会把两侧的数字"接"成一个更长的号码。每种只重建一次字符串，总代价 O(4n)。
    work = text
    for kind in KINDS:
        new = [PIISpan(kind, start, end, text[start:end]) for start, end in _candidates(kind, work)]
        if new:
            pieces, pos = [], 0
            for s in new:
                pieces += [work[pos : s.start], "\x00" * (s.end - s.start)]
                pos = s.end
            work = "".join(pieces) + work[pos:]
            spans += new
    return sorted(spans, key=lambda s: s.start)


def mask_pii(text: str) -> MaskResult:
    """把所有 PII 片段换成占位符，并按种类计数。"""
    spans = find_pii(text)
    parts, pos = [], 0
    for s in spans:
        parts += [text[pos : s.start], PLACEHOLDERS[s.kind]]
        pos = s.end
    parts.append(text[pos:])
    counts = Counter({k: 0 for k in KINDS})
    counts.update(s.kind for s in spans)
    return MaskResult("".join(parts), dict(counts), tuple(spans))


def main() -> None:
    import time

    from faker import Faker

    from data_pipeline.corpora import load_corpus

    sample = (
        "联系张三：zhang.san@example.com，电话 138 1234 5678 或 +86 138 1234 5678。\n"
        "Call (415) 555-2671, 415-555-2671, +1 415 555 2671 or the London office +44 20 7946 0000.\n"
        "Server 192.168.1.10 and 2001:db8::8a2e:370:7334 (fe80::1, full 2001:0db8:0000:0000:0000:ff00:0042:8329).\n"
        "Not PII: version 1.2.3.4.5, 256.1.2.3, on 2024-03-15 at 12:30:45, pi = 3.14159265, std::vector, 1990 2000 2010."
    )
    result = mask_pii(sample)
    print(result.text)
    print("计数：", result.counts)
    fake = Faker(["en_US", "en_GB", "de_DE", "fr_FR", "zh_CN", "ja_JP", "ru_RU"])
    fake.seed_instance(0)
    n = 50 if is_smoke() else 1000
    found = Counter()
    for _ in range(n):
        text = f"Mail {fake.email()}, call {fake.phone_number()}, hosts {fake.ipv4()} and {fake.ipv6()}."
        found.update(s.kind for s in find_pii(text))
    print(f"Faker 生成的 {n} 句（每句邮箱/电话/IPv4/IPv6 各一个）找到：", dict(found))
    corpus = load_corpus("shakespeare")[: 300_000 if is_smoke() else None]
    t0 = time.perf_counter()
    fp = mask_pii(corpus).counts
    print(f"莎士比亚 {len(corpus) / 1e6:.1f} MB 上的遮盖（应当全为 0）：{fp}，用时 {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    lesson_args(__doc__)
    main()
