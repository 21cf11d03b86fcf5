"""PII 遮盖：Faker 生成的数据上每种的召回与总体精度；列出的每种格式都遮住；莎士比亚零误报；
与 datatrove PIIFormatter 在重叠的部分（邮箱、IPv4）逐片段对照，差别逐条写明。"""

from __future__ import annotations

import ipaddress
import random

import pytest

from data_pipeline.cleaning.pii import KINDS, PIISpan, find_pii, mask_pii

PHONE_LOCALES = (
    "en_US", "en_GB", "en_IN", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL",
    "pl_PL", "ru_RU", "pt_BR", "zh_CN", "ja_JP", "ko_KR",
)  # fmt: skip
# 不是 PII、却长得像的东西：日期、时间、版本号、小数、年份列表、越界的 IP、C++ 作用域、金额、页码、ISBN
DISTRACTORS = (
    "2024-03-15", "15.03.2024", "12:30:45", "v1.2.3", "1.2.3.4.5", "3.14159265", "1990 2000 2010",
    "256.1.2.3", "std::vector", "1,234,567", "$19.99", "pp. 123-145", "ISBN 978-3-16-148410-0",
    "Room 101", "1999-2005", "10:00", "1 2 3 4 5 6 7", "2010-07-04 12:15:58", "+3.140000", "a::b::c", "x :: y",
    "8336817 residents", "id 123456789",
)  # fmt: skip


def compressed_ipv6(rng: random.Random) -> str:
    """带 "::" 的压缩形式：把随机一串连续的段置零，再让 ipaddress 写出最短形式；偶尔是 IPv4 映射地址。"""
    if rng.random() < 0.15:
        return f"::ffff:{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    groups = [rng.randint(1, 0xFFFF) for _ in range(8)]
    start = rng.randint(0, 6)
    for i in range(start, min(8, start + rng.randint(2, 5))):
        groups[i] = 0
    return ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups)).compressed


def generated_corpus(n: int, seed: int = 0, distractors: bool = True) -> list[tuple[str, list[PIISpan]]]:
    """n 句带标注的文本：每句 2~4 个 PII（种类、locale 随机）夹在 Faker 的词与干扰项之间，真值片段按构造得到。"""
    from faker import Faker

    rng = random.Random(seed)
    fakers = {loc: Faker(loc) for loc in PHONE_LOCALES}
    for i, f in enumerate(fakers.values()):
        f.seed_instance(seed * 100 + i)
    out = []
    for _ in range(n):
        fake = fakers[rng.choice(PHONE_LOCALES)]
        items: list[tuple[str | None, str]] = []
        for _ in range(rng.randint(2, 4)):
            kind = rng.choice(("email", "phone", "ipv4", "ipv6"))
            if kind == "email":
                value = fake.email()
            elif kind == "phone":
                value = fake.phone_number()
            elif kind == "ipv4":
                value = fake.ipv4(private=rng.random() < 0.3)
            else:
                value = fake.ipv6() if rng.random() < 0.5 else compressed_ipv6(rng)
            items.append((kind, value))
        for _ in range(rng.randint(1, 3)):
            items.append((None, " ".join(fake.words(rng.randint(1, 4)))))
        if distractors:
            items.append((None, rng.choice(DISTRACTORS)))
        rng.shuffle(items)
        text, spans = "", []
        for kind, value in items:
            left, right = rng.choice((("", ""), ("(", ")"), ("<", ">"), ("", "."), ("", ","), ("：", "。")))
            text += rng.choice((" ", " ", "\n", "; ")) if text else ""
            text += left
            if kind is not None:
                spans.append(PIISpan("ipv6" if ":" in value and "@" not in value else kind, len(text),
                                     len(text) + len(value), value))
            text += value + right
        out.append((text, spans))
    return out


@pytest.fixture(scope="module")
def corpus():
    return generated_corpus(1500)


def test_every_listed_format_is_masked():
    cases = {
        "phone": [
            "(415) 555-2671", "(415)555-2671", "415-555-2671", "415.555.2671", "+1 415 555 2671", "+1-415-555-2671",
            "+1 (415) 555-2671", "(460)648-7647x5938", "+44 20 7946 0000", "+44(0)20 7946 0000", "020 7946 0000",
            "+86 138 1234 5678", "+86-138-1234-5678", "138 1234 5678", "13812345678", "+49 (0) 4115 781565",
            "+33 1 23 45 67 89", "01 23 45 67 89", "090-1234-5678", "+7 (912) 345-67-89", "0086 138 1234 5678",
        ],
        "email": ["a@example.com", "first.last+tag@sub.example.co.uk", "o'neil_99@mail-server.org"],
        "ipv4": ["8.8.8.8", "192.168.1.10", "255.255.255.255", "0.0.0.0", "10.0.0.1", "192.168.001.001"],
        "ipv6": [
            "2001:0db8:0000:0000:0000:ff00:0042:8329", "2001:db8::ff00:42:8329", "::1", "fe80::1", "2001:db8::",
            "::ffff:192.0.2.1", "FE80::0202:B3FF:FE1E:8329",
        ],
    }  # fmt: skip
    for kind, values in cases.items():
        for value in values:
            for text in (value, f"contact: {value}.", f"电话{value}。", f"({value})"):
                spans = find_pii(text)
                assert [(s.kind, s.value) for s in spans] == [(kind, value)], (text, spans)
                assert mask_pii(text).counts[kind] == 1


def test_distractors_are_not_masked():
    for text in DISTRACTORS:
        assert find_pii(text) == [], text
        assert find_pii(f"on {text}, then") == [], text


def test_adjacent_numbers_are_split_at_spaces():
    """两个号码（或一个数字加一个号码）只隔一个空格时，贪心的候选把它们接成一个、通不过校验；
    在空格处截出最长的合法前缀，再接着找。前缀都不合法时从下一个字符重找。"""
    cases = {
        "+44(0)115 496 0436 01632 960 362": ["+44(0)115 496 0436", "01632 960 362"],
        "Tel +39 3517539649 1999-2005": ["+39 3517539649"],
        "ISBN 978-3-16-148410-0 774-917-2532": ["774-917-2532"],
        "1666979460 05015422447 end": ["1666979460", "05015422447"],
        "(460)648-7647x5938 (319)748-9241": ["(460)648-7647x5938", "(319)748-9241"],
    }
    for text, phones in cases.items():
        assert [(s.kind, s.value) for s in find_pii(text)] == [("phone", p) for p in phones], text


def test_recall_and_precision_on_generated_data(corpus):
    truth_n = dict.fromkeys(KINDS, 0)
    hit = dict.fromkeys(KINDS, 0)
    predicted = correct = 0
    misses, false_pos = [], []
    for text, truth in corpus:
        found = set(find_pii(text))
        truth_set = set(truth)
        for s in truth:
            truth_n[s.kind] += 1
            if s in found:
                hit[s.kind] += 1
            else:
                misses.append((s, text))
        predicted += len(found)
        correct += len(found & truth_set)
        false_pos += [(s, text) for s in found - truth_set]
    recall = {k: hit[k] / truth_n[k] for k in KINDS}
    precision = correct / predicted
    print(f"recall {recall}, precision {precision:.4f}, counts {truth_n}")
    assert min(truth_n.values()) > 300
    assert min(recall.values()) >= 0.95, (recall, misses[:10])
    assert precision >= 0.95, (precision, false_pos[:10])
    # 实测（1500 句，严格的"片段完全相同"）：邮箱/IPv4/IPv6 召回 1.0；电话 0.995（6/1160）——漏掉的是不以 0 开头的
    # 9 位意大利号码（"350976889"，与金额无法区分）和前面紧挨着另一个数字、被并进同一片段的号码
    # （"Room 101 080-6874-7566"）；精度 0.9996（就是那两个并进来的片段）


def test_mask_counts_and_placeholders(corpus):
    text, truth = corpus[0]
    result = mask_pii(text)
    assert sum(result.counts.values()) == len(result.spans)
    assert set(result.counts) == set(KINDS)
    # 把占位符按片段顺序换回原文，得到原来的文本：遮盖只动了片段本身
    restored, pos = "", 0
    masked = result.text
    for s in result.spans:
        placeholder = "<IP_ADDRESS>" if s.kind.startswith("ipv") else f"<{s.kind.upper()}>"
        j = masked.index(placeholder, pos)
        restored += masked[pos:j] + s.value
        pos = j + len(placeholder)
    assert restored + masked[pos:] == text
    assert mask_pii("") == mask_pii("") and mask_pii("").text == "" and not any(mask_pii("").counts.values())
    with pytest.raises(TypeError, match="decode"):
        find_pii(b"a@example.com")


def test_no_false_positives_on_shakespeare():
    from data_pipeline.corpora import load_corpus

    counts = mask_pii(load_corpus("shakespeare")).counts
    assert counts == dict.fromkeys(KINDS, 0), counts


def test_python_docs_false_positives_are_exactly_the_bare_ten_digit_integers():
    """数字密集的文本（标准库自带的 Python 文档，约 46 万字符）上的误报逐条解释：
    只有三个 10 位的纯数字整数（1234567890、3232235521 = 192.168.0.1 的整数值、2147483647 = 2^31−1）。
    没有分隔符的 10~15 位数字串被当作电话——de_DE "0604876475"、en_IN "3877840801"、zh_CN "13812345678"
    这类号码 Faker 大量生成，真实网页上也常见；拒绝它们会让电话召回掉到 0.95 以下。这是有意的取舍：宁可多遮。"""
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))
    found = find_pii(text)
    assert {(s.kind, s.value) for s in found} <= {("phone", "1234567890"), ("phone", "3232235521"),
                                                  ("phone", "2147483647")}, found


def _datatrove_spans(text: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """datatrove PIIFormatter 会匹配的 (邮箱片段, IPv4 片段)，直接用它的正则与校验函数（全部 IP，不只公网）。"""
    from datatrove.pipeline.formatters.pii import PIIFormatter

    f = PIIFormatter(only_remove_public_ips=False)
    emails = [m.span() for m in f.emails_replacer.regex.finditer(text)]
    ips = [m.span() for m in f.ip_replacer.regex.finditer(text) if f.ip_replacer.validator(m.group())]
    return emails, ips


def test_same_spans_as_datatrove_on_generated_data():
    """没有干扰项、也没有 IPv4 映射 IPv6 的生成数据上，邮箱与 IPv4 片段与 datatrove 完全相同。"""
    pytest.importorskip("datatrove")
    n_email = n_ip = 0
    for text, truth in generated_corpus(600, seed=1, distractors=False):
        if "::ffff:" in text:
            continue  # 差别之一（见下一个测试）：datatrove 把 IPv6 里内嵌的 IPv4 单独遮掉
        emails, ips = _datatrove_spans(text)
        found = find_pii(text)
        assert emails == [(s.start, s.end) for s in found if s.kind == "email"], text
        assert ips == [(s.start, s.end) for s in found if s.kind == "ipv4"], text
        n_email, n_ip = n_email + len(emails), n_ip + len(ips)
    assert n_email > 100 and n_ip > 100


def test_documented_differences_from_datatrove():
    pytest.importorskip("datatrove")
    from datatrove.pipeline.formatters.pii import PIIFormatter

    def ours(text):
        return [(s.kind, s.value) for s in find_pii(text)]

    def theirs_ip(text):
        return [text[a:b] for a, b in _datatrove_spans(text)[1]]

    # 1. 两端的边界：datatrove 的 IPv4 正则没有边界，版本号、更长的数字串里也会遮出一段
    assert theirs_ip("version 1.2.3.4.5") == ["1.2.3.4"] and ours("version 1.2.3.4.5") == []
    assert theirs_ip("id 1234.5.6.7") == ["234.5.6.7"] and ours("id 1234.5.6.7") == []
    # 2. IPv6：datatrove 不处理，只把 IPv4 映射地址里的那段 IPv4 遮掉
    assert theirs_ip("::ffff:192.0.2.1") == ["192.0.2.1"] and ours("::ffff:192.0.2.1") == [("ipv6", "::ffff:192.0.2.1")]
    # 3. 默认只遮公网地址：私网/保留地址原样留下；我们全遮
    default = PIIFormatter()
    assert default.format("host 192.168.1.10") == "host 192.168.1.10"
    assert mask_pii("host 192.168.1.10").text == "host <IP_ADDRESS>"
    # 4. 前导零：datatrove 的正则接受，但它的校验（ipaddress）拒绝，于是原样留下；我们去掉前导零再校验，照样遮
    assert theirs_ip("192.168.001.001") == [] and ours("192.168.001.001") == [("ipv4", "192.168.001.001")]
    # 5. 占位符：datatrove 轮流换成几个真实样子的假地址，我们换成标记
    assert default.format("mail a@example.com") in ("mail email@example.com", "mail firstname.lastname@example.org")
    assert mask_pii("mail a@example.com").text == "mail <EMAIL>"
    # 6. 邮箱：datatrove 允许顶级域是数字（"a@b.c1"），我们要求字母
    assert _datatrove_spans("x a@host.c1 y")[0] == [(2, 11)] and ours("x a@host.c1 y") == []


# ---------------------------------------------------------------------------
# 练习模式用的快速检查（utils/exercise_parts/cleaning.py）：mask_pii 的文本、计数与片段，不用生成的语料
# ---------------------------------------------------------------------------
def test_mask_pii_text_counts_and_spans_on_a_hand_written_line():
    text = ("Mail a.b@example.com or b@x.org, call +1 (415) 555-2671 / 13812345678, "
            "hosts 10.0.0.1 and fe80::1; v1.2.3.4.5 on 2024-03-15.")
    result = mask_pii(text)
    assert result.text == ("Mail <EMAIL> or <EMAIL>, call <PHONE> / <PHONE>, "
                           "hosts <IP_ADDRESS> and <IP_ADDRESS>; v1.2.3.4.5 on 2024-03-15.")
    assert result.counts == {"email": 2, "ipv6": 1, "ipv4": 1, "phone": 2}
    assert list(result.counts) == list(KINDS)  # 每一种都有，顺序同 KINDS
    assert [(s.kind, s.value) for s in result.spans] == [
        ("email", "a.b@example.com"), ("email", "b@x.org"), ("phone", "+1 (415) 555-2671"), ("phone", "13812345678"),
        ("ipv4", "10.0.0.1"), ("ipv6", "fe80::1")]
    assert all(text[s.start : s.end] == s.value for s in result.spans)
    assert mask_pii("no pii here").text == "no pii here" and mask_pii("").counts == dict.fromkeys(KINDS, 0)
